"""The eval spec's resize, center crop and normalization in one native call,
equal to Pillow's bit for bit.

`serving.resize_and_crop` resizes the whole image with Pillow, then crops.
``resample.cc`` computes only the crop's pixels, with Pillow's own
fixed-point arithmetic and pass order, and normalizes them in the same call
(see `serving.normalize`). It is built on first use with the system's C++
compiler (`resnext_jax._native`) and, before its first use, compared with
the installed Pillow on probe images. Where it cannot be built, where it
disagrees with this Pillow, or off x86-64, `resizer` returns ``None`` and
the library uses Pillow (one log line says why).
``RESNEXT_JAX_NATIVE_RESIZE=off`` always uses Pillow.

The call releases the GIL (ctypes does), so the threads of an input
pipeline resize in parallel.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pathlib
import platform
import threading
from typing import Sequence

import numpy as np

from resnext_jax import _native
from resnext_jax.inference import serving

SOURCE = pathlib.Path(__file__).with_name("resample.cc")
SWITCH_ENV = "RESNEXT_JAX_NATIVE_RESIZE"
# The interpolations it computes, by Pillow's filter numbers (NEAREST goes
# through Pillow's affine transform instead: left to Pillow).
FILTERS = {"bilinear": 2, "bicubic": 3}
# Pillow's pass orders: 0, the horizontal pass first (Pillow 12 and older);
# 1, the vertical pass first where the height shrinks by more than twice as
# many pixels as the width (Pillow 13).
ORDERS = (1, 0)

_log = logging.getLogger(__name__)


def _command(compiler: str, output: str) -> list[str]:
    # No FMA contraction: the filter weights' double arithmetic must round
    # as in Pillow, whose wheels are built without FMA.
    return [compiler, "-O3", "-std=c++17", "-shared", "-fPIC",
            "-ffp-contract=off", str(SOURCE), "-o", output]


class _Arrow:
    """The Arrow C data interface's structs, through which Pillow (11.2+)
    lends an image's pixels without a copy."""

    class Array(ctypes.Structure):
        pass

    Array._fields_ = [  # pylint: disable=protected-access
        ("length", ctypes.c_int64), ("null_count", ctypes.c_int64),
        ("offset", ctypes.c_int64), ("n_buffers", ctypes.c_int64),
        ("n_children", ctypes.c_int64),
        ("buffers", ctypes.POINTER(ctypes.c_void_p)),
        ("children", ctypes.POINTER(ctypes.POINTER(Array))),
        ("dictionary", ctypes.c_void_p), ("release", ctypes.c_void_p),
        ("private_data", ctypes.c_void_p)]

    class Schema(ctypes.Structure):
        _fields_ = [("format", ctypes.c_char_p), ("name", ctypes.c_char_p),
                    ("metadata", ctypes.c_char_p), ("flags", ctypes.c_int64),
                    ("n_children", ctypes.c_int64),
                    ("children", ctypes.c_void_p),
                    ("dictionary", ctypes.c_void_p),
                    ("release", ctypes.c_void_p),
                    ("private_data", ctypes.c_void_p)]

    _pointer = ctypes.pythonapi.PyCapsule_GetPointer
    _pointer.restype = ctypes.c_void_p
    _pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

    @classmethod
    def pixels(cls, image):
        """``(address, keepalive)`` of an RGB image's RGBX pixels, or
        ``None`` where Pillow cannot lend them (older Pillow; an image in
        several memory blocks)."""
        try:
            capsules = image.__arrow_c_array__()
            schema = cls.Schema.from_address(
                cls._pointer(capsules[0], b"arrow_schema"))
            array = cls.Array.from_address(
                cls._pointer(capsules[1], b"arrow_array"))
        except (AttributeError, ValueError, TypeError, OSError):
            return None
        width, height = image.size
        # RGB is a fixed-size list of 4 uint8 per pixel ("+w:4" of "C").
        if (schema.format != b"+w:4" or array.offset != 0
                or array.length != width * height or array.n_children != 1):
            return None
        data = array.children[0].contents
        if (data.offset != 0 or data.n_buffers != 2
                or data.length != 4 * width * height
                or not data.buffers[1]):
            return None
        return data.buffers[1], capsules


