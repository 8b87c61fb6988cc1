"""Classify image files with a converted or trained checkpoint.

::

    python -m resnext_jax.predict --model resnext50_32x4d \\
        --weights resnext50_32x4d.safetensors cat.jpg dog.jpg
    python -m resnext_jax.predict --workdir runs/my_run --json images/*.jpg

(or ``resnext-predict ...``). A training run's model bundle brings its class
names and preprocessing; weights files get torchvision's ImageNet eval
(resize 256, center crop 224, normalize). Images run in fixed-size batches
through one jit-compiled function, so a batch size compiles once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np

from resnext_jax import serving
from resnext_jax.compilation_cache import enable_compilation_cache
from resnext_jax.conv import resolve_conv_impl
from resnext_jax.malloc import configure_malloc
from resnext_jax.bundle import (default_class_names, imagenet_class_names,
                                load_pretrained)
from resnext_jax.convert import parse_model_kwargs
from resnext_jax.preprocessing import Preprocessing
from resnext_jax.cli import command

__all__ = ("Preprocessing", "add_model_arguments", "default_class_names",
           "imagenet_class_names", "load_model", "main", "predict_files",
           "read_labels")


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


# ---------------------------------------------------------------------------
# Models from the command line (shared with resnext_jax.export).

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options that select a model and its weights."""
    source = parser.add_argument_group("model")
    source.add_argument("--model", help="model name, e.g. resnext50_32x4d "
                                        "(with --weights)")
    source.add_argument("--weights",
                        help="torchvision/timm-named checkpoint: "
                             ".safetensors, or .pth/.pt with torch installed")
    source.add_argument("--model-kwargs", default="{}",
                        help="JSON of ResNeXt field overrides, e.g. "
                             "'{\"dtype\": \"bfloat16\"}'")
    source.add_argument("--pretrained",
                        help="published weights by name, downloaded from "
                             "the Hugging Face Hub, e.g. "
                             "resnext50_32x4d.tv_in1k (instead of "
                             "--model/--weights)")
    source.add_argument("--workdir",
                        help="a training run's directory, or a model bundle "
                             "directory (instead of --model/--weights)")
    source.add_argument("--labels",
                        help="class names file, one per line (default: "
                             "the bundle's, or ImageNet for 1000 classes)")


def load_model(args: argparse.Namespace):
    """``(model, variables, class_names, Preprocessing)`` from parsed model
    arguments (see :func:`add_model_arguments`)."""
    kwargs = parse_model_kwargs(args.model_kwargs)
    if getattr(args, "pretrained", None):
        if args.workdir or args.weights or args.model:
            raise ValueError("give either --pretrained, --workdir or "
                             "--model/--weights, not several.")
        model, variables, preprocessing, class_names = load_pretrained(
            args.pretrained, **kwargs)
    elif args.workdir:
        if args.weights or args.model:
            raise ValueError("give either --workdir or --model/--weights, "
                             "not both.")
        model, variables, preprocessing, class_names = load_pretrained(
            args.workdir, **kwargs)
    else:
        if not (args.model and args.weights):
            raise ValueError("give --model and --weights (or --workdir, or "
                             "--pretrained NAME).")
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


# ---------------------------------------------------------------------------
# Prediction.

def predict_files(model, variables, paths: Sequence[str],
                  class_names: Sequence[str], *, top_k: int = 5,
                  batch_size: int = 32,
                  preprocessing: Preprocessing = Preprocessing()
                  ) -> list[dict]:
    """Top-k predictions per image file.

    Returns one ``{"image": path, "predictions": [{"index", "label",
    "probability"}, ...]}`` per path, predictions sorted by probability. A
    file that cannot be read as an image (missing, a directory, truncated,
    not an image) gets ``{"image": path, "error": reason}`` instead, and the
    others are still answered.
    """
    if model.num_classes == 0:
        raise ValueError("the model has no classifier (num_classes=0).")
    if top_k < 1:
        raise ValueError(f"top_k (={top_k}) must be at least 1.")
    if batch_size < 1:
        raise ValueError(f"batch_size (={batch_size}) must be at least 1.")
    # Compiled for this process's devices only: "auto" is resolved to their
    # lowering, so the program holds no per-platform conditional.
    if hasattr(model, "conv_impl"):
        model = model.clone(conv_impl=resolve_conv_impl(model.conv_impl))
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
    loaded, results = {}, {}
    for path in paths:
        try:
            loaded[str(path)] = preprocessing.load_image(path)
        except Exception as e:  # pylint: disable=broad-except
            # PIL raises many types (OSError, UnidentifiedImageError,
            # DecompressionBombError, ...); one bad file must not cost the
            # answers for the others.
            results[str(path)] = {"image": str(path),
                                  "error": _image_error(path, e)}
    good = list(loaded)
    batch_size = max(1, min(batch_size, len(good)))
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        images = np.stack([loaded[p] for p in chunk])
        # Pad the last batch so every call has the compiled shape.
        pad = batch_size - len(chunk)
        if pad:
            images = np.concatenate(
                [images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        logits = np.asarray(infer(variables, images))[:len(chunk)]
        probs, indices = serving.top_k(logits, top_k)
        for path, p_row, i_row in zip(chunk, probs, indices):
            results[path] = {"image": path, "predictions": [
                {"index": int(i), "label": class_names[i],
                 "probability": float(p)} for p, i in zip(p_row, i_row)]}
    return [results[str(p)] for p in paths]


def _image_error(path, error: Exception) -> str:
    if os.path.isdir(path):
        return "is a directory, not an image file"
    if not os.path.exists(path):
        return "no such file"
    return f"cannot be read as an image ({type(error).__name__}: {error})"


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
    configure_malloc()
    enable_compilation_cache()
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
