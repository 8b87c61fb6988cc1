"""Grouped convolution: one parameter layout, several lowerings.

The parameters are exactly those of ``flax.linen.Conv(feature_group_count=G)``:
one ``kernel`` of shape ``(kh, kw, in_features // G, features)`` (HWIO) and an
optional ``bias``. A checkpoint therefore never depends on which lowering runs
it; the lowering only decides how XLA is asked to compute the convolution.

Lowerings (see `CONV_IMPLS`); every one computes the same function:

* ``"xla"``: ``lax.conv_general_dilated(feature_group_count=G)``. XLA's native
  grouped kernels, the choice on GPU and TPU.
* ``"dense"``: only dense operations, which XLA:CPU runs with fast kernels.
  A 1x1 convolution becomes one matrix multiplication (XLA:CPU's convolution
  kernels are 4-7x slower than its GEMM for these, backward especially); a
  grouped KxK convolution becomes a few dense convolutions, each over a
  block-diagonal kernel covering a chunk of groups. XLA:CPU expands or
  crawls through grouped convolutions (30-170x slower than PyTorch), so this
  is far faster on CPU despite the zeros it multiplies. Where XLA:CPU's
  kernel gradient is slow (strided, or 64+ or at most 4 input channels per
  convolution), it is one batched GEMM over image patches instead.
* ``"onednn"``: ``dense``, except that the 3x3 convolutions with padding 1
  and strides 1 or 2 (every grouped convolution of a ResNeXt), the 7x7
  stem and the 1x1s of at least ``POINTWISE_MIN_ROWS`` output pixels
  (`resnext_jax.layers.onednn.applies`) are one native oneDNN call each,
  forward and backward (`resnext_jax.layers.onednn`; the
  ``resnext_jax[onednn]`` extra). Where the kernel cannot be had, and in
  ``jax.export``, those are ``dense``'s too (on other platforms, XLA's).
* ``"auto"``: one traced program that holds each platform's lowering
  (`AUTO_LOWERINGS`) behind ``jax.lax.platform_dependent``, in the
  forward and in the backward pass (`resnext_jax.layers.platform_choice`).
  The choice is made when the program is lowered for its target, not by
  the process that traces it: a CPU ``jit`` compiles only the ``dense``
  branch, and
  ``jax.export`` for ``cuda`` or ``tpu`` from a CPU host gets native grouped
  convolutions. Force one lowering per model with ``conv_impl=...``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnext_jax.layers import onednn, platform_choice

Padding = str | Sequence[tuple[int, int]]

CONV_IMPLS = ("auto", "xla", "dense", "onednn")

# What "auto" compiles to on each platform (jax.export's platform names);
# the measurements behind the choice are in docs/performance.md. The "cpu"
# entry is the switch for the oneDNN kernel: "onednn" makes auto use it where
# it is installed (and "dense" where not, with one logged line saying why).
AUTO_LOWERINGS = {"cpu": "onednn", "cuda": "xla", "rocm": "xla", "tpu": "xla"}
# Any other platform jax may add later.
_AUTO_DEFAULT = "xla"

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Input channels per dense chunk of the block-diagonal lowering.
_CHUNK_CHANNELS = 16


def check_conv_impl(impl: str) -> str:
    """Returns ``impl`` if it names a lowering, else raises ``ValueError``."""
    if impl not in CONV_IMPLS:
        raise ValueError(
            f"conv_impl={impl!r} is not a grouped-convolution lowering; "
            f"choose one of {CONV_IMPLS}.")
    return impl


def resolve_conv_impl(impl: str = "auto", platform: str | None = None) -> str:
    """The lowering that ``impl`` compiles to on ``platform``.

    ``platform`` is a jax platform name (``cpu``, ``cuda``, ``rocm``,
    ``tpu``; ``gpu`` means ``cuda``), by default that of jax's default
    backend. Only informative: a model with ``conv_impl="auto"`` carries
    every platform's lowering and the compiler picks.
    """
    check_conv_impl(impl)
    if impl != "auto":
        return impl
    platform = (platform or jax.default_backend()).lower()
    platform = {"gpu": "cuda"}.get(platform, platform)
    return AUTO_LOWERINGS.get(platform, _AUTO_DEFAULT)


def _per_platform(lowerings: dict[str, Callable], *args):
    """``lowerings[AUTO_LOWERINGS[platform]](*args)``, chosen when the
    program is lowered for its platform, differentiable (see
    `platform_choice.choose_with_vjp`)."""
    return platform_choice.choose_with_vjp(
        {p: lowerings[impl] for p, impl in AUTO_LOWERINGS.items()},
        lowerings[_AUTO_DEFAULT], *args)


def _conv(x, kernel, strides, padding, groups=1):
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=padding,
        dimension_numbers=_DIMENSION_NUMBERS, feature_group_count=groups)


def block_diagonal_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """Expands a grouped HWIO kernel ``(h, w, cin/G, cout)`` to a dense one.

    The result has shape ``(h, w, cin, cout)`` and is zero outside the
    diagonal blocks, so a dense convolution with it equals the grouped one.
    """
    h, w, cin_g, cout = kernel.shape
    cout_g = cout // groups
    # (h, w, cin_g, G, cout_g) -> place block g at rows g*cin_g, cols g*cout_g.
    k = kernel.reshape(h, w, cin_g, groups, cout_g)
    eye = jnp.eye(groups, dtype=kernel.dtype)
    # dense[h, w, gi, i, go, o] = k[h, w, i, go, o] * (gi == go)
    dense = jnp.einsum("hwigo,Gg->hwGigo", k, eye)
    return dense.reshape(h, w, groups * cin_g, cout)


def default_chunk_groups(groups: int, cin_per_group: int,
                         cout_per_group: int) -> int:
    """How many groups one dense block-diagonal convolution should cover.

    A chunk of ``k`` groups multiplies ``k`` times the useful multiply-adds
    (the zeros off the diagonal), so small chunks waste little; but every
    chunk is a separate convolution, and XLA:CPU runs convolutions much
    narrower than ~16 channels poorly. Measured on ResNeXt-50's stage shapes
    (``benchmarks/bench_conv.py``), chunks of about 16 input channels are
    fastest forward and backward.
    """
    target = max(1, _CHUNK_CHANNELS // max(cin_per_group, 1))
    chunk = 1
    while chunk * 2 <= min(target, groups) and groups % (chunk * 2) == 0:
        chunk *= 2
    return chunk


def _is_pointwise(kernel, padding) -> bool:
    if kernel.shape[:2] != (1, 1):
        return False
    if isinstance(padding, str):
        return True  # SAME and VALID both add no padding to a 1x1 window.
    return all(lo == 0 and hi == 0 for lo, hi in padding)


def _pointwise_matmul(x, kernel, strides):
    """A 1x1 convolution as one 2-D GEMM over all pixels."""
    sh, sw = strides
    if (sh, sw) != (1, 1):
        x = x[:, ::sh, ::sw, :]
    n, h, w, c = x.shape
    y = lax.dot_general(x.reshape(n * h * w, c), kernel[0, 0],
                        (((1,), (0,)), ((), ())))
    return y.reshape(n, h, w, kernel.shape[-1])


def _blockdiag_conv(x, kernel, strides, padding, groups, chunk_groups=None):
    """Dense convolutions, one per chunk of ``chunk_groups`` groups over a
    block-diagonal kernel; one plain convolution for ``groups == 1``."""
    if groups == 1:
        return _conv(x, kernel, strides, padding)
    h, w, cin_g, cout = kernel.shape
    cout_g = cout // groups
    if chunk_groups is None:
        chunk_groups = default_chunk_groups(groups, cin_g, cout_g)
    if groups % chunk_groups:
        raise ValueError(
            f"chunk_groups={chunk_groups} must divide groups={groups}.")
    num_chunks = groups // chunk_groups
    if num_chunks == 1:
        return _conv(x, block_diagonal_kernel(kernel, groups), strides,
                     padding)
    # One dense convolution per chunk, each over a block-diagonal kernel of
    # `chunk_groups` groups; the chunk outputs are concatenated in order.
    k = kernel.reshape(h, w, cin_g, num_chunks, chunk_groups * cout_g)
    k = jnp.moveaxis(k, 3, 0)  # (chunks, h, w, cin_g, chunk_groups*cout_g)
    dense = jax.vmap(lambda kc: block_diagonal_kernel(kc, chunk_groups))(k)
    # dense: (chunks, h, w, chunk_groups*cin_g, chunk_groups*cout_g)
    parts = [
        _conv(x[..., c * chunk_groups * cin_g:(c + 1) * chunk_groups * cin_g],
              dense[c], strides, padding)
        for c in range(num_chunks)
    ]
    return jnp.concatenate(parts, axis=-1)


def _dense_conv(x, kernel, strides, padding, groups, chunk_groups=None):
    """The ``dense`` lowering: GEMMs and dense convolutions only."""
    if groups == 1 and _is_pointwise(kernel, padding):
        return _pointwise_matmul(x, kernel, strides)
    _, _, cin_g, cout = kernel.shape
    if chunk_groups is None:
        chunk_groups = default_chunk_groups(groups, cin_g, cout // groups)
    if _patches_kernel_grad_is_faster(chunk_groups * cin_g, strides):
        return _conv_patches_kernel_grad(x, kernel, strides, padding, groups,
                                         chunk_groups)
    return _blockdiag_conv(x, kernel, strides, padding, groups, chunk_groups)


# XLA:CPU's kernel gradient of a dense convolution is fast only for narrow
# inputs at stride 1. Measured (benchmarks/bench_kernel_grad.py, batch 16,
# 3x3): a GEMM over image patches is 1.4-6.9x faster with 64 or more input
# channels per convolution (ResNet-50's 3x3s, ResNeXt-29's 64-256 channel
# groups), 0.9-1.8x for strided ones, about 6x for an image's 3 channels
# (the stems), and 1.4-2x slower for ResNeXt-50's 16-32 channel chunks at
# stride 1, which keep XLA's.
_PATCHES_MAX_CHANNELS = 4
_PATCHES_MIN_CHANNELS = 64
# Patches beyond this size are built a few chunks at a time, in a loop, to
# bound the extra memory of the backward pass (unrolled, XLA held all 8
# chunks' of a ResNeXt-29 8x64d convolution at batch 64 at once, 1.2 GB).
_PATCHES_MAX_BYTES = 64 * 2**20


def _patches_kernel_grad_is_faster(chunk_channels: int, strides) -> bool:
    return (tuple(strides) != (1, 1) or chunk_channels <= _PATCHES_MAX_CHANNELS
            or chunk_channels >= _PATCHES_MIN_CHANNELS)


def _explicit_padding(x, window, strides, padding):
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(x.shape[1:3], window, strides,
                                         padding))
    return padding


def image_patches(x, window, strides, padding):
    """``(N, Ho, Wo, kh * kw * C)`` patches of NHWC ``x``, features in HWIO
    order (row, column, channel), so ``patches @ kernel.reshape(-1, O)`` is
    the convolution.

    Built in two passes of wide copies: the ``kw`` column taps side by side
    (runs of ``kw * C`` values), then the ``kh`` rows of those. The direct
    ``kh * kw`` taps would copy ``C`` values (3 for an image) at a time,
    about 2.5x slower on CPU; XLA's ``conv_general_dilated_patches`` is a
    convolution and slower still.
    """
    kh, kw = window
    sh, sw = strides
    padding = _explicit_padding(x, window, strides, padding)
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    n, h, w, c = xp.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    columns = jnp.concatenate(
        [lax.slice(xp, (0, 0, j, 0), (n, h, j + (wo - 1) * sw + 1, c),
                   (1, 1, sw, 1)) for j in range(kw)], axis=-1)
    return jnp.concatenate(
        [lax.slice(columns, (0, i, 0, 0),
                   (n, i + (ho - 1) * sh + 1, wo, kw * c), (1, sh, 1, 1))
         for i in range(kh)], axis=-1)


def _largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit``."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _chunk_patches_kernel_grad(x, dy, kernel_shape, strides, padding,
                               groups, chunk_groups):
    """The kernel gradient of `_blockdiag_conv` from image patches.

    For each chunk of ``chunk_groups`` groups, ``patches^T @ dy`` over every
    output pixel of the batch (one GEMM per chunk, in a loop over pieces of
    at most ``_PATCHES_MAX_BYTES`` of patches), of which the diagonal blocks
    are the groups' kernel gradients.
    """
    kh, kw, cin_g, cout = kernel_shape
    cout_g = cout // groups
    num_chunks = groups // chunk_groups
    chunk_in, chunk_out = chunk_groups * cin_g, chunk_groups * cout_g
    n, h, w, _ = x.shape
    _, ho, wo, _ = dy.shape
    per_image = ho * wo * kh * kw * chunk_in * x.dtype.itemsize
    # Pieces of `images` images of one chunk, or of `step` whole chunks.
    images = _largest_divisor(n, max(1, _PATCHES_MAX_BYTES // per_image))
    parts = n // images
    step = (1 if parts > 1 else
            max(1, min(num_chunks, _PATCHES_MAX_BYTES // (per_image * n))))
    # Chunk-major: (chunks * parts, images, H, W, chunk_in) and
    # (chunks * parts, pixels, out).
    x = jnp.moveaxis(x.reshape(n, h, w, num_chunks, chunk_in), 3, 0)
    x = x.reshape(num_chunks * parts, images, h, w, chunk_in)
    dy = jnp.moveaxis(dy.reshape(n, ho * wo, num_chunks, chunk_out), 2, 0)
    dy = dy.reshape(num_chunks * parts, images * ho * wo, chunk_out)

    def piece_grad(operands):
        x, dy = operands
        patches = image_patches(x, (kh, kw), strides, padding)
        return lax.dot_general(
            patches.reshape(images * ho * wo, kh * kw * chunk_in), dy,
            (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    # A loop over the pieces: XLA then holds one piece's patches at a time,
    # whatever its schedule.
    dk = lax.map(piece_grad, (x, dy), batch_size=step)
    dk = dk.reshape(num_chunks, parts, kh * kw * chunk_in, chunk_out).sum(1)
    # (chunks, kh, kw, group in, cin_g, group out, cout_g): keep gi == go.
    dk = dk.reshape(num_chunks, kh, kw, chunk_groups, cin_g, chunk_groups,
                    cout_g)
    dk = jnp.diagonal(dk, axis1=3, axis2=5)  # (..., cin_g, cout_g, group)
    dk = jnp.moveaxis(dk, -1, 3)  # (chunks, kh, kw, group, cin_g, cout_g)
    return dk.transpose(1, 2, 4, 0, 3, 5).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_patches_kernel_grad(x, kernel, strides, padding, groups,
                              chunk_groups):
    """`_blockdiag_conv` with the kernel gradient from image patches
    (`_chunk_patches_kernel_grad`); the input gradient is XLA's."""
    return _blockdiag_conv(x, kernel, strides, padding, groups, chunk_groups)


