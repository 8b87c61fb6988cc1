"""The run's model bundle (``<workdir>/model/``), in the library's format.

The loop writes it at every new best eval and when the run completes;
``resnext_jax.load_pretrained(workdir)``, ``predict --workdir`` and export
read it. For a workdir trained before bundles existed::

  python -m train.bundle WORKDIR [--which best|latest]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import ml_collections
import resnext_jax

from train import workdir as workdir_lib
from train.model_factory import build_model


def save_model(workdir: str | pathlib.Path,
               config: ml_collections.ConfigDict, params, batch_stats, *,
               class_names, preprocessing: resnext_jax.Preprocessing,
               extra: dict | None = None) -> pathlib.Path:
    """Writes ``<workdir>/model/`` (atomically) from the given variables."""
    model = build_model(config, len(class_names), axis_name=None)
    variables = jax.device_get({"params": params,
                                "batch_stats": batch_stats})
    return resnext_jax.save_pretrained(
        pathlib.Path(workdir) / workdir_lib.MODEL_DIR, model, variables,
        class_names=class_names, preprocessing=preprocessing,
        model_name=config.model, extra=extra)


def preprocessing_of(info: dict, stem: str) -> resnext_jax.Preprocessing:
    """A workdir's eval spec from its ``dataset.json``. Older workdirs
    recorded only the image size and mean/std: small-image (CIFAR-stem)
    models then see the whole image, others ImageNet's 87.5% crop."""
    if "preprocessing" in info:
        return resnext_jax.Preprocessing.from_dict(info["preprocessing"])
    size = int(info["image_size"])
    stats = dict(mean=tuple(info["mean"]), std=tuple(info["std"]))
    if stem == "cifar":
        return resnext_jax.Preprocessing(resize_size=size, crop_size=size,
                                         **stats)
    return resnext_jax.Preprocessing.imagenet(size, **stats)


def bundle_from_checkpoint(workdir: str | pathlib.Path,
                           which: str = "best") -> pathlib.Path:
    """Writes ``<workdir>/model/`` from a checkpoint of the run."""
    from train.checkpoint import restore_for_inference  # pylint: disable=import-outside-toplevel

    model, variables, class_names = restore_for_inference(workdir, which)
    config = workdir_lib.load_config(workdir)
    info = workdir_lib.load_dataset_info(workdir)
    return save_model(workdir, config, variables["params"],
                      variables["batch_stats"], class_names=class_names,
                      preprocessing=preprocessing_of(info, model.stem),
                      extra={"from_checkpoint": which})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.bundle",
        description="Write a workdir's model bundle (model/) from its "
                    "checkpoint.")
    parser.add_argument("workdir")
    parser.add_argument("--which", choices=("best", "latest"),
                        default="best")
    args = parser.parse_args(argv)
    try:
        written = bundle_from_checkpoint(args.workdir, args.which)
    except (OSError, ValueError) as e:  # Not a workdir, no checkpoint.
        sys.exit(f"error: {e}")
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
