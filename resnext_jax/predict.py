"""Classify image files with a converted or trained checkpoint.

::

    python -m resnext_jax.predict --model resnext50_32x4d \\
        --weights resnext50_32x4d.safetensors cat.jpg dog.jpg
    python -m resnext_jax.predict --workdir runs/my_run --json images/*.jpg

Preprocessing is torchvision's ImageNet eval (resize 256, center crop 224,
normalize); images run in fixed-size batches through one jit-compiled
function, so a batch size compiles once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from importlib import resources
from typing import Sequence

import jax
import numpy as np

from resnext_jax import serving
from resnext_jax.convert import (load_torch_state_dict, parse_model_kwargs,
                                 read_state_dict)
from resnext_jax.models import create_model

IMAGENET_CLASSES_FILE = "imagenet_classes.txt"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in torchvision's index order."""
    text = resources.files("resnext_jax").joinpath(
        "data", IMAGENET_CLASSES_FILE).read_text(encoding="utf-8")
    return text.splitlines()


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet names for 1000 classes, else ``class_0``, ``class_1``..."""
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class_{i}" for i in range(num_classes)]


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
    source.add_argument("--workdir",
                        help="a training run's directory (instead of "
                             "--model/--weights)")
    source.add_argument("--labels",
                        help="class names file, one per line (default: "
                             "ImageNet for 1000 classes, or the run's)")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing: resize the shorter side, center crop, normalize."""
    resize_size: int = serving.RESIZE_SIZE
    crop_size: int = serving.CROP_SIZE
    mean: tuple[float, ...] = serving.IMAGENET_MEAN
    std: tuple[float, ...] = serving.IMAGENET_STD


def restore_workdir(workdir: str):
    """``(model, variables, class_names, Preprocessing)`` of a training run."""
    try:
        from train import checkpoint  # pylint: disable=import-outside-toplevel
        restore = checkpoint.restore_for_inference
    except (ImportError, AttributeError) as e:
        raise RuntimeError(
            "--workdir needs the training program's "
            "train.checkpoint.restore_for_inference, which cannot be "
            f"imported here ({e}); run from the repository root, where "
            "train/ is.") from e
    model, variables, class_names = restore(workdir)
    preprocessing = Preprocessing()
    info_fn = getattr(checkpoint, "load_dataset_info", None)
    info = info_fn(workdir) if info_fn else {}
    if "image_size" in info:
        size = int(info["image_size"])
        # As the trainer's eval: ImageNet-stem models see a center crop of
        # 87.5% (224 of 256); small-image (CIFAR-stem) models the whole image.
        resize = size if model.stem == "cifar" else round(
            size * serving.RESIZE_SIZE / serving.CROP_SIZE)
        preprocessing = dataclasses.replace(
            preprocessing, resize_size=resize, crop_size=size)
    if "mean" in info and "std" in info:
        preprocessing = dataclasses.replace(
            preprocessing, mean=tuple(info["mean"]), std=tuple(info["std"]))
    return model, variables, class_names, preprocessing


def load_model(args: argparse.Namespace):
    """``(model, variables, class_names, Preprocessing)`` from parsed model
    arguments (see :func:`add_model_arguments`)."""
    if args.workdir:
        if args.weights or args.model:
            raise ValueError("give either --workdir or --model/--weights, "
                             "not both.")
        model, variables, class_names, preprocessing = restore_workdir(
            args.workdir)
    else:
        if not (args.model and args.weights):
            raise ValueError("give --model and --weights (or --workdir).")
        state = read_state_dict(args.weights)
        kwargs = parse_model_kwargs(args.model_kwargs)
        # The checkpoint decides the classifier size unless told otherwise.
        if "num_classes" not in kwargs:
            kwargs["num_classes"] = (state["fc.weight"].shape[0]
                                     if "fc.weight" in state else 0)
        model = create_model(args.model, **kwargs)
        variables = load_torch_state_dict(state, model)
        class_names, preprocessing = None, Preprocessing()
    if args.labels:
        class_names = read_labels(args.labels)
    if not class_names:
        class_names = default_class_names(model.num_classes)
    if len(class_names) != model.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a model with num_classes="
            f"{model.num_classes}; give one name per class.")
    overrides = {k: getattr(args, k, None) for k in ("resize_size",
                                                     "crop_size")}
    preprocessing = dataclasses.replace(
        preprocessing, **{k: v for k, v in overrides.items() if v})
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
    "probability"}, ...]}`` per path, predictions sorted by probability.
    """
    if model.num_classes == 0:
        raise ValueError("the model has no classifier (num_classes=0).")
    if top_k < 1:
        raise ValueError(f"top_k (={top_k}) must be at least 1.")
    if batch_size < 1:
        raise ValueError(f"batch_size (={batch_size}) must be at least 1.")
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
    batch_size = min(batch_size, len(paths))
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        images = np.stack([serving.load_image(
            p, preprocessing.resize_size, preprocessing.crop_size,
            preprocessing.mean, preprocessing.std) for p in chunk])
        # Pad the last batch so every call has the compiled shape.
        pad = batch_size - len(chunk)
        if pad:
            images = np.concatenate(
                [images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        logits = np.asarray(infer(variables, images))[:len(chunk)]
        probs, indices = serving.top_k(logits, top_k)
        for path, p_row, i_row in zip(chunk, probs, indices):
            results.append({"image": str(path), "predictions": [
                {"index": int(i), "label": class_names[i],
                 "probability": float(p)} for p, i in zip(p_row, i_row)]})
    return results


def format_text(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines.append(result["image"])
        for pred in result["predictions"]:
            lines.append(f"  {pred['probability']:.4f}  {pred['label']} "
                         f"({pred['index']})")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m resnext_jax.predict",
        description="Classify images with a ResNeXt checkpoint.")
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resize-size", type=int,
                        help="shorter side before the crop (default: 256, "
                             "or the training run's)")
    parser.add_argument("--crop-size", type=int,
                        help="center crop (default: 224, or the training "
                             "run's image size)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        model, variables, class_names, preprocessing = load_model(args)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")
    results = predict_files(model, variables, args.images, class_names,
                            top_k=args.top_k, batch_size=args.batch_size,
                            preprocessing=preprocessing)
    print(json.dumps(results, indent=2) if args.json
          else format_text(results))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