def _conv_patches_kernel_grad_fwd(x, kernel, strides, padding, groups,
                                  chunk_groups):
    out = _blockdiag_conv(x, kernel, strides, padding, groups, chunk_groups)
    return out, (x, kernel)


def _conv_patches_kernel_grad_bwd(strides, padding, groups, chunk_groups,
                                  residuals, dy):
    x, kernel = residuals
    # The input gradient (unused, and so removed by XLA, for an image).
    _, input_vjp = jax.vjp(lambda x: _blockdiag_conv(
        x, kernel, strides, padding, groups, chunk_groups), x)
    dx, = input_vjp(dy)
    dk = _chunk_patches_kernel_grad(x, dy, kernel.shape, strides, padding,
                                    groups, chunk_groups)
    return dx, dk.astype(kernel.dtype)


_conv_patches_kernel_grad.defvjp(_conv_patches_kernel_grad_fwd,
                                 _conv_patches_kernel_grad_bwd)


def _onednn_or_dense(x, kernel, strides, padding, groups, chunk_groups=None):
    """The ``onednn`` lowering: the kernel where it is offered
    (`onednn.applies`), the ``dense`` lowering elsewhere."""
    if onednn.applies(x, kernel, strides, padding, groups):
        return onednn.grouped_conv(x, kernel, strides, padding, groups)
    return _dense_conv(x, kernel, strides, padding, groups, chunk_groups)


