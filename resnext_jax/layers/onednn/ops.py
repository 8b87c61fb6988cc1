"""The oneDNN grouped convolution as jax operations.

Three primitives: the convolution, its input gradient and its kernel
gradient, tied together by a ``jax.custom_vjp`` (`grouped_conv`). The choice
between the kernel and the portable lowering is made when a program is
lowered, by each primitive's lowering rule, not when it is traced:

* on CPU, a call of the kernel's FFI target (``grouped_conv.cc``), built and
  loaded on first use (`resnext_jax.layers.onednn.build`);
* on CPU where the kernel cannot be had (no oneDNN, no compiler, a
  configuration oneDNN refuses), the ``dense`` lowering's computation, with
  one logged line saying why;
* for ``jax.export`` (``resnext_jax.inference.export`` and any direct use),
  always the portable computation: an exported program must run where this
  shared library does not exist;
* on any other platform, XLA's native grouped convolution.

So a program traced with the kernel stays portable, and nothing is built
unless a CPU program is compiled.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from resnext_jax.layers import platform_choice
from resnext_jax.layers.onednn import build

logger = logging.getLogger(__name__)

FORWARD, INPUT_GRAD, KERNEL_GRAD = 0, 1, 2
_TARGETS = {FORWARD: "resnext_onednn_conv_fwd",
            INPUT_GRAD: "resnext_onednn_conv_bwd_data",
            KERNEL_GRAD: "resnext_onednn_conv_bwd_weights"}
_NAMES = {FORWARD: "convolution", INPUT_GRAD: "input gradient",
          KERNEL_GRAD: "kernel gradient"}
# What the kernel is offered for, as (window, strides, padding): ResNeXt's
# (and ResNet's) 3x3 convolutions, the 7x7 stem, and the 1x1s. The C++
# handles any window, stride and padding; these are the ones the tests
# cover.
CONFIGURATIONS = (
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((3, 3), (2, 2), ((1, 1), (1, 1))),
    ((7, 7), (2, 2), ((3, 3), (3, 3))),
    ((1, 1), (1, 1), ((0, 0), (0, 0))),
    ((1, 1), (2, 2), ((0, 0), (0, 0))),
)
# A 1x1 convolution is oneDNN's from this many output pixels over the
# batch (the rows of its GEMM) up; below, XLA's GEMM was as fast or faster
# (benchmarks/bench_pointwise.py, docs/performance.md).
POINTWISE_MIN_ROWS = 4096
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

_logged: set[str] = set()


def _log_fallback(reason: str) -> None:
    """One warning per reason and process."""
    if reason not in _logged:
        _logged.add(reason)
        logger.warning(
            "resnext_jax: the oneDNN grouped convolution is not used: %s. "
            "Running the portable lowering ('dense' on CPU) instead.",
            reason)


def explicit_padding(x_shape, window, strides, padding):
    """``padding`` ("SAME", "VALID" or pairs) as ``((top, bottom), (left,
    right))``."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(tuple(x_shape[1:3]), tuple(window),
                                      tuple(strides), padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def applies(x, kernel, strides: Sequence[int], padding, groups: int,
            dilation: int = 1) -> bool:
    """Whether the kernel is offered for this convolution (NHWC ``x``, HWIO
    ``kernel``): a 3x3 window at strides 1 or 2 with padding 1 on every
    side, the 7x7 stem (stride 2, padding 3), or a 1x1 window at strides 1
    or 2 without padding and with at least `POINTWISE_MIN_ROWS` output
    pixels over the batch; no dilation; float32 or bfloat16 operands of one
    type. Anything else stays on the portable lowering."""
    if not (x.ndim == 4 and kernel.ndim == 4 and dilation == 1
            and jnp.dtype(x.dtype) in DTYPES and x.dtype == kernel.dtype
            and groups >= 1 and x.shape[3] == kernel.shape[2] * groups
            and kernel.shape[3] % groups == 0):
        return False
    window, strides = tuple(kernel.shape[:2]), tuple(strides)
    if window == (1, 1) and not _has_rows(x.shape, strides,
                                          POINTWISE_MIN_ROWS):
        return False
    return (window, strides, explicit_padding(x.shape, window, strides,
                                              padding)) in CONFIGURATIONS


