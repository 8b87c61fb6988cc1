"""The oneDNN grouped convolution (``conv_impl="onednn"``): the kernel
computes XLA's grouped convolution and its gradients; where it cannot be
had, the same program runs the portable lowering with one logged line;
exported programs never call it.

The kernel needs the ``[onednn]`` extra (which ``[dev]`` includes) and a C++
compiler; its wheels exist for Linux x86-64 only, the one place these tests
are skipped. The fallback tests run everywhere.
"""

import functools
import importlib.metadata
import logging
import os
import platform
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import resnext_jax as rx
from resnext_jax.inference import export
from resnext_jax.layers import conv as conv_lib
from resnext_jax.layers.onednn import build, ops
from resnext_jax.models.blocks import Bottleneck
from conftest import random_variables, randomize, small_cifar_model

WHEELS_EXIST = sys.platform.startswith("linux") and platform.machine() in (
    "x86_64", "AMD64")
KERNEL_CALL = re.compile(r"custom_call.{0,40}@?\"?resnext_onednn_conv")


@pytest.fixture(scope="module")
def kernel():
    if not WHEELS_EXIST:
        pytest.skip("oneDNN's CPU wheels (the [onednn] extra) exist for "
                    "Linux x86-64 only")
    try:
        return build.load()
    except build.KernelUnavailable as err:
        pytest.fail(f"the oneDNN kernel should build here (pip install -e "
                    f"'.[dev]' installs oneDNN): {err}")


@pytest.fixture
def missing_onednn(monkeypatch, tmp_path):
    """This process as if the [onednn] extra were not installed: no built
    kernel loaded, none in the cache, no oneDNN wheels."""
    real = importlib.metadata.distribution

    def distribution(name):
        if name in (build.LIBRARY_DIST, build.HEADERS_DIST):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.delenv(build.ROOT_ENV, raising=False)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(build, "_kernel", None)
    monkeypatch.setattr(build, "_failure", None)
    monkeypatch.setattr(ops, "_logged", set())


def _reference(x, kernel, strides, padding, groups):
    return lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, precision=lax.Precision.HIGHEST)


