"""The eval preprocessing that a registry model's published weights expect.

Weights are evaluated (and best fine-tuned) with the preprocessing they
were trained for. Two publishers name these models:

* torchvision (``resnet50/101/152``, ``resnext50_32x4d``,
  ``resnext101_32x8d``, ``resnext101_64x4d``): its ``IMAGENET1K_V1``
  transform, shorter side to 256 (bilinear), center crop 224: the library's
  default :class:`Preprocessing`. timm publishes weights under some of these
  names too, with its own values; the file alone cannot tell them apart, so
  a torchvision name means torchvision's transform (a model bundle records
  the spec of its weights exactly).
* timm (every other ImageNet name): the interpolation and ``crop_pct`` of
  timm's ``pretrained_cfg`` for the model's default tag (timm 1.0). timm's
  larger ``test_input_size`` (288 for some) is not adopted: the crop size is
  the caller's (a run's ``image_size``).

The CIFAR ResNeXt-29s and the paper's ResNeXt-50 variants have no published
weights: :func:`pretrained_preprocessing` returns None for them.
"""

from __future__ import annotations

from resnext_jax.preprocessing import Preprocessing

TORCHVISION_NAMES = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "resnext101_64x4d")
# timm name -> (interpolation, crop_pct), from timm.models.get_pretrained_cfg
# (tests/test_finetune.py checks them against timm when it is installed).
# Mean and std are ImageNet's for all of them.
TIMM_PREPROCESSING = {
    "resnext101_32x4d": ("bilinear", 0.875),
    "resnext101_32x16d": ("bilinear", 0.875),
    "resnext101_32x32d": ("bilinear", 0.875),
    "resnext50d_32x4d": ("bicubic", 0.875),
    "seresnext26d_32x4d": ("bicubic", 0.875),
    "seresnext26t_32x4d": ("bicubic", 0.875),
    "seresnext50_32x4d": ("bicubic", 0.875),
    "seresnext101_32x4d": ("bicubic", 0.875),
    "seresnext101_64x4d": ("bicubic", 0.875),
    "seresnext101_32x8d": ("bicubic", 0.95),
    "seresnext101d_32x8d": ("bicubic", 0.95),
    "ecaresnext26t_32x4d": ("bicubic", 0.875),
    "ecaresnext50t_32x4d": ("bicubic", 0.875),
}


def pretrained_preprocessing(name: str, crop_size: int = 224
                             ) -> Preprocessing | None:
    """The eval spec for published weights of registry model ``name`` at
    ``crop_size``; None for a name without published weights."""
    if name in TORCHVISION_NAMES:
        return Preprocessing.imagenet(crop_size)
    if name not in TIMM_PREPROCESSING:
        return None
    interpolation, crop_pct = TIMM_PREPROCESSING[name]
    return Preprocessing(resize_size=int(round(crop_size / crop_pct)),
                         crop_size=crop_size, interpolation=interpolation)