def _has_rows(x_shape, strides, rows: int) -> bool:
    """Whether a 1x1 convolution of NHWC ``x_shape`` has at least ``rows``
    output pixels over the batch; False for a symbolic shape (an export
    with a polymorphic batch), which never runs the kernel."""
    n, h, w = x_shape[:3]
    if not all(isinstance(d, int) for d in (n, h, w)):
        return False
    return n * -(-h // strides[0]) * -(-w // strides[1]) >= rows


def _output_shape(x_shape, kernel_shape, strides, padding):
    n, h, w, _ = x_shape
    kh, kw, _, o = kernel_shape
    (pt, pb), (pl, pr) = padding
    return (n, (h + pt + pb - kh) // strides[0] + 1,
            (w + pl + pr - kw) // strides[1] + 1, o)


# ---------------------------------------------------------------------------
# The portable computations: what each primitive computes, in jax.

def _portable(kind, lowering, *operands, strides, padding, groups,
              shape=None):
    """Primitive ``kind`` computed by the ``dense`` or ``xla`` lowering
    (``resnext_jax.layers.conv``); ``shape``: the input's (input gradient)
    or the kernel's (kernel gradient)."""
    # Imported here: resnext_jax.layers.conv imports this module.
    # pylint: disable=import-outside-toplevel,protected-access
    from resnext_jax.layers import conv
    base = conv._dense_conv if lowering == "dense" else conv._conv
    fn = functools.partial(base, strides=strides, padding=padding,
                           groups=groups)
    if kind == FORWARD:
        x, kernel = operands
        return fn(x, kernel)
    if kind == INPUT_GRAD:
        dy, kernel = operands
        _, pullback = jax.vjp(lambda x: fn(x, kernel),
                              jnp.zeros(shape, dy.dtype))
        return pullback(dy)[0]
    x, dy = operands
    _, pullback = jax.vjp(lambda kernel: fn(x, kernel),
                          jnp.zeros(shape, x.dtype))
    return pullback(dy)[0]


def _portable_any_platform(kind, *operands, **params):
    """`_portable`, ``dense`` on CPU and ``xla`` elsewhere, chosen when
    lowered (for vmap, which has no platform yet)."""
    return platform_choice.choose(
        {"cpu": functools.partial(_portable, kind, "dense", **params)},
        functools.partial(_portable, kind, "xla", **params), *operands)


# ---------------------------------------------------------------------------
# The primitives.

def _abstract_eval(kind):
    def abstract_eval(a, b, *, strides, padding, groups, shape=None):
        del groups  # Every operand has one dtype; see `applies`.
        if kind == FORWARD:
            out = _output_shape(a.shape, b.shape, strides, padding)
        else:
            out = shape
        return jax.core.ShapedArray(out, a.dtype)
    return abstract_eval


@functools.lru_cache(maxsize=None)
def _jitted(primitive, params):
    return jax.jit(lambda *args: primitive.bind(*args, **dict(params)))


def _impl(primitive):
    """Outside ``jit``: the primitive compiled alone."""
    def impl(*args, **params):
        return _jitted(primitive, tuple(sorted(params.items())))(*args)
    return impl


def _kernel_refuses(kind, ctx, params) -> str | None:
    """Why this primitive cannot be the kernel's call here, else None."""
    try:
        kernel = build.load()
    except build.KernelUnavailable as err:
        return str(err)
    if kind == FORWARD:
        x, w = ctx.avals_in[0], ctx.avals_in[1]
        y = ctx.avals_out[0]
    elif kind == INPUT_GRAD:
        y, w = ctx.avals_in
        x = ctx.avals_out[0]
    else:
        x, y = ctx.avals_in
        w = ctx.avals_out[0]
    shapes = (*x.shape, *y.shape[1:3], w.shape[3], *w.shape[:2])
    if not all(isinstance(d, (int, np.integer)) for d in shapes):
        return "symbolic shapes"
    (pt, pb), (pl, pr) = params["padding"]
    dims = tuple(int(d) for d in (*shapes, params["groups"],
                                  *params["strides"], pt, pb, pl, pr))
    ok, message = kernel.probe(kind, bool(x.dtype == jnp.bfloat16), dims)
    if not ok:
        return (f"oneDNN refuses the {_NAMES[kind]} of {x.dtype} "
                f"{tuple(x.shape)} with kernel {tuple(w.shape)}, groups "
                f"{params['groups']}, strides {params['strides']}: {message}")
    return None


def _ffi_attributes(params):
    (sh, sw), ((pt, pb), (pl, pr)) = params["strides"], params["padding"]
    return {name: np.int64(value) for name, value in (
        ("stride_h", sh), ("stride_w", sw), ("pad_top", pt),
        ("pad_bottom", pb), ("pad_left", pl), ("pad_right", pr),
        ("groups", params["groups"]))}


def _for_export(ctx) -> bool:
    """Whether ``jax.export`` is lowering this program (it sets
    ``LoweringParameters.for_export``). Should a later jax drop the flag,
    an export holding the kernel's call is still refused by jax.export
    itself (a custom call without compatibility guarantees), and
    tests/test_onednn_conv.py fails."""
    parameters = getattr(ctx.module_context, "lowering_parameters", None)
    return bool(getattr(parameters, "for_export", False))


def _cpu_lowering(kind):
    portable = mlir.lower_fun(functools.partial(_portable, kind, "dense"),
                              multiple_results=False)
    call = jax.ffi.ffi_lowering(_TARGETS[kind])

    def lowering(ctx, *operands, **params):
        if _for_export(ctx):
            return portable(ctx, *operands, **params)
        reason = _kernel_refuses(kind, ctx, params)
        if reason is not None:
            _log_fallback(reason)
            return portable(ctx, *operands, **params)
        return call(ctx, *operands, **_ffi_attributes(params))
    return lowering


def _batching_rule(primitive, kind):
    def rule(axis_data, args, dims, **params):
        del axis_data
        a, b = args
        if dims[0] is None and dims[1] is None:
            return primitive.bind(a, b, **params), None
        if kind != KERNEL_GRAD and dims[1] is None:
            # Images batched, one kernel: more images in one call.
            a = jnp.moveaxis(a, dims[0], 0)
            m, n = a.shape[:2]
            a = a.reshape(m * n, *a.shape[2:])
            if kind == INPUT_GRAD:
                params = dict(params, shape=(m * n, *params["shape"][1:]))
            out = primitive.bind(a, b, **params)
            return out.reshape(m, n, *out.shape[1:]), 0
        fn = functools.partial(_portable_any_platform, kind, **params)
        return jax.vmap(fn, in_axes=dims)(a, b), 0
    return rule


def _primitive(name, kind):
    primitive = Primitive(name)
    primitive.def_impl(_impl(primitive))
    primitive.def_abstract_eval(_abstract_eval(kind))
    mlir.register_lowering(primitive, mlir.lower_fun(
        functools.partial(_portable, kind, "xla"), multiple_results=False))
    mlir.register_lowering(primitive, _cpu_lowering(kind), platform="cpu")
    batching.fancy_primitive_batchers[primitive] = _batching_rule(primitive,
                                                                  kind)
    return primitive


conv_p = _primitive("resnext_onednn_conv", FORWARD)
conv_input_grad_p = _primitive("resnext_onednn_conv_input_grad", INPUT_GRAD)
conv_kernel_grad_p = _primitive("resnext_onednn_conv_kernel_grad",
                                KERNEL_GRAD)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, padding, groups):
    return conv_p.bind(x, kernel, strides=strides, padding=padding,
                       groups=groups)


def _conv_fwd(x, kernel, strides, padding, groups):
    return _conv(x, kernel, strides, padding, groups), (x, kernel)


def _conv_bwd(strides, padding, groups, residuals, dy):
    x, kernel = residuals
    params = dict(strides=strides, padding=padding, groups=groups)
    dx = conv_input_grad_p.bind(dy, kernel, shape=x.shape, **params)
    dk = conv_kernel_grad_p.bind(x, dy, shape=kernel.shape, **params)
    return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def grouped_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                 padding, groups: int) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, strides, padding, ("NHWC",
    "HWIO", "NHWC"), feature_group_count=groups)`` on the oneDNN kernel
    where a CPU program is compiled (see the module's docstring), with its
    gradient on the kernel too. Offered where `applies`; differentiable once
    (reverse mode), as the convolutions of a train step need."""
    strides = tuple(int(s) for s in strides)
    padding = explicit_padding(x.shape, kernel.shape[:2], strides, padding)
    return _conv(x, kernel, strides, padding, int(groups))
