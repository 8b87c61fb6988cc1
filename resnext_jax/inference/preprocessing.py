"""The eval preprocessing spec: how an image file becomes a model input.

One spec, recorded with every model (the bundle's ``model.json``, the
export's metadata), serves the trainer's eval, ``predict``, export and
serving, so a model answers the same everywhere. The rule is torchvision's
eval transform: convert to RGB (PIL's ``convert("RGB")``: grey repeated,
alpha dropped), resize the shorter side to ``resize_size`` (the longer side
truncated), center crop ``crop_size``, scale to [0, 1], normalize by
``mean``/``std``.

The pixel operations live in `resnext_jax.inference.serving`, which must stay a
standalone file (numpy, jax, PIL) for servers; this module is the spec.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Mapping, Sequence

import numpy as np

from resnext_jax.inference import resample, serving

IMAGENET_MEAN = serving.IMAGENET_MEAN
IMAGENET_STD = serving.IMAGENET_STD
# Krizhevsky's CIFAR-10 training-set statistics, as usually quoted.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
RESIZE_RULES = ("shorter",)
INTERPOLATIONS = serving.INTERPOLATIONS
CONVERSIONS = ("RGB",)
# torchvision's ImageNet eval crops 224 of 256: 87.5% of the shorter side.
CROP_FRACTION = serving.CROP_SIZE / serving.RESIZE_SIZE


def _size(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) \
            or value < 1:
        raise ValueError(f"{name} (={value!r}) must be a positive integer.")
    return int(value)


def _stats(name, value):
    value = tuple(float(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} (={value}) must hold 3 values, one per RGB "
                         "channel.")
    return value


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing: resize the shorter side, center crop, normalize.

    The defaults are torchvision's ImageNet eval transform (256, 224,
    bilinear, ImageNet mean/std).
    """
    resize_size: int = serving.RESIZE_SIZE
    crop_size: int = serving.CROP_SIZE
    resize: str = "shorter"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    convert: str = "RGB"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("resize_size", _size("resize_size", self.resize_size))
        set_("crop_size", _size("crop_size", self.crop_size))
        set_("mean", _stats("mean", self.mean))
        set_("std", _stats("std", self.std))
        if self.resize_size < self.crop_size:
            raise ValueError(
                f"resize_size (={self.resize_size}) must be at least "
                f"crop_size (={self.crop_size}).")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std (={self.std}) must be positive.")
        for field, choices in (("resize", RESIZE_RULES),
                               ("interpolation", INTERPOLATIONS),
                               ("convert", CONVERSIONS)):
            if getattr(self, field) not in choices:
                raise ValueError(f"{field} (={getattr(self, field)!r}) must "
                                 f"be one of {choices}.")

    @classmethod
    def imagenet(cls, crop_size: int = serving.CROP_SIZE,
                 **overrides) -> "Preprocessing":
        """ImageNet statistics; resize to ``crop_size / 0.875`` (256 for
        224), as torchvision's ImageNet eval."""
        resize = round(crop_size / CROP_FRACTION)
        return cls(**{"resize_size": resize, "crop_size": crop_size,
                      **overrides})

    @classmethod
    def cifar(cls, size: int = 32, **overrides) -> "Preprocessing":
        """CIFAR statistics; the whole image, resized to ``size``."""
        return cls(**{"resize_size": size, "crop_size": size,
                      "mean": CIFAR_MEAN, "std": CIFAR_STD, **overrides})

    def with_crop_size(self, crop_size: int) -> "Preprocessing":
        """The same rule at another crop, keeping the resize/crop ratio."""
        resize = round(crop_size * self.resize_size / self.crop_size)
        return dataclasses.replace(self, crop_size=crop_size,
                                   resize_size=max(resize, crop_size))

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        spec = dataclasses.asdict(self)
        spec["mean"], spec["std"] = list(self.mean), list(self.std)
        return spec

    @classmethod
    def from_dict(cls, spec: Mapping) -> "Preprocessing":
        """The inverse of `to_dict`; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise ValueError(f"unknown preprocessing field(s) {unknown}; "
                             f"known: {sorted(fields)}.")
        return cls(**spec)

    def pixels(self, image) -> np.ndarray:
        """A PIL image -> uint8 ``(crop, crop, 3)`` (resized, cropped)."""
        return self._apply(image, normalized=False)

    def normalize(self, pixels) -> np.ndarray:
        """uint8 pixels -> float32 in [0, 1], normalized by mean/std."""
        return serving.normalize(pixels, self.mean, self.std)

    def __call__(self, image) -> np.ndarray:
        """A PIL image -> the model's float32 ``(crop, crop, 3)`` input."""
        return self._apply(image, normalized=True)

    def _apply(self, image, normalized: bool) -> np.ndarray:
        # The native resize gives the same values as `serving`'s Pillow
        # code (it is checked against Pillow before its first use), in one
        # call; `serving` does what it does not: no resize, nearest, and
        # images too long to resize whole.
        native = (resample.resizer() if self.interpolation in
                  resample.FILTERS else None)
        image = serving.to_rgb(serving.upright(image))
        size, crop = serving.center_crop_box(image.size, self.resize_size,
                                             self.crop_size)
        if native is not None and size != image.size and (
                size[0] * size[1] <= serving.MAX_RESIZED_PIXELS):
            stats = (self.mean, self.std) if normalized else (None, None)
            return native(image, size, crop, self.interpolation, *stats)
        pixels = serving.resize_and_crop_rgb(image, self.resize_size,
                                             self.crop_size,
                                             self.interpolation)
        return self.normalize(pixels) if normalized else pixels

    def load_image(self, path: str | os.PathLike) -> np.ndarray:
        """An image file (or binary file object) -> float32 input."""
        from PIL import Image  # pylint: disable=import-outside-toplevel

        with Image.open(path) as image:
            return self(image)

    def load_images(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Image files -> a float32 batch ``(N, crop, crop, 3)``."""
        return np.stack([self.load_image(p) for p in paths])