def _inputs(n, h, w, cin, cout, groups, dtype=jnp.float32, seed=0):
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (n, h, w, cin), jnp.float32)
    kernel = jax.random.normal(kk, (3, 3, cin // groups, cout),
                               jnp.float32) / np.sqrt(9 * cin / groups)
    return x.astype(dtype), kernel.astype(dtype), kg


def _value_and_grads(conv, x, kernel, cotangent_key):
    """(y, dx, dk) of ``conv`` under one jit, and the compiled HLO."""
    def run(x, kernel):
        y, pullback = jax.vjp(conv, x, kernel)
        cotangent = jax.random.normal(cotangent_key, y.shape).astype(
            y.dtype)
        return (y, *pullback(cotangent))
    jitted = jax.jit(run)
    return jitted(x, kernel), jitted.lower(x, kernel).as_text()


def _assert_close(got, want, tol):
    for a, r in zip(got, want):
        a, r = np.asarray(a, np.float32), np.asarray(r, np.float32)
        assert a.shape == r.shape
        np.testing.assert_allclose(a, r, rtol=0,
                                   atol=tol * max(np.abs(r).max(), 1.0))


# (batch, height, width, in, out, groups, stride): ResNeXt's cardinality 32
# and 64 at 2-4 channels a group, an odd batch (uneven pieces on XLA's
# threads), odd sizes at stride 2, out != in per group, one group, and
# a single image.
CASES = [
    (2, 8, 8, 64, 64, 32, 1),
    (3, 9, 7, 32, 64, 8, 2),
    (2, 10, 10, 128, 128, 32, 2),
    (4, 7, 7, 256, 256, 64, 1),
    (2, 5, 6, 24, 48, 3, 2),
    (2, 6, 6, 16, 16, 1, 1),
    (1, 6, 6, 32, 32, 4, 1),
]


@pytest.mark.parametrize("n, h, w", [(2, 20, 18), (1, 15, 16)])
def test_stem_matches_xla(kernel, n, h, w):
    """The 7x7 stem (3 channels in, stride 2, padding 3) runs the kernel's
    forward and kernel gradient; an image needs no input gradient, so the
    program has none."""
    del kernel
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(kx, (n, h, w, 3))
    k = jax.random.normal(kk, (7, 7, 3, 16)) / np.sqrt(147)
    padding = ((3, 3), (3, 3))

    def run(conv):
        def loss(k):
            y = conv(x, k)
            return jnp.sum(y * jax.random.normal(kg, y.shape)), y
        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    ours = run(lambda x, k: rx.layers.grouped_conv(
        x, k, strides=(2, 2), padding=padding, impl="onednn"))
    (_, y), dk = ours(k)
    (_, y_ref), dk_ref = run(lambda x, k: _reference(
        x, k, (2, 2), padding, 1))(k)
    assert len(KERNEL_CALL.findall(ours.lower(k).compile().as_text())) == 2
    _assert_close((y, dk), (y_ref, dk_ref), 1e-5)
    # With respect to the image as well (a saliency map): the kernel's
    # input gradient.
    got, hlo = _value_and_grads(lambda x, k: rx.layers.grouped_conv(
        x, k, strides=(2, 2), padding=padding, impl="onednn"), x, k, kg)
    assert len(KERNEL_CALL.findall(hlo)) == 3
    want, _ = _value_and_grads(lambda x, k: _reference(
        x, k, (2, 2), padding, 1), x, k, kg)
    _assert_close(got, want, 1e-5)


@pytest.mark.parametrize("h, stride", [(46, 1), (91, 2), (45, 1)])
def test_pointwise_matches_xla(kernel, h, stride):
    """1x1 convolutions with at least POINTWISE_MIN_ROWS output pixels over
    the batch (2 x 46 x 46 = 4,232) run the kernel in all three
    directions, at strides 1 and 2 (an odd input at stride 2 keeps its last
    row and column); smaller ones (2 x 45 x 45) stay XLA's GEMM."""
    del kernel
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(2), 3)
    x = jax.random.normal(kx, (2, h, h, 8))
    k = jax.random.normal(kk, (1, 1, 8, 12)) / np.sqrt(8)
    rows = 2 * (-(-h // stride)) ** 2
    offered = rows >= rx.layers.onednn.POINTWISE_MIN_ROWS
    assert offered == (h != 45)
    assert rx.layers.onednn.applies(x, k, (stride, stride), "VALID",
                                    1) == offered
    conv = functools.partial(rx.layers.grouped_conv, strides=(stride, stride),
                             padding="VALID")
    got, hlo = _value_and_grads(lambda x, k: conv(x, k, impl="onednn"),
                                x, k, kg)
    assert len(KERNEL_CALL.findall(hlo)) == (3 if offered else 0)
    want, _ = _value_and_grads(lambda x, k: _reference(
        x, k, (stride, stride), "VALID", 1), x, k, kg)
    _assert_close(got, want, 1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_kernel_matches_feature_group_count(kernel, case):
    del kernel
    n, h, w, cin, cout, groups, s = case
    x, k, key = _inputs(n, h, w, cin, cout, groups)
    padding = ((1, 1), (1, 1))
    got, hlo = _value_and_grads(lambda x, k: rx.layers.grouped_conv(
        x, k, strides=(s, s), padding=padding, groups=groups,
        impl="onednn"), x, k, key)
    # The forward, input gradient and kernel gradient are the kernel's.
    assert len(KERNEL_CALL.findall(hlo)) == 3, hlo
    want, _ = _value_and_grads(lambda x, k: _reference(
        x, k, (s, s), padding, groups), x, k, key)
    _assert_close(got, want, 1e-5)


def test_bfloat16(kernel):
    x, k, key = _inputs(3, 8, 8, 64, 64, 16, jnp.bfloat16)
    conv = lambda x, k: rx.layers.grouped_conv(  # noqa: E731
        x, k, strides=(2, 2), padding=((1, 1), (1, 1)), groups=16,
        impl="onednn")
    got, hlo = _value_and_grads(conv, x, k, key)
    assert all(a.dtype == jnp.bfloat16 for a in got)
    supported, why = kernel.probe(0, True, (3, 8, 8, 64, 4, 4, 64, 3, 3, 16,
                                            2, 2, 1, 1, 1, 1))
    # A CPU without bfloat16 in oneDNN falls back, still correct.
    assert bool(KERNEL_CALL.search(hlo)) == supported, why
    want, _ = _value_and_grads(lambda x, k: _reference(
        x.astype(jnp.float32), k.astype(jnp.float32), (2, 2),
        ((1, 1), (1, 1)), 16), x, k, key)
    _assert_close(got, want, 2e-2)


def test_outside_jit_and_under_vmap(kernel):
    del kernel
    x, k, _ = _inputs(2, 6, 6, 32, 32, 8)
    want = _reference(x, k, (1, 1), ((1, 1), (1, 1)), 8)
    eager = rx.layers.onednn.grouped_conv(x, k, (1, 1), "SAME", 8)
    np.testing.assert_allclose(eager, want, atol=1e-5)
    # Batched images and one kernel: one call over all of them.
    xs = jnp.stack([x, 2 * x, -x])
    batched = jax.jit(jax.vmap(lambda x: rx.layers.onednn.grouped_conv(
        x, k, (1, 1), "SAME", 8)))
    assert KERNEL_CALL.search(batched.lower(xs).as_text())
    np.testing.assert_allclose(batched(xs), jnp.stack([want, 2 * want,
                                                       -want]), atol=1e-5)
    # A kernel per example: the portable lowering, vmapped.
    ks = jnp.stack([k, 2 * k])
    per_kernel = jax.vmap(lambda k: rx.layers.onednn.grouped_conv(
        x, k, (1, 1), "SAME", 8))(ks)
    np.testing.assert_allclose(per_kernel, jnp.stack([want, 2 * want]),
                               atol=1e-5)
    # Per-example gradients (both backward primitives, batched).
    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x[None], k)))
    ours = loss(lambda x, k: rx.layers.onednn.grouped_conv(
        x, k, (2, 2), ((1, 1), (1, 1)), 8))
    ref = loss(lambda x, k: _reference(x, k, (2, 2), ((1, 1), (1, 1)), 8))
    images = xs[:, 0]
    got = jax.jit(jax.vmap(jax.grad(ours, argnums=(0, 1)),
                           in_axes=(0, None)))(images, k)
    for i, image in enumerate(images):
        _assert_close([g[i] for g in got],
                      jax.grad(ref, argnums=(0, 1))(image, k), 1e-5)


