"""BatchNorm with the following ReLU (and residual add) fused, for training.

`BatchNorm` is ``flax.linen.BatchNorm`` over the last axis with the
same parameters (``scale``, ``bias``), batch statistics (``mean``, ``var``),
momentum, epsilon, dtype rules and cross-replica statistics (``axis_name``),
so checkpoints and weight conversion do not depend on which one a model uses.
It can also apply, in the same pass, an optional residual add and a ReLU:

    out = relu(bn(x) + residual)

What it changes is how the training-mode gradient is computed. The batch
statistics are computed as flax computes them (one fused pass for the mean
and the mean of squares, one ``pmean`` across replicas), so JAX's own
autodiff handles the collectives. The normalization, the add and the ReLU
are one function with a hand-written VJP (``jax.custom_vjp``): it keeps only
the input as a residual and recomputes the ReLU mask, and its backward is
the standard two reductions (``sum(g)``, ``sum(g * (x - mean))``) and one
elementwise pass. Left to autodiff, XLA:CPU materializes the ReLU mask, the
masked cotangent and the centered input, and reads each again.

``impl`` picks the lowering like the convolutions' ``conv_impl``: ``"auto"``
compiles the fused VJP on CPU and flax's formula elsewhere (through
`resnext_jax.layers.platform_choice.choose_with_vjp`); ``"fused"`` and
``"flax"`` force one. Both compute the same function.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnext_jax.layers import platform_choice

BN_IMPLS = ("auto", "fused", "flax")
# What "auto" compiles to per platform: the fused VJP is measured faster on
# XLA:CPU (benchmarks/bench_cpu.py --parts components); other platforms keep the formula
# whose speed was measured there.
AUTO_BN = {"cpu": "fused"}
_AUTO_BN_DEFAULT = "flax"


def check_bn_impl(impl: str) -> str:
    """Returns ``impl`` if it names a BatchNorm lowering, else raises."""
    if impl not in BN_IMPLS:
        raise ValueError(f"bn_impl={impl!r} is not a BatchNorm lowering; "
                         f"choose one of {BN_IMPLS}.")
    return impl


def bn_impl_for(conv_impl: str) -> str:
    """The BatchNorm lowering that goes with a convolution lowering: the
    fused VJP with the CPU's ``dense`` and ``onednn``, flax's formula with
    XLA's native convolutions, and each platform's own under ``auto``."""
    return {"auto": "auto", "dense": "fused", "onednn": "fused"}.get(
        conv_impl, "flax")


def _check_activation(activation):
    if activation not in (None, "relu"):
        raise ValueError(f"activation={activation!r} is not supported; "
                         "choose None or 'relu'.")


def _normalize(x, mean, var, scale, bias, residual, *, epsilon, relu,
               dtype):
    """flax's ``_normalize`` (same operations, same order), then the add and
    the ReLU as ``nn.relu(bn(x) + residual)`` computes them."""
    y = x - mean
    mul = lax.rsqrt(var + epsilon)
    mul = mul * scale
    y = y * mul
    y = y + bias
    y = y.astype(dtype)
    if residual is not None:
        y = y + residual
    return jnp.maximum(y, 0) if relu else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _fused_normalize(x, mean, var, scale, bias, residual, epsilon, relu,
                     dtype):
    return _normalize(x, mean, var, scale, bias, residual, epsilon=epsilon,
                      relu=relu, dtype=dtype)


def _fused_fwd(x, mean, var, scale, bias, residual, epsilon, relu, dtype):
    out = _normalize(x, mean, var, scale, bias, residual, epsilon=epsilon,
                     relu=relu, dtype=dtype)
    # Only the input (and the residual, for the mask) is kept: the centered
    # input and the mask are cheaper to recompute than to store and reload.
    return out, (x, mean, var, scale, bias, residual)


def _fused_bwd(epsilon, relu, dtype, saved, g):
    x, mean, var, scale, bias, residual = saved
    axes = tuple(range(x.ndim - 1))
    if relu:
        out = _normalize(x, mean, var, scale, bias, residual, epsilon=epsilon,
                         relu=False, dtype=dtype)
        g = jnp.where(out > 0, g, jnp.zeros_like(g))
    d_residual = None if residual is None else g.astype(residual.dtype)
    g = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    centered = x - mean
    inv = lax.rsqrt(var + epsilon)
    mul = inv * scale
    # The two reductions of the backward, over the same two inputs.
    sum_g = jnp.sum(g, axes)
    sum_g_centered = jnp.sum(g * centered, axes)
    dx = (g * mul).astype(x.dtype)
    d_mean = -mul * sum_g
    d_var = -0.5 * sum_g_centered * scale * inv * inv * inv
    d_scale = sum_g_centered * inv
    d_bias = sum_g
    return (dx, d_mean.astype(mean.dtype), d_var.astype(var.dtype),
            d_scale.astype(scale.dtype), d_bias.astype(bias.dtype),
            d_residual)


_fused_normalize.defvjp(_fused_fwd, _fused_bwd)


def _batch_stats(x, dtype, axis_name):
    """flax's ``_compute_stats`` (fast variance, float32 at least)."""
    stat_dtype = jnp.promote_types(dtype or x.dtype, jnp.float32)
    x = x.astype(stat_dtype)
    axes = tuple(range(x.ndim - 1))
    mean, mean2 = x.mean(axes), lax.square(x).mean(axes)
    if axis_name is not None:
        mean, mean2 = lax.pmean(jnp.stack([mean, mean2]), axis_name)
    return mean, jnp.maximum(0.0, mean2 - lax.square(mean))


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` on the last axis, optionally followed by a
    residual add and a ReLU in the same fused op.

    Attributes are flax's (``use_running_average``, ``momentum``,
    ``epsilon``, ``dtype``, ``param_dtype``, ``axis_name``, ``scale_init``,
    ``bias_init``), plus ``activation`` (None or ``"relu"``) and ``impl``
    (one of `BN_IMPLS`).
    """

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    scale_init: Callable = nn.initializers.ones_init()
    bias_init: Callable = nn.initializers.zeros_init()
    activation: str | None = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *,
                 residual: jax.Array | None = None):
        check_bn_impl(self.impl)
        _check_activation(self.activation)
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average,
            use_running_average)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean",
                                lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var",
                               lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", self.scale_init, features,
                           self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        # flax's output dtype: the given dtype, else promoted from the inputs.
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        if residual is not None and residual.shape != x.shape[:-1] + features:
            raise ValueError(f"residual shape {residual.shape} differs from "
                             f"the input's {x.shape}.")

        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axis_name = None if self.is_initializing() else self.axis_name
            mean, var = _batch_stats(x, self.dtype, axis_name)
            if not self.is_initializing():
                ra_mean.value = (self.momentum * ra_mean.value
                                 + (1 - self.momentum) * mean)
                ra_var.value = (self.momentum * ra_var.value
                                + (1 - self.momentum) * var)

        relu = self.activation == "relu"
        kwargs = dict(epsilon=self.epsilon, relu=relu, dtype=dtype)

        def flax_formula(x, mean, var, scale, bias, residual):
            return _normalize(x, mean, var, scale, bias, residual, **kwargs)

        def fused(x, mean, var, scale, bias, residual):
            return _fused_normalize(x, mean, var, scale, bias, residual,
                                    self.epsilon, relu, dtype)

        args = (x, mean, var, scale, bias, residual)
        if use_running_average or self.impl == "flax":
            # Inference needs no backward; one formula everywhere.
            return flax_formula(*args)
        if self.impl == "fused":
            return fused(*args)
        # Both lowerings compute the same forward; only the backward differs,
        # and the platform's is picked when the program is lowered.
        lowerings = {"fused": fused, "flax": flax_formula}
        if residual is None:
            lowerings = {name: functools.partial(f, residual=None)
                         for name, f in lowerings.items()}
            args = args[:-1]
        return platform_choice.choose_with_vjp(
            {p: lowerings[i] for p, i in AUTO_BN.items()},
            lowerings[_AUTO_BN_DEFAULT], *args)