class Resizer:
    """The loaded library: ``resizer(image, size, crop, interpolation)``."""

    def __init__(self, path: pathlib.Path):
        self._lib = ctypes.CDLL(str(path))
        fn = self._lib.resnext_resize_crop
        fn.restype = ctypes.c_int
        i64, c_int, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
        fn.argtypes = [ptr, i64, i64, i64, c_int, i64, i64, i64, i64, i64,
                       i64, c_int, c_int, ptr, ptr]
        self._fn = fn
        self.order = ORDERS[0]

    def __call__(self, image, size: tuple[int, int],
                 crop: tuple[int, int, int, int], interpolation: str,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, *,
                 copy: bool = False) -> np.ndarray:
        """The RGB PIL ``image`` resized to ``size`` as Pillow's
        ``image.resize(size, interpolation)``, cropped to ``crop`` (left,
        top, right, bottom): uint8 ``(h, w, 3)``, or with ``mean`` and
        ``std``, float32 as `serving.normalize` of those pixels.

        The pixels are read where Pillow keeps them when it can lend them
        (one memory block: images up to 16 MiB by default), else from a
        copy; ``copy=True`` always copies."""
        if image.mode != "RGB":
            raise ValueError(f"image mode (={image.mode!r}) must be 'RGB'.")
        image.load()
        lent = None if copy else _Arrow.pixels(image)
        if lent is not None:
            address, keepalive = lent
            bpp = 4
        else:
            keepalive = np.asarray(image)
            address, bpp = keepalive.ctypes.data, 3
        width, height = image.size
        left, top, right, bottom = crop
        normalized = mean is not None
        out = np.empty((bottom - top, right - left, 3),
                       np.float32 if normalized else np.uint8)
        mean_std = (np.asarray(tuple(mean) + tuple(std), np.float32)
                    if normalized else None)
        status = self._fn(
            address, height, width, width * bpp, bpp, size[1], size[0], top,
            left, bottom - top, right - left, FILTERS[interpolation],
            self.order,
            None if mean_std is None else mean_std.ctypes.data,
            out.ctypes.data)
        del keepalive
        if status == -2:
            raise MemoryError(f"resizing a {width}x{height} image to {size}")
        if status != 0:
            raise ValueError(
                f"cannot resize a {width}x{height} image to {size} and crop "
                f"{crop}: the crop must lie inside the resized image, and "
                f"no side may exceed {1 << 24} pixels.")
        return out


def _probes():
    """Seeded random RGB images with resize targets and crops that tell
    Pillow's pass orders apart: ``(image, size, crop, interpolation)``."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    # ((height, width), (resized height, width), interpolation)
    cases = [((40, 20), (20, 40), "bicubic"),   # Vertical first in 13.
             ((60, 30), (20, 25), "bilinear"),
             ((31, 47), (17, 23), "bilinear"),  # Horizontal first in both.
             ((23, 70), (61, 40), "bicubic"),
             ((90, 64), (55, 64), "bilinear"),  # One pass only.
             ((64, 90), (64, 41), "bicubic")]
    for (height, width), (out_h, out_w), interpolation in cases:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        top, left = out_h // 5, out_w // 7
        crop = (left, top, out_w - left // 2, out_h - top // 3)
        yield (Image.fromarray(pixels), (out_w, out_h), crop, interpolation)


def _agrees(resizer: Resizer) -> bool:
    """Whether ``resizer`` gives Pillow's pixels and `serving.normalize`'s
    values on every probe."""
    for image, size, crop, interpolation in _probes():
        want = np.asarray(image.resize(
            size, serving.pil_filter(interpolation)).crop(crop))
        for copy in (False, True):  # Both ways of reading the pixels.
            got = resizer(image, size, crop, interpolation, copy=copy)
            if not np.array_equal(got, want):
                return False
            got = resizer(image, size, crop, interpolation,
                          serving.IMAGENET_MEAN, serving.IMAGENET_STD,
                          copy=copy)
            if not np.array_equal(got, serving.normalize(want)):
                return False
    return True


def _load() -> Resizer:
    if os.environ.get(SWITCH_ENV, "").lower() in ("off", "0"):
        raise _native.BuildError(f"{SWITCH_ENV}=off")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        # Elsewhere Pillow's own build may fuse its filter arithmetic into
        # FMAs, which a rare weight would round differently from ours.
        raise _native.BuildError(
            f"the native resize is checked on x86-64 only, not "
            f"{platform.machine()}")
    path = _native.build("resnext_resample", SOURCE, _command,
                         "the native resize")
    try:
        resizer_ = Resizer(path)
    except OSError as err:
        raise _native.BuildError(
            f"the native resize {path.name} does not load: {err}") from None
    for order in ORDERS:
        resizer_.order = order
        if _agrees(resizer_):
            return resizer_
    import PIL  # pylint: disable=import-outside-toplevel
    raise _native.BuildError(
        f"the native resize disagrees with Pillow {PIL.__version__} on the "
        "probe images")


_lock = threading.Lock()
_state: dict = {}


def resizer() -> Resizer | None:
    """The native resizer, built, loaded and checked on the first call of
    the process; ``None`` where it cannot be used (see `unavailable_reason`).
    """
    if "resizer" in _state:
        return _state["resizer"]
    with _lock:
        if "resizer" not in _state:
            try:
                loaded, why = _load(), None
            except _native.BuildError as err:
                loaded, why = None, str(err)
            except Exception as err:  # pylint: disable=broad-except
                # Never a reason for preprocessing to fail: Pillow remains.
                loaded, why = None, f"{type(err).__name__}: {err}"
            if loaded is None:
                _log.info("resnext_jax: eval images are resized by Pillow: "
                          "%s", why)
            _state["why"] = why
            _state["resizer"] = loaded
        return _state["resizer"]


def unavailable_reason() -> str | None:
    """Why the native resize is not used here, or ``None`` where it is."""
    return None if resizer() is not None else _state["why"]
