"""Which preprocessing a config's image data set gets: shared by the
engines (tf.data, Grain) and importing neither.

``tests/test_grain_engine.py`` checks that these agree with the tf.data
engine's own (``train/data/tf_pipelines.py``).
"""

from __future__ import annotations

import dataclasses

from resnext_jax import Preprocessing

from train.config_validation import ConfigError, dataset_family


def resolve_preprocess(config) -> str:
    """``config.preprocess`` with "auto" resolved by the data set."""
    if config.preprocess != "auto":
        return config.preprocess
    return "cifar" if dataset_family(config.dataset) in (
        "cifar10", "cifar100") else "imagenet"


def eval_preprocessing(kind: str, size: int) -> Preprocessing:
    """The eval spec of a preprocessing kind at ``size``: CIFAR's whole
    image, or ImageNet's center crop of 87.5%."""
    if kind == "cifar":
        return Preprocessing.cifar(size)
    return Preprocessing.imagenet(size)


def eval_resolution(config, preprocessing: Preprocessing) -> Preprocessing:
    """``preprocessing`` at the run's eval crop (``eval_image_size``, else
    ``image_size``) and, where set, resize (``eval_resize_size``)."""
    eval_size = config.get("eval_image_size", -1)
    crop = eval_size if eval_size > 0 else config.image_size
    if crop != preprocessing.crop_size:
        preprocessing = preprocessing.with_crop_size(crop)
    if config.get("eval_resize_size", -1) > 0:
        preprocessing = dataclasses.replace(
            preprocessing, resize_size=config.eval_resize_size)
    return preprocessing


def run_preprocessing(config, preprocessing: Preprocessing | None
                      ) -> tuple[str, Preprocessing]:
    """``(train kind, eval spec)`` of an image data set: "cifar" or
    "imagenet", and ``preprocessing`` (a pretrained source's) or the
    kind's, at the eval resolution."""
    kind = resolve_preprocess(config)
    if kind == "digits":  # Also refused by validate_config.
        raise ConfigError("config.preprocess (='digits') only applies to "
                          "config.dataset='digits'.")
    return kind, eval_resolution(
        config, preprocessing or eval_preprocessing(kind, config.image_size))