@pytest.mark.parametrize("strides", [1, 2])
def test_block_gradient_matches_dense(kernel, strides):
    """A ResNeXt bottleneck in training mode (BatchNorm, ReLU, the
    shortcut's projection): the same gradients as the dense lowering."""
    del kernel

    def block(impl):
        return Bottleneck(planes=16, strides=strides, cardinality=8,
                          base_width=16, zero_init_residual=False,
                          layers=rx.layers.LayerFactory(conv_impl=impl))

    x = jax.random.normal(jax.random.PRNGKey(3), (3, 8, 8, 32))
    variables = randomize(jax.eval_shape(
        block("dense").init, jax.random.PRNGKey(0), x), seed=1)

    def grads(impl):
        def loss(params, x):
            y, _ = block(impl).apply({**variables, "params": params}, x,
                                     train=True, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y))
        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return grad(variables["params"], x), grad.lower(
            variables["params"], x).as_text()

    (got, hlo), (want, _) = grads("onednn"), grads("dense")
    assert len(KERNEL_CALL.findall(hlo)) == 3
    for got, want in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(
            float(jnp.abs(want).max()), 1.0))


def test_no_thread_besides_xla_s(kernel):
    """oneDNN runs single-threaded on XLA's threads: no OpenMP team is
    started (on a machine with 2+ cores it would add threads)."""
    del kernel
    x, k, _ = _inputs(8, 14, 14, 128, 128, 32, seed=5)
    warm = jax.jit(lambda x, k: _reference(x, k, (1, 1), "SAME", 32))
    jax.block_until_ready(warm(x, k))  # XLA's pool, started.
    before = len(os.listdir("/proc/self/task"))
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(rx.layers.grouped_conv(
        x, k, groups=32, impl="onednn") ** 2), argnums=(0, 1)))
    jax.block_until_ready(grad(x, k))
    assert len(os.listdir("/proc/self/task")) == before


