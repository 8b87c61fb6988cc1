"""Runs an exported ResNeXt (see `resnext_jax.inference.export`) with
no model code.

This module imports only numpy, jax and (for image files) PIL, and nothing
from resnext_jax, so a server can copy it and use it alone::

    import serving
    model = serving.load("model.rxexport")
    probabilities, classes = serving.top_k(model(model.load_image("cat.jpg")[None]))

(``resnext-serve model.rxexport cat.jpg`` does the same from a shell.)

It also holds the pixel operations of the eval preprocessing spec
(`resnext_jax.Preprocessing`, recorded in the export's metadata), so
that a server computes exactly the inputs that ``predict`` and the trainer's
eval compute; the library's spec calls these functions.

Export file format: an uncompressed ``.npz`` with ``exported`` (the bytes of
``jax.export.Exported.serialize()``), ``meta`` (UTF-8 JSON) and the weights
``w00000``, ``w00001``, ... in the order the exported function takes them.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

FORMAT = "resnext_jax.export/1"
# ImageNet statistics and torchvision's eval sizes: the library's defaults
# (resnext_jax.inference.preprocessing takes them from here).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_SIZE = 256
CROP_SIZE = 224
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# Above this many pixels after the resize, only the crop's source region is
# resized (the same pixels up to rounding at its edges): 64 ImageNet-size
# resizes.
MAX_RESIZED_PIXELS = 64 * RESIZE_SIZE * RESIZE_SIZE
_EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------------------
# Preprocessing, as torchvision's eval transforms: Resize(resize_size)
# (shorter side, PIL) -> CenterCrop(crop_size) -> ToTensor -> Normalize(mean,
# std); here in NHWC, after turning the image upright by its EXIF
# orientation. Non-RGB images (grey, palette, RGBA, CMYK) become RGB by
# PIL's convert("RGB"): grey is repeated, alpha dropped.

def to_rgb(image):
    """A PIL image of any mode -> mode RGB, 8 bits per channel.

    16-bit and 32-bit integer images (PNG's 16-bit grey opens as ``I;16`` or
    ``I``) keep their top 8 bits, as TensorFlow's decoders do; PIL's own
    ``convert("RGB")`` would clip them to white. Float images are taken as
    [0, 1]. Everything else goes through ``convert("RGB")`` (grey repeated,
    palette expanded, alpha dropped).
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image).astype(np.int64)
        # "I" holds up to 32 bits; a 16-bit file loaded as "I" has max 65535.
        shift = 8 if image.mode.startswith("I;16") or pixels.max(
            initial=0) <= 0xFFFF else 24
        pixels = np.clip(pixels >> shift, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "L")
    elif image.mode == "F":
        pixels = np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8), "L")
    if image.mode == "RGB":
        image.load()  # Decoded, as convert would (some formats' size moves).
        return image  # convert("RGB") would copy it.
    return image.convert("RGB")


def pil_filter(interpolation: str) -> int:
    """Pillow's resampling filter for an interpolation name."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    return {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
            "bicubic": Image.BICUBIC}[interpolation]


def center_crop_box(image_size: tuple[int, int], resize_size: int,
                    crop_size: int) -> tuple[tuple[int, int],
                                             tuple[int, int, int, int]]:
    """For an image of ``(width, height)``: the size Resize(resize_size)
    gives it, and the box ``(left, top, right, bottom)`` of the center crop
    in that resized image."""
    width, height = image_size
    # torchvision: the shorter side becomes resize_size, the longer side
    # int(resize_size * long / short) (truncated, not rounded).
    if width <= height:
        size = (resize_size, int(resize_size * height / width))
    else:
        size = (int(resize_size * width / height), resize_size)
    top = int(round((size[1] - crop_size) / 2.0))
    left = int(round((size[0] - crop_size) / 2.0))
    return size, (left, top, left + crop_size, top + crop_size)


def resize_and_crop(image, resize_size: int = RESIZE_SIZE,
                    crop_size: int = CROP_SIZE,
                    interpolation: str = "bilinear") -> np.ndarray:
    """A PIL image -> uint8 ``(crop, crop, 3)``, as Resize + CenterCrop."""
    if resize_size < crop_size:
        raise ValueError(
            f"resize_size (={resize_size}) must be at least crop_size "
            f"(={crop_size}).")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation (={interpolation!r}) must be one of "
                         f"{INTERPOLATIONS}.")
    return resize_and_crop_rgb(to_rgb(upright(image)), resize_size,
                               crop_size, interpolation)


def resize_and_crop_rgb(image, resize_size: int, crop_size: int,
                        interpolation: str) -> np.ndarray:
    """`resize_and_crop` of an upright RGB image (arguments checked)."""
    width, height = image.size
    size, crop = center_crop_box(image.size, resize_size, crop_size)
    if size != (width, height):
        resample = pil_filter(interpolation)
        if size[0] * size[1] > MAX_RESIZED_PIXELS:
            # A very long image (1x20000 resized to 256 high is 5 million
            # wide): resize only the source region of the center crop, at
            # the same scale, so the work per image stays bounded.
            sx, sy = width / size[0], height / size[1]
            box = (crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy)
            image = image.resize((crop_size, crop_size), resample, box=box)
            return np.asarray(image, dtype=np.uint8)
        image = image.resize(size, resample)
    return np.asarray(image.crop(crop), dtype=np.uint8)


def upright(image):
    """``image`` turned as its EXIF orientation says (a portrait phone
    photo is stored sideways with a tag), as ``ImageOps.exif_transpose``;
    the image itself when it has no such tag."""
    from PIL import ImageOps  # pylint: disable=import-outside-toplevel

    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (1, None):
            return image  # Upright already: no copy.
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return image  # A damaged EXIF block: the pixels as stored.


def normalize(pixels: np.ndarray, mean=IMAGENET_MEAN,
              std=IMAGENET_STD) -> np.ndarray:
    """uint8 NHWC (or HWC) pixels -> float32, scaled to [0, 1], normalized."""
    out = np.array(pixels, np.float32)
    out /= 255.0
    # In place, against ``mean`` and ``std`` spread to the image's shape:
    # numpy broadcasts a 3-vector over the channel axis about 4x slower,
    # for the same values.
    full_mean, full_std = _per_pixel(out.shape[-3:], tuple(mean), tuple(std))
    out -= full_mean
    out /= full_std
    return out


@functools.lru_cache(maxsize=8)
def _per_pixel(shape, mean, std):
    """``mean`` and ``std`` as read-only float32 arrays of an HWC
    ``shape``."""
    arrays = tuple(np.ascontiguousarray(np.broadcast_to(
        np.asarray(v, np.float32), shape)) for v in (mean, std))
    for array in arrays:
        array.flags.writeable = False
    return arrays


def load_image(path, resize_size: int = RESIZE_SIZE,
               crop_size: int = CROP_SIZE, mean=IMAGENET_MEAN,
               std=IMAGENET_STD, interpolation: str = "bilinear"
               ) -> np.ndarray:
    """An image file (a path or a binary file object) -> normalized float32
    ``(crop, crop, 3)``."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    with Image.open(path) as image:
        return normalize(resize_and_crop(image, resize_size, crop_size,
                                         interpolation), mean, std)


