"""torchvision's automatic augmentations as TensorFlow graph ops.

TrivialAugmentWide, RandAugment and RandomErasing, written with plain
TensorFlow ops so that they run inside ``tf.data`` ``map`` (no Python per
image), with stateless randomness: ``seed`` is an integer tensor of shape
``[2]`` and the same seed always gives the same image.

The ops follow ``torchvision.transforms`` (``autoaugment.py`` and the
tensor kernels of ``transforms.functional``, which torchvision's
classification reference runs) on uint8 tensors down to the float32
arithmetic: each product, sum, rounding and truncation where torchvision
has one, and torch's fused multiply-adds (its CPU kernels' ``a * b + c``
rounded once) computed in float64 and rounded once. ``transforms.v2``
rounds Color and Sharpness blends, and bilinear edges with a fill,
slightly differently (by 1 level, at a few pixels). Images are uint8 HWC
with 3 channels and any height and width.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

Fill = Optional[Union[float, Sequence[float]]]

INTERPOLATIONS = ("nearest", "bilinear")
AUGMENTATIONS = ("", "ta_wide", "ra")

# torchvision's op order (TrivialAugmentWide and RandAugment share it): an
# op is drawn by its index here.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
       "Brightness", "Color", "Contrast", "Sharpness", "Posterize",
       "Solarize", "AutoContrast", "Equalize")
GEOMETRIC_OPS = OPS[1:6]
SIGNED_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
              "Brightness", "Color", "Contrast", "Sharpness")

_F32 = tf.float32
_F64 = tf.float64


# ---------------------------------------------------------------------------
# Arithmetic as torch's CPU kernels do it.
#
# Each float32 operation whose rounding matters is computed in float64 and
# rounded to float32 once, which gives the correctly rounded float32 result
# (float64 has more than twice float32's precision). The casts also keep
# TensorFlow's graph optimizer from reassociating chains of adds and
# multiplies or turning a division into a reciprocal multiply (it does both
# on float32 graphs, and an image would then differ between eager and
# tf.data).

def _as_f64(value) -> tf.Tensor:
    """A float64 scalar; a Python float is taken exactly, not via float32."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, _F64)
    return tf.constant(value, _F64)


def _f32(fn, *args) -> tf.Tensor:
    return tf.cast(fn(*(tf.cast(a, _F64) for a in args)), _F32)


def _add(a, b) -> tf.Tensor:
    return _f32(tf.add, a, b)


def _sub(a, b) -> tf.Tensor:
    return _f32(tf.subtract, a, b)


def _mul(a, b) -> tf.Tensor:
    return _f32(tf.multiply, a, b)


def _div(a, b) -> tf.Tensor:
    return _f32(tf.divide, a, b)


