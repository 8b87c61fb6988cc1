"""A native grouped convolution for XLA:CPU: oneDNN through ``jax.ffi``.

The ``onednn`` lowering of `resnext_jax.layers.grouped_conv` runs the
grouped (and plain) 3x3 convolutions of a model, the 7x7 stem and the
larger 1x1s (`ops.applies`), forward, input gradient and kernel gradient,
on oneDNN, the library PyTorch itself uses on CPU, and everything else as
the ``dense`` lowering does. It needs the
``resnext_jax[onednn]`` extra and a C++ compiler: the kernel is compiled on
first use into the user's cache (`build`). Where it cannot be had, or for
``jax.export``, the same program runs the portable lowering instead
(`ops`).
"""

from resnext_jax.layers.onednn.build import (KernelUnavailable, load,
                                             unavailable_reason)
from resnext_jax.layers.onednn.ops import (POINTWISE_MIN_ROWS, applies,
                                           grouped_conv)

__all__ = ("KernelUnavailable", "POINTWISE_MIN_ROWS", "applies",
           "grouped_conv", "load", "unavailable_reason")