@pytest.mark.parametrize("shape, strides, padding, dilation, dtype", [
    ((5, 5, 4, 32), (1, 1), "SAME", 1, jnp.float32),        # 5x5 window
    ((1, 1, 4, 32), (1, 1), "SAME", 1, jnp.float32),        # 1x1 on 8x8
    ((3, 3, 4, 32), (3, 3), ((1, 1), (1, 1)), 1, jnp.float32),  # stride 3
    ((3, 3, 4, 32), (2, 2), "SAME", 1, jnp.float32),        # pads (0, 1)
    ((3, 3, 4, 32), (1, 1), "VALID", 1, jnp.float32),       # no padding
    ((3, 3, 4, 32), (1, 1), "SAME", 2, jnp.float32),        # dilated
    ((3, 3, 4, 32), (1, 1), "SAME", 1, jnp.float16),        # float16
])
def test_other_configurations_are_refused(shape, strides, padding, dilation,
                                          dtype):
    x = jax.ShapeDtypeStruct((2, 8, 8, 32), dtype)
    k = jax.ShapeDtypeStruct(shape, dtype)
    assert not rx.layers.onednn.applies(x, k, strides, padding, 8, dilation)
    ok = jax.ShapeDtypeStruct((3, 3, 4, 32), jnp.float32)
    assert rx.layers.onednn.applies(
        jax.ShapeDtypeStruct((2, 8, 8, 32), jnp.float32), ok, (1, 1),
        "SAME", 8)


def test_kernel_errors_name_the_rule(kernel):
    x = jnp.ones((2, 8, 8, 16))
    k = jnp.ones((3, 3, 4, 16))
    attrs = dict(stride_h=np.int64(1), stride_w=np.int64(1),
                 pad_top=np.int64(1), pad_bottom=np.int64(1),
                 pad_left=np.int64(1), pad_right=np.int64(1),
                 groups=np.int64(4))
    wrong = jax.ffi.ffi_call("resnext_onednn_conv_fwd",
                             jax.ShapeDtypeStruct((2, 7, 7, 16), x.dtype))
    with pytest.raises(Exception, match=r"gives 8x8, not 7x7"):
        jax.block_until_ready(jax.jit(lambda x, k: wrong(x, k, **attrs))(
            x, k))
    ok, why = kernel.probe(0, False, (2, 8, 8, 16, 8, 8, 15, 3, 3, 4, 1, 1,
                                      1, 1, 1, 1))
    assert not ok and "groups (=4) must divide" in why


# ---------------------------------------------------------------------------
# Where the kernel cannot be had.

def test_fallback_without_onednn(missing_onednn, caplog):
    del missing_onednn
    x, k, key = _inputs(2, 7, 7, 32, 32, 8, seed=7)
    conv = lambda x, k: rx.layers.grouped_conv(  # noqa: E731
        x, k, strides=(2, 2), padding=((1, 1), (1, 1)), groups=8,
        impl="onednn")
    with caplog.at_level(logging.WARNING):
        got, hlo = _value_and_grads(conv, x, k, key)
        # A second program: nothing more is logged.
        jax.jit(conv).lower(x[:1], k).as_text()
    assert not KERNEL_CALL.search(hlo)
    lines = [r.getMessage() for r in caplog.records
             if r.name.startswith("resnext_jax")]
    assert len(lines) == 1, lines
    assert "oneDNN is not installed: no onednn-cpu-gomp" in lines[0]
    assert "pip install 'resnext_jax[onednn]'" in lines[0]
    want, _ = _value_and_grads(lambda x, k: _reference(
        x, k, (2, 2), ((1, 1), (1, 1)), 8), x, k, key)
    _assert_close(got, want, 1e-5)