def _hashable_padding(padding: Padding) -> Padding:
    if isinstance(padding, str):
        return padding
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def grouped_conv(x: jax.Array, kernel: jax.Array, *,
                 strides: Sequence[int] = (1, 1),
                 padding: Padding = "SAME", groups: int = 1,
                 impl: str = "auto",
                 chunk_groups: int | None = None) -> jax.Array:
    """NHWC x HWIO grouped convolution with a selectable lowering.

    Every lowering computes the same function as
    ``lax.conv_general_dilated(..., feature_group_count=groups)``.
    ``chunk_groups`` (groups per dense convolution) tunes the ``dense``
    lowering; by default it is `default_chunk_groups`.
    """
    check_conv_impl(impl)
    strides = tuple(strides)
    padding = _hashable_padding(padding)
    if groups == 1 and not _is_pointwise(kernel, padding):
        # A dense KxK convolution (the stems, ResNet's 3x3s): XLA's, with
        # the kernel gradient from patches on CPU where that is faster.
        lowerings = {name: functools.partial(_conv, strides=strides,
                                             padding=padding)
                     for name in CONV_IMPLS}
        lowerings["dense"] = functools.partial(
            _dense_conv, strides=strides, padding=padding, groups=1)
        lowerings["onednn"] = functools.partial(
            _onednn_or_dense, strides=strides, padding=padding, groups=1)
        if impl == "auto":
            return _per_platform(lowerings, x, kernel)
        return lowerings[impl](x, kernel)

    def xla(x, k):
        return _conv(x, k, strides, padding, groups)

    def dense(x, k):
        return _dense_conv(x, k, strides, padding, groups, chunk_groups)

    def onednn_or_dense(x, k):
        return _onednn_or_dense(x, k, strides, padding, groups, chunk_groups)

    lowerings = {"xla": xla, "dense": dense, "onednn": onednn_or_dense}
    if impl == "auto":
        return _per_platform(lowerings, x, kernel)
    return lowerings[impl](x, kernel)


