"""Grouped convolution: one parameter layout, several lowerings.

The parameters are exactly those of ``flax.linen.Conv(feature_group_count=G)``:
one ``kernel`` of shape ``(kh, kw, in_features // G, features)`` (HWIO) and an
optional ``bias``. A checkpoint therefore never depends on which lowering runs
it; the lowering only decides how XLA is asked to compute the convolution.

Lowerings (see :data:`CONV_IMPLS`):

* ``"xla"``: ``lax.conv_general_dilated(feature_group_count=G)``. The right
  choice on GPU and TPU, where XLA has native grouped kernels.
* ``"dense"``: only dense operations, which XLA:CPU runs with fast kernels.
  A 1x1 convolution becomes one matrix multiplication (XLA:CPU's convolution
  kernels are 4-7x slower than its GEMM for these, backward especially); a
  grouped KxK convolution becomes a few dense convolutions, each over a
  block-diagonal kernel covering a chunk of groups. XLA:CPU expands or
  crawls through grouped convolutions (30-170x slower than PyTorch), so this
  is far faster on CPU despite the zeros it multiplies.
* ``"auto"``: picks per platform at trace time (``dense`` on CPU, ``xla``
  elsewhere). Override for a whole process with the environment variable
  ``RESNEXT_JAX_CONV_IMPL`` or per model with ``conv_impl=...``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]

CONV_IMPLS = ("auto", "xla", "dense")
_ENV_VAR = "RESNEXT_JAX_CONV_IMPL"

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


def default_platform() -> str:
    """The platform that jit will compile for by default (cpu, gpu, tpu)."""
    return jax.default_backend()


def resolve_conv_impl(impl: str = "auto", platform: str | None = None) -> str:
    """Maps ``auto`` (and the environment override) to a concrete lowering."""
    check_conv_impl(impl)
    if impl == "auto":
        forced = os.environ.get(_ENV_VAR, "").strip()
        if forced:
            if forced not in CONV_IMPLS:
                raise ValueError(
                    f"{_ENV_VAR}={forced!r} is not a grouped-convolution "
                    f"lowering; choose one of {CONV_IMPLS}.")
            impl = forced
    if impl == "auto":
        platform = platform or default_platform()
        impl = "dense" if platform == "cpu" else "xla"
    return impl


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


def grouped_conv(x: jax.Array, kernel: jax.Array, *,
                 strides: Sequence[int] = (1, 1),
                 padding: Padding = "SAME", groups: int = 1,
                 impl: str = "auto",
                 chunk_groups: int | None = None) -> jax.Array:
    """NHWC x HWIO grouped convolution with a selectable lowering.

    Every lowering computes the same function as
    ``lax.conv_general_dilated(..., feature_group_count=groups)``.
    """
    strides = tuple(strides)
    impl = resolve_conv_impl(impl)
    if impl == "xla":
        return _conv(x, kernel, strides, padding, groups)
    if impl == "dense":
        if groups == 1 and _is_pointwise(kernel, padding):
            return _pointwise_matmul(x, kernel, strides)
        if groups == 1:
            return _conv(x, kernel, strides, padding)
        return _blockdiag_conv(x, kernel, strides, padding, groups,
                               chunk_groups)
    raise AssertionError(impl)  # resolve_conv_impl returned an unknown name.


def max_pool(x: jax.Array, window: int = 3, stride: int = 2,
             padding: int = 1, impl: str = "auto") -> jax.Array:
    """Max-pool of NHWC ``x`` with symmetric -inf padding (torchvision's stem).

    With the ``dense`` lowering it is the maximum of ``window**2`` strided
    slices: XLA:CPU's reduce-window backward (select-and-scatter) is about 4x
    slower than the backward of these elementwise maxima. Ties split the
    gradient instead of sending it all to the first maximum; both are valid
    subgradients, and the forward result is identical.
    """
    if resolve_conv_impl(impl) == "xla":
        return nn.max_pool(x, (window, window), strides=(stride, stride),
                           padding=((padding, padding), (padding, padding)))
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                 constant_values=-jnp.inf)
    n, h, w, c = xp.shape
    ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
    out = None
    for i in range(window):
        for j in range(window):
            tap = lax.slice(xp, (0, i, j, 0),
                            (n, i + (ho - 1) * stride + 1,
                             j + (wo - 1) * stride + 1, c),
                            (1, stride, stride, 1))
            out = tap if out is None else jnp.maximum(out, tap)
    return out


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
      impl: lowering, one of :data:`CONV_IMPLS`.
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
        y = grouped_conv(x, kernel.astype(dtype), strides=self.strides,
                         padding=self.padding, groups=groups, impl=self.impl)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,),
                              self.param_dtype)
            y = y + bias.astype(dtype)
        return y
