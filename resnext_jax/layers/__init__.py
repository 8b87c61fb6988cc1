"""Layers: the grouped convolution and its lowerings, BatchNorm, pooling,
and the factory through which a model builds them."""

from resnext_jax.layers.batchnorm import BN_IMPLS, BatchNorm
from resnext_jax.layers.conv import (CONV_IMPLS, GroupedConv, grouped_conv,
                                     max_pool, resolve_conv_impl)
from resnext_jax.layers.factory import LayerFactory

__all__ = ("BN_IMPLS", "BatchNorm", "CONV_IMPLS", "GroupedConv",
           "LayerFactory", "grouped_conv", "max_pool", "resolve_conv_impl")