def _reduce_window_max_pool(x, window, stride, padding):
    return nn.max_pool(x, (window, window), strides=(stride, stride),
                       padding=((padding, padding), (padding, padding)))


def _pool_taps(x, window, stride, padding):
    """The ``window**2`` strided slices of ``x`` padded with -inf, row by
    row: tap ``t`` holds each window's element ``t``."""
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                 constant_values=-jnp.inf)
    n, h, w, c = xp.shape
    ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
    return [lax.slice(xp, (0, i, j, 0),
                      (n, i + (ho - 1) * stride + 1,
                       j + (wo - 1) * stride + 1, c),
                      (1, stride, stride, 1))
            for i in range(window) for j in range(window)]


def _max_and_first_argmax(x, window, stride, padding):
    """Each window's maximum, and the tap that holds it first; a NaN wins
    (the last NaN of a window, as in PyTorch's CPU kernel)."""
    taps = _pool_taps(x, window, stride, padding)
    # The tap index in one byte per output: what the backward pass keeps
    # where it does not recompute the forward.
    index = jnp.int8 if len(taps) <= jnp.iinfo(jnp.int8).max else jnp.int32
    out, argmax = taps[0], jnp.zeros(taps[0].shape, index)
    for t, tap in enumerate(taps[1:], start=1):
        wins = (tap > out) | jnp.isnan(tap)
        out = jnp.where(wins, tap, out)
        argmax = jnp.where(wins, index(t), argmax)
    return out, argmax


