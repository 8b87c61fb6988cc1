"""How a model builds its convolutions and BatchNorms, as one value.

A block needs to know the precision, the grouped-convolution lowering and
BatchNorm's constants of its model, but none of them changes what it
computes. `LayerFactory` holds them, checked once, and builds the
layers; a block takes one ``layers`` field instead of seven (flax's ImageNet
example passes ``conv`` and ``norm`` partials the same way).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnext_jax.layers.batchnorm import BatchNorm, bn_impl_for
from resnext_jax.layers.conv import GroupedConv, check_conv_impl

# torchvision's conv init: kaiming normal, fan_out, ReLU gain.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def check_float_dtype(field: str, dtype: Any) -> None:
    """A computation or parameter dtype must be a floating type: integer
    weights and activations give all-zero logits, not an error."""
    try:
        kind = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"{field} (={dtype!r}) is not a dtype; use a "
                         "floating type, e.g. 'float32' or 'bfloat16'."
                         ) from None
    if not jnp.issubdtype(kind, jnp.floating):
        raise ValueError(f"{field} (={dtype!r}) must be a floating type "
                         "(float32, bfloat16, float16): the network's "
                         "weights and activations are real numbers.")


def check_batchnorm_constants(momentum: float, epsilon: float) -> None:
    """BatchNorm's running-average momentum in [0, 1] and a positive
    epsilon; a negative epsilon makes NaN of a zero variance."""
    for field, value in (("bn_momentum", momentum), ("bn_epsilon", epsilon)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
                not math.isfinite(value)):
            raise ValueError(f"{field} (={value!r}) must be a finite number.")
    if not 0 <= momentum <= 1:
        raise ValueError(f"bn_momentum (={momentum!r}) must be in [0, 1]: "
                         "the weight of the running average (torch's 0.1 "
                         "is 0.9 here; 1 freezes the statistics).")
    if epsilon <= 0:
        raise ValueError(f"bn_epsilon (={epsilon!r}) must be positive: it "
                         "keeps the normalization finite at zero variance.")


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Builds a model's convolutions (`GroupedConv`, no bias,
    torchvision's init) and BatchNorms (with the ReLU and residual add that
    follow them fused in).

    Attributes:
      conv_impl: the grouped-convolution lowering (``rx.layers.CONV_IMPLS``);
        BatchNorm's lowering follows it.
      dtype: computation dtype; param_dtype: parameter dtype.
      bn_momentum, bn_epsilon: BatchNorm's constants (torch's momentum 0.1
        is 0.9 here).
      axis_name: the mapped axis BatchNorm averages batch statistics over.
    """

    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    axis_name: str | None = None

    def __post_init__(self):
        check_conv_impl(self.conv_impl)
        check_float_dtype("dtype", self.dtype)
        check_float_dtype("param_dtype", self.param_dtype)
        check_batchnorm_constants(self.bn_momentum, self.bn_epsilon)

    def conv(self, features: int, kernel_size: int, strides: int = 1,
             groups: int = 1, dilation: int = 1, *, use_bias: bool = False,
             name: str | None = None) -> GroupedConv:
        """A square convolution with torchvision's symmetric padding, which
        keeps the size of a (dilated) stride-1 map."""
        pad = (kernel_size - 1) // 2 * dilation
        return GroupedConv(
            features, (kernel_size, kernel_size), strides=(strides, strides),
            padding=((pad, pad), (pad, pad)), feature_group_count=groups,
            use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=conv_kernel_init, impl=self.conv_impl,
            kernel_dilation=dilation, name=name)

    def norm(self, train: bool, name: str, *, zero_scale: bool = False,
             activation: str | None = None) -> BatchNorm:
        """BatchNorm in training (batch statistics) or eval mode; its scale
        starts at zero with ``zero_scale``."""
        return BatchNorm(
            use_running_average=not train, momentum=self.bn_momentum,
            epsilon=self.bn_epsilon, dtype=self.dtype,
            param_dtype=self.param_dtype, axis_name=self.axis_name,
            scale_init=(nn.initializers.zeros_init() if zero_scale
                        else nn.initializers.ones_init()),
            activation=activation, impl=bn_impl_for(self.conv_impl),
            name=name)
