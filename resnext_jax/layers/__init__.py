"""Layers: the grouped convolution and its lowerings, BatchNorm, pooling."""

from resnext_jax.layers.batchnorm import BN_IMPLS, BatchNorm
from resnext_jax.layers.conv import (CONV_IMPLS, GroupedConv, grouped_conv,
                                     max_pool, resolve_conv_impl)

__all__ = ("BN_IMPLS", "BatchNorm", "CONV_IMPLS", "GroupedConv",
           "grouped_conv", "max_pool", "resolve_conv_impl")