def _sliced_max_pool(x, window, stride, padding):
    return _first_max_pool(x, window, stride, padding, x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _first_max_pool(x, window, stride, padding, shape):
    del shape  # The backward's, as a static value.
    return _max_and_first_argmax(x, window, stride, padding)[0]


def _first_max_pool_fwd(x, window, stride, padding, shape):
    del shape
    out, argmax = _max_and_first_argmax(x, window, stride, padding)
    return out, argmax


def _first_max_pool_bwd(window, stride, padding, shape, argmax, dy):
    # Each window's gradient goes to its first maximum, as PyTorch's: tap
    # t's share is spread back onto the padded grid by an interior padding
    # (one fused loop in XLA, with no scatter).
    n, h, w, c = shape
    hp, wp = h + 2 * padding, w + 2 * padding
    _, ho, wo, _ = dy.shape
    dxp = None
    for t in range(window * window):
        i, j = divmod(t, window)
        share = jnp.where(argmax == t, dy, jnp.zeros((), dy.dtype))
        spread = lax.pad(share, jnp.zeros((), dy.dtype), (
            (0, 0, 0),
            (i, hp - i - (ho - 1) * stride - 1, stride - 1),
            (j, wp - j - (wo - 1) * stride - 1, stride - 1),
            (0, 0, 0)))
        dxp = spread if dxp is None else dxp + spread
    dx = lax.slice(dxp, (0, padding, padding, 0),
                   (n, padding + h, padding + w, c))
    return (dx,)


_first_max_pool.defvjp(_first_max_pool_fwd, _first_max_pool_bwd)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2,
             padding: int = 1, impl: str = "auto") -> jax.Array:
    """Max-pool of NHWC ``x`` with symmetric -inf padding (torchvision's stem).

    With the ``dense`` (and ``onednn``) lowering it is the maximum of
    ``window**2`` strided slices, and its gradient goes to each window's
    first maximum through padded copies: XLA:CPU's reduce-window backward
    (select-and-scatter) is several times slower. The result and the
    gradient are PyTorch's ``max_pool2d``'s (and, NaNs aside, those of
    XLA's reduce-window, which the other lowerings use). Like the oneDNN
    kernel, this gradient is reverse mode only (``jax.grad``, ``jax.vjp``).
    """
    check_conv_impl(impl)
    native = functools.partial(_reduce_window_max_pool, window=window,
                               stride=stride, padding=padding)
    sliced = functools.partial(_sliced_max_pool, window=window,
                               stride=stride, padding=padding)
    lowerings = {impl: native for impl in CONV_IMPLS}
    lowerings["dense"] = lowerings["onednn"] = sliced
    if impl == "auto":
        return _per_platform(lowerings, x)
    return lowerings[impl](x)