def _fma(a, b, c) -> tf.Tensor:
    """float32 ``a * b + c`` rounded once, as an FMA instruction does (the
    float64 product of two float32 numbers is exact)."""
    return _f32(lambda x, y, z: x * y + z, a, b, c)


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` (float32) as torch's CPU kernel
    computes it (its AVX-512 build; others may differ in the last bit): from
    the start for the first half and from the end for the second, each value
    one fused multiply-add."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = (end32 - start32) / np.float32(steps - 1)
    i = np.arange(steps, dtype=np.float64)
    head = np.float64(step) * i + np.float64(start32)
    tail = np.float64(-step) * (steps - 1 - i) + np.float64(end32)
    return np.where(i < steps // 2, head, tail).astype(np.float32)


def _truncate_to_uint8(x: tf.Tensor) -> tf.Tensor:
    """torch's ``clamp(0, 255).to(uint8)``: the cast truncates."""
    return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def _round_to_uint8(x: tf.Tensor) -> tf.Tensor:
    """torch's ``round().to(uint8)``: halves to even."""
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of "
                         f"{INTERPOLATIONS}")


# ---------------------------------------------------------------------------
# Geometry: torchvision's F.affine / F.rotate on tensors (an inverse affine
# matrix, a float32 sampling grid, grid_sample with zero padding).

def _radians(degrees):
    """``math.radians``. MulNoNan (a plain product here) keeps the graph
    optimizer from folding a degrees-radians round trip into one product
    (rounded differently)."""
    return tf.math.multiply_no_nan(degrees, tf.constant(math.pi / 180.0,
                                                        _F64))


def _degrees(radians):
    """``math.degrees``; see :func:`_radians`."""
    return tf.math.multiply_no_nan(radians, tf.constant(180.0 / math.pi,
                                                        _F64))


def _inverse_affine_matrix(center, angle, translate, shear):
    """torchvision's ``_get_inverse_affine_matrix`` (scale 1) in float64,
    operation by operation; arguments are float64 scalars, angles in
    degrees, ``center`` relative to the image centre."""
    rot, sx, sy = (_radians(a) for a in (angle, shear[0], shear[1]))
    cx, cy = center
    tx, ty = translate
    cos_sy = tf.cos(sy)
    a = tf.cos(rot - sy) / cos_sy
    b = -tf.cos(rot - sy) * tf.tan(sx) / cos_sy - tf.sin(rot)
    c = tf.sin(rot - sy) / cos_sy
    d = -tf.sin(rot - sy) * tf.tan(sx) / cos_sy + tf.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = (m0 * (-cx - tx) + m1 * (-cy - ty)) + cx
    m5 = (m3 * (-cx - tx) + m4 * (-cy - ty)) + cy
    return m0, m1, m2, m3, m4, m5


def _source_coords(matrix, height, width):
    """Where each output pixel samples the input, in input pixel units.

    torchvision normalizes the grid by half the size, torch's batched
    matmul accumulates the three terms with FMAs, and grid_sample maps the
    grid back to pixels with ``(g + 1) * size / 2 - 0.5`` (one FMA); every
    rounding is kept, so that nearest sampling picks the same pixels."""
    theta = [tf.cast(m, _F32) for m in matrix]
    size = (tf.cast(width, _F32), tf.cast(height, _F32))
    # Half-integers: exact.
    x = tf.cast(tf.range(width), _F32) - (size[0] - 1.0) * 0.5
    y = tf.cast(tf.range(height), _F32) - (size[1] - 1.0) * 0.5
    coords = []
    for k in (0, 1):
        half = size[k] * 0.5
        r0, r1, r2 = (_div(t, half) for t in theta[3 * k:3 * k + 3])
        grid = _add(_fma(y[:, None], r1, _mul(x[None, :], r0)), r2)
        coords.append(_fma(_add(grid, 1.0), half, -0.5))
    return coords


def _taps(pixels, xs, ys):
    """``pixels[ys, xs]`` (HWC, float32), zero outside the image."""
    height, width = tf.shape(pixels)[0], tf.shape(pixels)[1]
    # Clipping to one pixel beyond the edges keeps out-of-image taps out of
    # the image (a neighbour at +1 included) and the int32 casts small.
    xi = tf.cast(tf.clip_by_value(xs, -2.0, tf.cast(width + 1, _F32)),
                 tf.int32)
    yi = tf.cast(tf.clip_by_value(ys, -2.0, tf.cast(height + 1, _F32)),
                 tf.int32)
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    index = (tf.clip_by_value(yi, 0, height - 1) * width
             + tf.clip_by_value(xi, 0, width - 1))
    flat = tf.reshape(pixels, [-1, tf.shape(pixels)[2]])
    return tf.where(inside[..., None], tf.gather(flat, index), 0.0)


def _sample_bilinear(pixels, xs, ys):
    """torch's CPU grid_sample (bilinear, zero padding), its roundings too."""
    x0, y0 = tf.floor(xs), tf.floor(ys)
    # Fractions of coordinates under 2**23, and one minus them: exact.
    east, south = xs - x0, ys - y0
    west, north = 1.0 - east, 1.0 - south
    weights = [_mul(north, west), _mul(north, east), _mul(south, west),
               _mul(south, east)]
    corners = [(x0, y0), (x0 + 1.0, y0), (x0, y0 + 1.0), (x0 + 1.0, y0 + 1.0)]
    out = _mul(_taps(pixels, *corners[0]), weights[0][..., None])
    for (cx, cy), weight in zip(corners[1:], weights[1:]):
        out = _fma(_taps(pixels, cx, cy), weight[..., None], out)
    return out


def _sample_nearest(pixels, xs, ys):
    """torch's CPU grid_sample (nearest: halves to even, zero padding)."""
    return _taps(pixels, tf.round(xs), tf.round(ys))


def _apply_fill(sampled, fill, interpolation):
    """torchvision's fill: the last channel is the warped all-ones mask."""
    image, mask = sampled[..., :-1], sampled[..., -1:]
    fill = tf.constant(np.broadcast_to(np.asarray(fill, np.float32), [3]))
    if interpolation == "nearest":
        return tf.where(mask < 0.5, fill + tf.zeros_like(image), image)
    return _add(_mul(image, mask), _mul(_sub(1.0, mask), fill))


def _warp(image, matrix, interpolation, fill):
    """The uint8 image resampled through an inverse affine ``matrix``.

    ``fill=None`` is torchvision's default: samples outside the image read
    0, and bilinear edges blend towards black. A number (or 3) is
    torchvision's fill: the outside is set to it through a warped mask."""
    _check_interpolation(interpolation)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    pixels = tf.cast(image, _F32)
    if fill is not None:
        pixels = tf.concat([pixels, tf.ones_like(pixels[..., :1])], axis=-1)
    xs, ys = _source_coords(matrix, height, width)
    if interpolation == "nearest":
        sampled = _sample_nearest(pixels, xs, ys)
    else:
        sampled = _sample_bilinear(pixels, xs, ys)
    if fill is not None:
        sampled = _apply_fill(sampled, fill, interpolation)
    return _round_to_uint8(sampled)


def affine(image, angle=0.0, translate=(0.0, 0.0), shear=(0.0, 0.0),
           center=None, interpolation: str = "bilinear", fill: Fill = None):
    """torchvision's ``F.affine`` (scale 1) on a uint8 HWC image: rotation
    ``angle`` and ``shear`` in degrees about ``center`` (pixel coordinates
    of the pivot, the image centre if None), then ``translate`` pixels."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    if center is None:
        center_f = (_as_f64(0.0), _as_f64(0.0))
    else:
        center_f = (_as_f64(center[0]) - tf.cast(width, _F64) * 0.5,
                    _as_f64(center[1]) - tf.cast(height, _F64) * 0.5)
    return _affine(image, center_f, angle, translate, shear, interpolation,
                   fill)


def _affine(image, center_f, angle, translate, shear, interpolation, fill):
    """:func:`affine` with the pivot relative to the image centre."""
    matrix = _inverse_affine_matrix(
        center_f, _as_f64(angle), [_as_f64(t) for t in translate],
        [_as_f64(s) for s in shear])
    return _warp(image, matrix, interpolation, fill)


def _affine_args(name, magnitude):
    """The ``F.affine`` arguments torchvision's AutoAugment passes for the
    geometric op ``name``: angle, translate x and y, shear x and y (float64
    scalars), and whether the pivot is the top-left corner (else the
    centre)."""
    m = _as_f64(magnitude)
    zero = tf.zeros([], _F64)
    if name == "Rotate":
        # torchvision's rotate hands affine the opposite angle.
        return -m, zero, zero, zero, zero, tf.constant(False)
    if name in ("TranslateX", "TranslateY"):
        shift = tf.cast(tf.cast(m, tf.int32), _F64)  # int(magnitude)
        if name == "TranslateX":
            return zero, shift, zero, zero, zero, tf.constant(False)
        return zero, zero, shift, zero, zero, tf.constant(False)
    # The shear angle whose tangent is the magnitude.
    degrees = _degrees(tf.atan(m))
    if name == "ShearX":
        return zero, zero, zero, degrees, zero, tf.constant(True)
    return zero, zero, zero, zero, degrees, tf.constant(True)


def _geometric_op(image, op, magnitude, interpolation, fill):
    """The geometric op ``op`` (its name, or its index in OPS as a tensor)
    at ``magnitude``; one warp whichever op it is, so that a graph holds a
    single copy of the sampler."""
    if isinstance(op, str):
        args = _affine_args(op, magnitude)
    else:
        options = [_affine_args(name, magnitude) for name in GEOMETRIC_OPS]
        index = op - OPS.index(GEOMETRIC_OPS[0])
        args = [tf.gather(tf.stack(values), index)
                for values in zip(*options)]
    angle, tx, ty, sx, sy, corner = args
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    center_f = (tf.where(corner, -(tf.cast(width, _F64) * 0.5), 0.0),
                tf.where(corner, -(tf.cast(height, _F64) * 0.5), 0.0))
    return _affine(image, center_f, angle, (tx, ty), (sx, sy), interpolation,
                   fill)


def shear_x(image, magnitude, interpolation="bilinear", fill: Fill = None):
    """AutoAugment's ShearX: x += magnitude * y, about the top-left corner
    (torchvision passes a shear of ``degrees(atan(magnitude))``)."""
    return _geometric_op(image, "ShearX", magnitude, interpolation, fill)


def shear_y(image, magnitude, interpolation="bilinear", fill: Fill = None):
    """AutoAugment's ShearY: y += magnitude * x, about the top-left corner."""
    return _geometric_op(image, "ShearY", magnitude, interpolation, fill)


def translate_x(image, pixels, interpolation="bilinear", fill: Fill = None):
    """Shift right by ``int(pixels)`` (truncated, as torchvision does)."""
    return _geometric_op(image, "TranslateX", pixels, interpolation, fill)


def translate_y(image, pixels, interpolation="bilinear", fill: Fill = None):
    """Shift down by ``int(pixels)`` (truncated, as torchvision does)."""
    return _geometric_op(image, "TranslateY", pixels, interpolation, fill)


def rotate(image, angle, interpolation="bilinear", fill: Fill = None):
    """torchvision's ``F.rotate``: ``angle`` degrees counter-clockwise about
    the centre, same size."""
    return _geometric_op(image, "Rotate", angle, interpolation, fill)


# ---------------------------------------------------------------------------
# Colour: torchvision's tensor kernels on uint8 (float32 blends, truncated).

def _blend(image, other, ratio):
    """``ratio * image + (1 - ratio) * other``, clamped and truncated; the
    two weights are rounded to float32 from float64, as torch does."""
    ratio = _as_f64(ratio)
    weight, other_weight = tf.cast(ratio, _F32), tf.cast(1.0 - ratio, _F32)
    return _truncate_to_uint8(_add(_mul(weight, tf.cast(image, _F32)),
                                   _mul(other_weight, other)))


def rgb_to_grayscale(image):
    """torchvision's uint8 luma: ``0.2989 R + 0.587 G + 0.114 B``, truncated;
    HW1."""
    r, g, b = tf.unstack(tf.cast(image, _F32), axis=-1)
    weights = [tf.constant(w, _F32) for w in (0.2989, 0.587, 0.114)]
    luma = _add(_add(_mul(weights[0], r), _mul(weights[1], g)),
                _mul(weights[2], b))
    return _truncate_to_uint8(luma)[..., None]


def adjust_brightness(image, factor):
    """Blend with black."""
    return _blend(image, 0.0, factor)


def adjust_saturation(image, factor):
    """Blend with the (truncated) grayscale image; AutoAugment's Color."""
    return _blend(image, tf.cast(rgb_to_grayscale(image), _F32), factor)


def adjust_contrast(image, factor):
    """Blend with the mean of the uint8 grayscale image."""
    gray = tf.cast(rgb_to_grayscale(image), tf.int64)
    # An integer sum is exact; so is torch's float32 one below 2**24.
    mean = _div(tf.cast(tf.reduce_sum(gray), _F32),
                tf.cast(tf.size(gray), _F32))
    return _blend(image, mean, factor)


def _blurred_degenerate(image):
    """The image smoothed by torchvision's 3x3 kernel (1s, 5 in the middle,
    over 13), rounded; the border pixels are the image's own."""
    x = tf.cast(image, _F32)
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], _F32)
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    # Integer sums, exact in float32; sum / 13 is never a half, so torch's
    # float rounding of it is the integer one.
    total = tf.cast(tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1],
                                           "VALID")[0], tf.int32)
    blurred = tf.pad((2 * total + 13) // 26, [[1, 1], [1, 1], [0, 0]])
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    rows, cols = tf.range(height), tf.range(width)
    inner = (((rows > 0) & (rows < height - 1))[:, None, None]
             & ((cols > 0) & (cols < width - 1))[None, :, None])
    return tf.where(inner, tf.cast(blurred, _F32), x)


def adjust_sharpness(image, factor):
    """Blend with the blurred image (borders kept; images under 3 pixels on
    a side unchanged). The blend covers the border too, as torchvision's."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    return tf.cond(
        (height <= 2) | (width <= 2), lambda: image,
        lambda: _blend(image, _blurred_degenerate(image), factor))


def posterize(image, bits):
    """Keep the ``bits`` high bits of each value."""
    bits = tf.cast(bits, tf.int32)
    mask = tf.bitwise.bitwise_and(tf.bitwise.left_shift(255, 8 - bits), 255)
    return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def solarize(image, threshold):
    """Invert the values at or above ``threshold`` (compared in float32)."""
    above = tf.cast(image, _F32) >= tf.cast(_as_f64(threshold), _F32)
    return tf.where(above, 255 - image, image)


def autocontrast(image):
    """Stretch each channel to 0..255 (a constant channel is left)."""
    x = tf.cast(image, _F32)
    low = tf.reduce_min(x, axis=[0, 1], keepdims=True)
    high = tf.reduce_max(x, axis=[0, 1], keepdims=True)
    flat = high == low  # torchvision's infinite scale.
    scale = tf.where(flat, 1.0, _div(255.0, tf.where(flat, 1.0, high - low)))
    low = tf.where(flat, 0.0, low)
    # Differences of integers: exact.
    return _truncate_to_uint8(_mul(x - low, scale))


def equalize(image):
    """Histogram-equalize each channel with PIL's (and torchvision's) step
    rule; a channel whose step is 0 is left."""
    channels = tf.reshape(tf.transpose(tf.cast(image, tf.int32), [2, 0, 1]),
                          [3, -1])
    offsets = tf.range(3)[:, None] * 256
    hist = tf.reshape(tf.math.bincount(channels + offsets, minlength=768,
                                       maxlength=768), [3, 256])
    count = tf.shape(channels)[1]
    top = tf.gather(hist, tf.reduce_max(channels, axis=1), batch_dims=1)
    step = (count - top) // 255  # The pixels below each channel's maximum.
    cumulative = tf.cumsum(hist, axis=1)
    lut = (cumulative + (step // 2)[:, None]) // tf.maximum(step, 1)[:, None]
    lut = tf.clip_by_value(tf.pad(lut[:, :-1], [[0, 0], [1, 0]]), 0, 255)
    equalized = tf.gather(lut, channels, batch_dims=1)
    out = tf.where((step > 0)[:, None], equalized, channels)
    return tf.transpose(tf.reshape(tf.cast(out, tf.uint8),
                                   [3, tf.shape(image)[0],
                                    tf.shape(image)[1]]), [1, 2, 0])


# ---------------------------------------------------------------------------
# TrivialAugmentWide and RandAugment.

def apply_op(image, op, magnitude, interpolation: str = "bilinear",
             fill: Fill = None):
    """torchvision's ``_apply_op``: op number ``op`` of OPS (an int, or an
    integer scalar tensor) at ``magnitude`` (sign applied), turned into the
    op's argument as torchvision does (``int(magnitude)`` pixels or bits,
    ``1 + magnitude`` factors). Of a tensor ``op``, only the chosen op
    runs."""
    _check_interpolation(interpolation)
    magnitude = _as_f64(magnitude)
    which = OPS[op] if isinstance(op, int) else tf.cast(op, tf.int32)
    branches = [
        lambda: tf.identity(image),
        lambda: _geometric_op(image, which, magnitude, interpolation, fill),
        lambda: adjust_brightness(image, 1.0 + magnitude),
        lambda: adjust_saturation(image, 1.0 + magnitude),
        lambda: adjust_contrast(image, 1.0 + magnitude),
        lambda: adjust_sharpness(image, 1.0 + magnitude),
        lambda: posterize(image, tf.cast(magnitude, tf.int32)),
        lambda: solarize(image, magnitude),
        lambda: autocontrast(image),
        lambda: equalize(image),
    ]
    # The geometric ops share a branch.
    branch_of_op = [0] + [1] * len(GEOMETRIC_OPS) + list(range(2, 10))
    if isinstance(op, int):
        return branches[branch_of_op[op]]()
    out = tf.switch_case(tf.gather(branch_of_op, which), branches)
    out.set_shape(image.shape)
    return out


def _posterize_bits(num_bins: int, levels: int) -> np.ndarray:
    """``8 - (arange(num_bins) / ((num_bins - 1) / levels)).round()``,
    divided in float32 as torch does."""
    ratio = np.arange(num_bins, dtype=np.float32) / np.float32(
        (num_bins - 1) / levels)
    return (8 - np.round(ratio)).astype(np.float32)


def _check_bins(num_magnitude_bins: int) -> None:
    if not isinstance(num_magnitude_bins, int) or num_magnitude_bins < 2:
        raise ValueError(f"num_magnitude_bins must be an int >= 2, got "
                         f"{num_magnitude_bins!r}")


def ta_wide_magnitudes(num_magnitude_bins: int = 31) -> np.ndarray:
    """TrivialAugmentWide's magnitude table, ``[len(OPS), bins]`` float32
    (0 for the ops without a magnitude)."""
    _check_bins(num_magnitude_bins)
    n = num_magnitude_bins
    enhance = _torch_linspace(0.0, 0.99, n)
    rows = {"ShearX": enhance, "ShearY": enhance,
            "TranslateX": _torch_linspace(0.0, 32.0, n),
            "TranslateY": _torch_linspace(0.0, 32.0, n),
            "Rotate": _torch_linspace(0.0, 135.0, n),
            "Brightness": enhance, "Color": enhance, "Contrast": enhance,
            "Sharpness": enhance, "Posterize": _posterize_bits(n, 6),
            "Solarize": _torch_linspace(255.0, 0.0, n)}
    zeros = np.zeros([n], np.float32)
    return np.stack([rows.get(name, zeros) for name in OPS])


def _signed(op) -> tf.Tensor:
    return tf.gather(tf.constant([name in SIGNED_OPS for name in OPS]), op)


def trivial_augment_wide_choice(seed, num_magnitude_bins: int = 31):
    """What TrivialAugmentWide draws for ``seed``: the op's index in OPS,
    the magnitude bin, and whether a signed op's magnitude is negated (each
    uniform, int32 / bool scalars)."""
    op_seed, bin_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    op = tf.random.stateless_uniform([], op_seed, 0, len(OPS), tf.int32)
    bin_ = tf.random.stateless_uniform([], bin_seed, 0, num_magnitude_bins,
                                       tf.int32)
    negate = tf.random.stateless_uniform([], sign_seed, 0, 2, tf.int32) == 1
    return op, bin_, negate


def trivial_augment_wide(image, seed, interpolation: str = "bilinear",
                         fill: Fill = None, num_magnitude_bins: int = 31):
    """torchvision's ``TrivialAugmentWide`` on a uint8 HWC image: one op of
    OPS, one of ``num_magnitude_bins`` magnitudes, a random sign.

    ``fill=None`` (torchvision's default) lets the geometric ops read black
    outside the image; a number sets the outside to it, as torchvision's
    ``fill``."""
    _check_interpolation(interpolation)
    table = tf.constant(ta_wide_magnitudes(num_magnitude_bins), _F64)
    op, bin_, negate = trivial_augment_wide_choice(seed, num_magnitude_bins)
    magnitude = table[op, bin_]
    magnitude = tf.where(negate & _signed(op), -magnitude, magnitude)
    return apply_op(image, op, magnitude, interpolation, fill)


def _linspace_at(end, steps: int, index: int) -> tf.Tensor:
    """``torch.linspace(0, end, steps)[index]`` for a float32 tensor
    ``end``, as :func:`_torch_linspace` computes it."""
    step = _div(end, float(steps - 1))
    if index < steps // 2:
        return _mul(step, float(index))
    return _fma(-step, float(steps - 1 - index), end)


def rand_augment_magnitudes(magnitude: int, num_magnitude_bins: int,
                            height, width) -> tf.Tensor:
    """RandAugment's magnitude of each op of OPS at bin ``magnitude``
    (float64 ``[len(OPS)]``); the translations scale with the image."""
    n, m = num_magnitude_bins, magnitude
    fixed = {"ShearX": _torch_linspace(0.0, 0.3, n)[m],
             "ShearY": _torch_linspace(0.0, 0.3, n)[m],
             "Rotate": _torch_linspace(0.0, 30.0, n)[m],
             "Posterize": _posterize_bits(n, 4)[m],
             "Solarize": _torch_linspace(255.0, 0.0, n)[m]}
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        fixed[name] = _torch_linspace(0.0, 0.9, n)[m]

    def translate(size):
        end = tf.cast(150.0 / 331.0 * tf.cast(size, _F64), _F32)
        return tf.cast(_linspace_at(end, n, m), _F64)

    dynamic = {"TranslateX": translate(width), "TranslateY": translate(height)}
    return tf.stack([dynamic[name] if name in dynamic
                     else tf.constant(float(fixed.get(name, 0.0)), _F64)
                     for name in OPS])


def rand_augment(image, seed, num_ops: int = 2, magnitude: int = 9,
                 num_magnitude_bins: int = 31, interpolation: str = "bilinear",
                 fill: Fill = None):
    """torchvision's ``RandAugment`` on a uint8 HWC image: ``num_ops`` ops
    drawn uniformly from OPS (with replacement), each at bin ``magnitude``
    with a random sign."""
    _check_interpolation(interpolation)
    _check_bins(num_magnitude_bins)
    if not isinstance(num_ops, int) or num_ops < 0:
        raise ValueError(f"num_ops must be an int >= 0, got {num_ops!r}")
    if not isinstance(magnitude, int) or not (
            0 <= magnitude < num_magnitude_bins):
        raise ValueError(f"magnitude must be an int bin in [0, "
                         f"{num_magnitude_bins}), got {magnitude!r}")
    if num_ops == 0:
        return image
    magnitudes = rand_augment_magnitudes(
        magnitude, num_magnitude_bins, tf.shape(image)[0],
        tf.shape(image)[1])
    ops, negates = rand_augment_choice(seed, num_ops)
    for i in range(num_ops):
        value = tf.gather(magnitudes, ops[i])
        value = tf.where(negates[i] & _signed(ops[i]), -value, value)
        image = apply_op(image, ops[i], value, interpolation, fill)
    return image


def rand_augment_choice(seed, num_ops: int = 2):
    """What RandAugment draws for ``seed``: ``num_ops`` op indices into OPS
    (uniform, with replacement) and whether each signed op's magnitude is
    negated (int32 and bool ``[num_ops]``)."""
    op_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    ops = tf.random.stateless_uniform([num_ops], op_seed, 0, len(OPS),
                                      tf.int32)
    negates = tf.random.stateless_uniform([num_ops], sign_seed, 0, 2,
                                          tf.int32) == 1
    return ops, negates


# ---------------------------------------------------------------------------
# RandomErasing (after normalization, on float images).

def random_erasing(image, seed, p: float = 0.1,
                   scale: Sequence[float] = (0.02, 0.33),
                   ratio: Sequence[float] = (0.3, 3.3),
                   value: Union[float, Sequence[float]] = 0.0):
    """torchvision's ``RandomErasing`` on an HWC float image: with
    probability ``p``, up to 10 draws of an area fraction in ``scale`` and a
    log-uniform aspect ratio in ``ratio``; the first rectangle that fits
    (height and width under the image's) is set to ``value`` at a uniform
    position. If none fits, the image is returned unchanged."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if scale[0] > scale[1] or ratio[0] > ratio[1]:
        raise ValueError(f"scale and ratio must be (min, max), got {scale!r} "
                         f"and {ratio!r}")
    apply_seed, area_seed, ratio_seed, row_seed, col_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5))
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    area = tf.cast(height * width, _F32)
    erase_area = area * tf.random.stateless_uniform(
        [10], area_seed, scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform(
        [10], ratio_seed, math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    # Python's round, as torchvision: halves to even.
    h = tf.cast(tf.round(tf.sqrt(erase_area * aspect)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(erase_area / aspect)), tf.int32)
    fits = (h < height) & (w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    h, w = h[first], w[first]
    top = _uniform_int(row_seed, height - h + 1)
    left = _uniform_int(col_seed, width - w + 1)
    rows, cols = tf.range(height), tf.range(width)
    box = (((rows >= top) & (rows < top + h))[:, None, None]
           & ((cols >= left) & (cols < left + w))[None, :, None])
    erase = (tf.random.stateless_uniform([], apply_seed) < p) & tf.reduce_any(
        fits)
    fill = tf.cast(tf.constant(value, _F32), image.dtype)
    return tf.where(box & erase, fill + tf.zeros_like(image), image)


def _uniform_int(seed, maxval) -> tf.Tensor:
    """Uniform in ``[0, maxval)``; ``maxval`` is at least 1 here."""
    return tf.random.stateless_uniform([], seed, 0, tf.maximum(maxval, 1),
                                       tf.int32)


# ---------------------------------------------------------------------------

def augment_fn(name: str, **kw) -> Callable:
    """The per-image augmentation called ``name``, as ``fn(image, seed)``
    on uint8 HWC images: ``""`` (none), ``"ta_wide"``
    (:func:`trivial_augment_wide`) or ``"ra"`` (:func:`rand_augment`);
    ``kw`` are that function's options (ignored for ``""``)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation {name!r} is not one of "
                         f"{AUGMENTATIONS}")
    if name == "":
        return lambda image, seed: image
    fn = trivial_augment_wide if name == "ta_wide" else rand_augment
    # Unknown or misspelt options fail here, not inside tf.data.
    inspect.signature(fn).bind(None, None, **kw)
    if "interpolation" in kw:
        _check_interpolation(kw["interpolation"])
    return lambda image, seed: fn(image, seed, **kw)