def preprocessing_of(meta: dict) -> dict:
    """The preprocessing spec an export recorded (``meta["preprocessing"]``;
    files without one: torchvision's rule at the recorded sizes)."""
    spec = meta.get("preprocessing")
    if spec:
        return dict(spec)
    return {"resize_size": meta["resize_size"],
            "crop_size": meta["image_size"], "resize": "shorter",
            "interpolation": "bilinear", "mean": meta["mean"],
            "std": meta["std"], "convert": "RGB"}


# ---------------------------------------------------------------------------
# Exported models.

class ExportedModel:
    """A deserialized export: call it on normalized NHWC float32 images.

    ``meta`` holds what the exporter recorded: ``platforms``, ``image_size``,
    ``num_classes``, ``mean``/``std``, ``class_names`` (may be empty), the
    model's configuration.
    """

    def __init__(self, exported, weights, meta):
        import jax  # pylint: disable=import-outside-toplevel

        self.exported = exported
        self.meta = meta
        # Weights become device arrays once, not at every call.
        self.weights = [jax.device_put(w) for w in weights]
        self._call = jax.jit(exported.call)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])

    @property
    def preprocessing(self) -> dict:
        """Sizes, resize rule, interpolation, mean/std (see
        `preprocessing_of`)."""
        return preprocessing_of(self.meta)

    def load_image(self, path) -> np.ndarray:
        """An image file -> this model's normalized float32 input."""
        spec = self.preprocessing
        return load_image(path, spec["resize_size"], spec["crop_size"],
                          spec["mean"], spec["std"], spec["interpolation"])

    def __call__(self, images) -> np.ndarray:
        """Logits ``(N, num_classes)`` for images ``(N, H, W, 3)``."""
        size = self.meta["image_size"]
        dtype = getattr(images, "dtype", None) or np.asarray(images).dtype
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(
                f"images must be floating point (normalized), got dtype "
                f"{dtype}; convert with x.astype(np.float32) and normalize "
                "first (model.load_image does both).")
        if np.ndim(images) != 4 or tuple(np.shape(images)[1:]) != (
                size, size, 3):
            raise ValueError(
                f"images must have shape (N, {size}, {size}, 3), the shape "
                f"this model was exported for; got {np.shape(images)}.")
        return self._call(self.weights, np.asarray(images, np.float32))


def load(path: str | os.PathLike) -> ExportedModel:
    """Reads a file written by ``resnext_jax.inference.export``."""
    from jax import export  # pylint: disable=import-outside-toplevel

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model {path!r} does not exist.")
    not_ours = (f"{path!r} is not a readable resnext_jax export (an .npz "
                f"with 'meta', 'exported' and the weights, format "
                f"{FORMAT!r}); it may be truncated or another kind of file. "
                "Export it again with resnext-export")
    try:
        # allow_pickle=False: an export holds plain arrays only, and a file
        # that needs pickle is refused, never executed.
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(
                    f"{path!r} has format {meta.get('format')!r}; this "
                    f"loader reads {FORMAT!r}.")
            exported = export.deserialize(
                bytearray(data["exported"].tobytes()))
            weights = [data[f"w{i:05d}"]
                       for i in range(meta["num_weights"])]
    except ValueError as e:
        if "format" in str(e) and path in str(e):
            raise
        raise ValueError(f"{not_ours}.") from None
    except Exception as e:  # pylint: disable=broad-except
        # zipfile.BadZipFile, KeyError, EOFError, OSError, a damaged
        # serialized program: all mean the same thing to the user.
        raise ValueError(f"{not_ours} ({type(e).__name__}).") from None
    return ExportedModel(exported, weights, meta)


def top_k(logits, k: int = 5):
    """Softmax probabilities and indices of the ``k`` largest, descending
    (all classes when ``k`` exceeds their number)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (={k!r}) must be a positive integer.")
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    k = min(k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(probs, order, axis=-1), order