class GroupedConv(nn.Module):
    """2-D convolution with ``feature_group_count`` and a choice of lowering.

    Drop-in for ``nn.Conv(features, kernel_size, feature_group_count=...)`` on
    NHWC inputs: same parameter names, shapes and initializers.

    Attributes:
      features: number of output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      padding: "SAME", "VALID" or explicit ``((top, bottom), (left, right))``.
      feature_group_count: number of groups; divides input and output width.
      use_bias: whether to add a bias.
      impl: lowering, one of `CONV_IMPLS`.
      kernel_dilation: spacing of the kernel's taps (atrous convolution, for
        ``output_stride`` below 32); a dilated convolution is XLA's own,
        whatever ``impl`` says.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Padding = "SAME"
    feature_group_count: int = 1
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    impl: str = "auto"
    kernel_dilation: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_conv_impl(self.impl)
        groups = self.feature_group_count
        in_features = x.shape[-1]
        if groups < 1:
            raise ValueError(
                f"feature_group_count (={groups}) must be a positive integer.")
        if in_features % groups or self.features % groups:
            raise ValueError(
                f"input channels (={in_features}) and features "
                f"(={self.features}) must both be divisible by "
                f"feature_group_count (={groups}).")
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", self.kernel_init,
            (kh, kw, in_features // groups, self.features), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x.dtype, kernel.dtype)
        x = x.astype(dtype)
        if self.kernel_dilation != 1:
            y = lax.conv_general_dilated(
                x, kernel.astype(dtype), window_strides=tuple(self.strides),
                padding=_hashable_padding(self.padding),
                rhs_dilation=(self.kernel_dilation,) * 2,
                dimension_numbers=_DIMENSION_NUMBERS,
                feature_group_count=groups)
        else:
            y = grouped_conv(x, kernel.astype(dtype), strides=self.strides,
                             padding=self.padding, groups=groups,
                             impl=self.impl)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,),
                              self.param_dtype)
            y = y + bias.astype(dtype)
        return y
