"""``resnext-predict``: classify image files with published weights, a
weights file, a model bundle or a training run.

::

    resnext-predict --model resnext50_32x4d --pretrained cat.jpg
    resnext-predict --model resnext50_32x4d \\
        --weights resnext50_32x4d.safetensors cat.jpg dog.jpg
    resnext-predict --workdir runs/my_run --json images/*.jpg

A bundle brings its class names and preprocessing; published weights their
own preprocessing; a weights file gets torchvision's ImageNet eval (resize
256, center crop 224, normalize).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from resnext_jax.commands.edges import command
from resnext_jax.inference.predict import predict_files
from resnext_jax.models.registry import model_config, parse_model_kwargs
from resnext_jax.runtime import prepare_process
from resnext_jax.weights.bundle import load_pretrained, load_published
from resnext_jax.weights.pretrained import check_tag


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a UTF-8 text file, one per line."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"labels file {os.fspath(path)!r} is not UTF-8 text "
                         f"(byte {e.object[e.start]:#04x} at offset "
                         f"{e.start}); save it as UTF-8.") from None
    except OSError as e:
        raise ValueError(f"labels file {os.fspath(path)!r} cannot be read: "
                         f"{e.strerror}.") from None


# Models from the command line (shared with resnext-export).

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options that select a model and its weights."""
    source = parser.add_argument_group("model")
    source.add_argument("--model", help="model name, e.g. resnext50_32x4d "
                                        "(with --weights or --pretrained)")
    source.add_argument("--weights",
                        help="torchvision/timm-named checkpoint: "
                             ".safetensors or .pth/.pt")
    source.add_argument("--model-kwargs", default="{}",
                        help="JSON of ResNeXt field overrides, e.g. "
                             "'{\"dtype\": \"bfloat16\"}'")
    source.add_argument("--pretrained", action="store_true",
                        help="the published weights of --model (downloaded "
                             "once): its default, or the tag in --model "
                             "NAME.TAG, e.g. resnext50_32x4d.IMAGENET1K_V1 "
                             "(see rx.list_pretrained())")
    source.add_argument("--workdir",
                        help="a training run's directory, or a model bundle "
                             "directory (instead of --model/--weights)")
    source.add_argument("--labels",
                        help="class names file, one per line (default: "
                             "the bundle's, or ImageNet for 1000 classes)")


def _published(name: str, kwargs: dict):
    """``--model NAME[.TAG] --pretrained``: the model's published weights."""
    model_name, _, tag = name.partition(".")
    model_config(model_name)  # An unknown model is named as such.
    return load_published(model_name, check_tag(model_name, tag or True),
                          **kwargs)


def load_model(args: argparse.Namespace):
    """``(model, variables, class_names, Preprocessing)`` from parsed model
    arguments (see `add_model_arguments`)."""
    kwargs = parse_model_kwargs(args.model_kwargs)
    if args.pretrained:
        if args.workdir or args.weights or not args.model:
            raise ValueError("--pretrained takes --model NAME (or NAME.TAG), "
                             "without --workdir or --weights.")
        model, variables, preprocessing, class_names = _published(
            args.model, kwargs)
    elif args.workdir:
        if args.weights or args.model:
            raise ValueError("give either --workdir or --model/--weights, "
                             "not both.")
        model, variables, preprocessing, class_names = load_pretrained(
            args.workdir, **kwargs)
    else:
        if not (args.model and args.weights):
            raise ValueError("give --model and --weights (or --workdir, or "
                             "--model NAME --pretrained).")
        model, variables, preprocessing, class_names = load_pretrained(
            args.weights, args.model, **kwargs)
    if args.labels:
        class_names = read_labels(args.labels)
    if len(class_names) != model.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a model with num_classes="
            f"{model.num_classes}; give one name per class.")
    crop = getattr(args, "crop_size", None)
    resize = getattr(args, "resize_size", None)
    if crop:
        preprocessing = preprocessing.with_crop_size(crop)
    if resize:
        preprocessing = dataclasses.replace(preprocessing, resize_size=resize)
    return model, variables, list(class_names), preprocessing


def format_text(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines.append(result["image"])
        if "error" in result:
            lines.append(f"  error: {result['error']}")
            continue
        for pred in result["predictions"]:
            lines.append(f"  {pred['probability']:.4f}  {pred['label']} "
                         f"({pred['index']})")
    return "\n".join(lines)


@command
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="resnext-predict",
        description="Classify images with a ResNeXt checkpoint.")
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resize-size", type=int,
                        help="shorter side before the crop (default: 256, "
                             "or the bundle's)")
    parser.add_argument("--crop-size", type=int,
                        help="center crop (default: 224, or the bundle's; "
                             "the resize keeps its ratio to the crop unless "
                             "--resize-size is given)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of text")
    args = parser.parse_args(argv)
    for option, value in (("--top-k", args.top_k),
                          ("--batch-size", args.batch_size)):
        if value < 1:
            parser.error(f"{option} (={value}) must be at least 1.")
    prepare_process()
    try:
        model, variables, class_names, preprocessing = load_model(args)
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        sys.exit(f"error: {e}")
    results = predict_files(model, variables, args.images, class_names,
                            top_k=args.top_k, batch_size=args.batch_size,
                            preprocessing=preprocessing)
    print(json.dumps(results, indent=2) if args.json
          else format_text(results))
    sys.stdout.flush()
    failed = [r for r in results if "error" in r]
    if failed:
        for r in failed:
            print(f"error: {r['image']}: {r['error']}", file=sys.stderr)
        sys.exit(f"error: {len(failed)} of {len(results)} image(s) could "
                 "not be read; the others were answered above.")


if __name__ == "__main__":
    main()