def test_auto_switch_and_its_fallback(monkeypatch, caplog, request):
    """AUTO_LOWERINGS["cpu"] = "onednn" is the switch: auto then runs the
    kernel on CPU, or falls back to dense where it is missing."""
    monkeypatch.setitem(conv_lib.AUTO_LOWERINGS, "cpu", "onednn")
    assert rx.layers.resolve_conv_impl("auto", "cpu") == "onednn"
    x, k, _ = _inputs(2, 6, 6, 32, 32, 8, seed=9)

    def auto_hlo(x):
        return jax.jit(lambda x, k: rx.layers.grouped_conv(
            x, k, groups=8)).lower(x, k).as_text()

    if WHEELS_EXIST:
        request.getfixturevalue("kernel")
        assert KERNEL_CALL.search(auto_hlo(x))
    request.getfixturevalue("missing_onednn")
    with caplog.at_level(logging.WARNING):
        hlo = auto_hlo(x[:1])
    assert not KERNEL_CALL.search(hlo)
    assert sum("oneDNN" in r.getMessage() for r in caplog.records) == 1


def test_switch_off_and_no_compiler(monkeypatch):
    monkeypatch.setattr(build, "_kernel", None)
    monkeypatch.setattr(build, "_failure", None)
    monkeypatch.setenv(build.SWITCH_ENV, "off")
    assert build.unavailable_reason() == "RESNEXT_JAX_ONEDNN=off"
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(build.KernelUnavailable, match="no C\\+\\+ compiler"):
        build.find_compiler()
    monkeypatch.setenv(build.ROOT_ENV, "/nonexistent")
    with pytest.raises(build.KernelUnavailable,
                       match="RESNEXT_JAX_ONEDNN_ROOT='/nonexistent' holds "
                       "no oneDNN"):
        build.find_onednn()


# ---------------------------------------------------------------------------
# Exported programs never call the kernel.

def test_export_stays_portable(kernel):
    del kernel
    model = small_cifar_model(cardinality=8, base_width=4,
                              conv_impl="onednn")
    variables = random_variables(model, image_size=16, seed=2)
    images = jax.random.normal(jax.random.PRNGKey(4), (2, 16, 16, 3))
    jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))
    assert KERNEL_CALL.search(jitted.lower(variables, images).as_text())
    exported, weights = export.export_model(model, variables,
                                            platforms=("cpu", "cuda"),
                                            image_size=16)
    text = exported.mlir_module()
    assert not KERNEL_CALL.search(text)
    assert "feature_group_count = 8" in text  # CUDA's native convolutions.
    reloaded = jax.export.deserialize(exported.serialize())
    np.testing.assert_allclose(reloaded.call(weights, images),
                               jitted(variables, images), atol=1e-4)


def test_exported_gradient_stays_portable(kernel):
    del kernel
    x, k, _ = _inputs(2, 6, 6, 32, 32, 8, seed=11)
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(
        rx.layers.grouped_conv(x, k, groups=8, impl="onednn"))),
        argnums=(0, 1)))
    assert len(KERNEL_CALL.findall(grad.lower(x, k).as_text())) == 3
    exported = jax.export.export(grad, platforms=("cpu",))(x, k)
    assert not KERNEL_CALL.search(exported.mlir_module())
    want = jax.grad(lambda x, k: jnp.sum(jnp.sin(_reference(
        x, k, (1, 1), "SAME", 8))), argnums=(0, 1))(x, k)
    _assert_close(exported.call(x, k), want, 1e-5)

