"""Every grouped-convolution lowering computes XLA's grouped convolution."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import resnext_jax as rx
from resnext_jax.layers import conv as conv_lib
from conftest import random_variables, small_cifar_model, tiny_model

LOWERINGS = [impl for impl in rx.layers.CONV_IMPLS if impl != "auto"]


def _reference(x, kernel, strides, padding, groups):
    return lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, precision=lax.Precision.HIGHEST)


# (batch, height, width, in_ch, out_ch, kernel, groups, strides, padding)
CASES = [
    (2, 9, 9, 16, 16, 3, 1, 1, ((1, 1), (1, 1))),
    (2, 8, 8, 16, 32, 3, 2, 1, "SAME"),
    (1, 7, 7, 16, 16, 3, 4, 2, ((1, 1), (1, 1))),
    (2, 11, 6, 32, 32, 3, 8, 2, "SAME"),
    (2, 9, 9, 64, 64, 3, 32, 1, ((1, 1), (1, 1))),
    (1, 5, 5, 128, 128, 3, 64, 2, ((1, 1), (1, 1))),
    (2, 6, 6, 64, 64, 3, 32, 2, "VALID"),
    (2, 8, 8, 16, 24, 1, 1, 1, "SAME"),
    (2, 9, 9, 16, 24, 1, 1, 2, ((0, 0), (0, 0))),
    (2, 8, 8, 32, 32, 1, 8, 1, "VALID"),
    (1, 12, 12, 3, 8, 7, 1, 2, ((3, 3), (3, 3))),
    (2, 10, 9, 3, 8, 3, 1, 1, "SAME"),
    (1, 11, 13, 4, 6, 7, 1, 2, "SAME"),
    (2, 7, 7, 8, 8, 3, 2, 1, ((2, 0), (0, 1))),
    # 64+ input channels per dense convolution: the patches kernel gradient.
    (1, 5, 5, 64, 32, 3, 1, 1, ((1, 1), (1, 1))),
    (2, 6, 5, 128, 64, 3, 2, 1, "SAME"),
]


def _ids(case):
    b, h, w, cin, cout, k, g, s, p = case
    pad = p if isinstance(p, str) else "explicit"
    return f"{b}x{h}x{w}x{cin}-{cout}-k{k}-g{g}-s{s}-{pad}"


@pytest.mark.parametrize("impl", LOWERINGS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_lowering_matches_feature_group_count(case, dtype, impl):
    b, h, w, cin, cout, k, groups, s, padding = case
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (b, h, w, cin), jnp.float32)
    kernel = jax.random.normal(kk, (k, k, cin // groups, cout),
                               jnp.float32) / np.sqrt(k * k * cin / groups)
    ref = _reference(x, kernel, (s, s), padding, groups)
    cotangent = jax.random.normal(kg, ref.shape, jnp.float32)

    def run(fn, x, kernel):
        out, vjp = jax.vjp(fn, x.astype(dtype), kernel.astype(dtype))
        dx, dk = vjp(cotangent.astype(out.dtype))
        return out, dx, dk

    ours = jax.jit(lambda x, kernel: rx.layers.grouped_conv(
        x, kernel, strides=(s, s), padding=padding, groups=groups,
        impl=impl))
    theirs = lambda x, kernel: _reference(x, kernel, (s, s), padding, groups)
    out, dx, dk = jax.jit(lambda x, k: run(ours, x, k))(x, kernel)
    ref_out, ref_dx, ref_dk = run(theirs, x, kernel)
    assert out.shape == ref_out.shape and out.dtype == dtype
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
    for a, r in [(out, ref_out), (dx, ref_dx), (dk, ref_dk)]:
        a, r = np.asarray(a, np.float32), np.asarray(r, np.float32)
        scale = max(np.abs(r).max(), 1.0)
        np.testing.assert_allclose(a, r, atol=tol * scale, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2, 4, 8])
def test_every_chunk_size_is_exact(chunk):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 32))
    kernel = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 4, 32))
    ref = _reference(x, kernel, (1, 1), "SAME", 8)
    out = conv_lib._blockdiag_conv(x, kernel, (1, 1), "SAME", 8, chunk)
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("strides, groups", [((2, 2), 8), ((1, 1), 1)])
def test_patches_kernel_gradient_in_pieces_is_exact(monkeypatch, strides,
                                                    groups):
    # A tiny memory bound: one GEMM per chunk instead of one for all.
    monkeypatch.setattr(conv_lib, "_PATCHES_MAX_BYTES", 1)
    cin = 32 if groups > 1 else 64
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 6, cin))
    kernel = jax.random.normal(jax.random.PRNGKey(2),
                               (3, 3, cin // groups, 32)) / 10
    loss = lambda fn, k: jnp.sum(jnp.sin(fn(x, k)))
    got = jax.grad(lambda k: loss(lambda x, k: conv_lib._dense_conv(
        x, k, strides, "SAME", groups), k))(kernel)
    want = jax.grad(lambda k: loss(lambda x, k: _reference(
        x, k, strides, "SAME", groups), k))(kernel)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def test_block_diagonal_kernel_layout():
    kernel = jnp.arange(1 * 1 * 2 * 6, dtype=jnp.float32).reshape(1, 1, 2, 6)
    dense = np.asarray(conv_lib.block_diagonal_kernel(kernel, 3))[0, 0]
    assert dense.shape == (6, 6)
    for g in range(3):
        rows, cols = slice(2 * g, 2 * g + 2), slice(2 * g, 2 * g + 2)
        np.testing.assert_array_equal(dense[rows, cols],
                                      np.asarray(kernel)[0, 0][:, cols])
        off = np.delete(dense[rows], np.arange(2 * g, 2 * g + 2), axis=1)
        assert not off.any()


def test_chunk_heuristic_divides_groups():
    for groups in (1, 2, 3, 4, 8, 32, 64):
        for cin_g in (1, 4, 8, 16, 32, 64):
            chunk = conv_lib.default_chunk_groups(groups, cin_g, cin_g)
            assert groups % chunk == 0 and chunk >= 1


def test_auto_resolves_by_platform():
    assert rx.layers.resolve_conv_impl("auto", platform="cpu") == "onednn"
    for platform in ("gpu", "cuda", "rocm", "tpu"):
        assert rx.layers.resolve_conv_impl("auto", platform=platform) == "xla"
    assert rx.layers.resolve_conv_impl("xla", platform="cpu") == "xla"
    assert rx.layers.resolve_conv_impl("dense", platform="tpu") == "dense"


@pytest.mark.parametrize("chunk", [1, 4, 8])
def test_dense_kernel_gradient_at_every_chunk_size(chunk):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 7, 32))
    kernel = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 4, 32))

    def kernel_grad(impl, chunk_groups=None):
        return jax.grad(lambda k: jnp.sum(jnp.sin(rx.layers.grouped_conv(
            x, k, strides=(2, 2), groups=8, impl=impl,
            chunk_groups=chunk_groups))))(kernel)

    np.testing.assert_allclose(kernel_grad("dense", chunk),
                               kernel_grad("xla"), atol=1e-4)


def _grouped_convs_in_hlo(text: str) -> int:
    """Grouped convolutions in compiled HLO text (one per line)."""
    return len(re.findall(r"feature_group_count=(?!1\b)\d+", text))


@pytest.mark.slow
def test_cpu_jit_compiles_only_the_cpu_lowering():
    model = tiny_model(cardinality=8, base_width=4)
    variables = random_variables(model, image_size=64, seed=1)
    # Batch statistics over enough values to keep the gradient well
    # conditioned (2 images at 1x1 would not be).
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 64, 64, 3))

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x,
                                train=True, mutable=["batch_stats"])
        return jnp.sum(logits ** 2)

    grad = jax.jit(jax.grad(loss))
    hlo = grad.lower(variables["params"]).compile().as_text()
    assert _grouped_convs_in_hlo(hlo) == 0
    assert "conditional" not in hlo and "select-and-scatter" not in hlo
    # The native program, for contrast, keeps its grouped convolutions.
    native = jax.jit(jax.grad(lambda p: jnp.sum(model.clone(
        conv_impl="xla").apply({**variables, "params": p}, x, train=True,
                               mutable=["batch_stats"])[0] ** 2)))
    assert _grouped_convs_in_hlo(
        native.lower(variables["params"]).compile().as_text()) > 0
    # And the gradients are the same function's.
    got, want = grad(variables["params"]), native(variables["params"])
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = max(float(jnp.abs(w).max()), 1.0)
        np.testing.assert_allclose(g, w, atol=1e-4 * scale, rtol=0)


def test_grouped_conv_module_params_equal_nn_conv():
    import flax.linen as nn
    x = jnp.ones((1, 6, 6, 16))
    ours = rx.layers.GroupedConv(32, (3, 3), feature_group_count=4, use_bias=True)
    theirs = nn.Conv(32, (3, 3), feature_group_count=4, use_bias=True)
    p_ours = ours.init(jax.random.PRNGKey(0), x)
    p_theirs = theirs.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, p_ours) == jax.tree.map(jnp.shape, p_theirs)
    np.testing.assert_allclose(ours.apply(p_theirs, x),
                               theirs.apply(p_theirs, x), atol=1e-5)


@pytest.mark.parametrize("make_model, size", [
    (lambda **kw: small_cifar_model(cardinality=8, base_width=4, **kw), 16),
    (lambda **kw: tiny_model(cardinality=8, base_width=4, **kw), 32),
])
def test_models_give_same_logits_with_every_lowering(make_model, size):
    x = jax.random.normal(jax.random.PRNGKey(3), (2, size, size, 3))
    variables = random_variables(make_model(), image_size=size, seed=1)
    logits = {impl: jax.jit(make_model(conv_impl=impl).apply)(variables, x)
              for impl in rx.layers.CONV_IMPLS}
    scale = float(jnp.abs(logits["xla"]).max())
    for impl, out in logits.items():
        assert float(jnp.abs(out - logits["xla"]).max()) < 1e-4 * max(scale, 1)


@pytest.mark.parametrize("shape", [(2, 12, 12, 5), (1, 7, 9, 3), (1, 1, 1, 2)])
@pytest.mark.parametrize("impl", LOWERINGS)
def test_max_pool_matches_flax(shape, impl):
    import flax.linen as nn
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    ref = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    out = conv_lib.max_pool(x, 3, 2, 1, impl=impl)
    np.testing.assert_array_equal(out, ref)
    # Random floats have no ties; with ties, see the tests below.
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(
        x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))))(x)
    g = jax.grad(lambda x: jnp.sum(jnp.sin(conv_lib.max_pool(
        x, 3, 2, 1, impl=impl))))(x)
    np.testing.assert_allclose(g, g_ref, atol=1e-6)


def _native_grouped_convs(mlir_text: str, groups: int) -> int:
    """XLA grouped convolutions in StableHLO: the forward and input gradient
    (feature groups) and jax's kernel gradient (batch groups)."""
    return (mlir_text.count(f"feature_group_count = {groups} ")
            + mlir_text.count(f"batch_group_count = {groups} "))


@pytest.mark.parametrize("platform, native_convs", [("cuda", 3), ("cpu", 0)])
def test_auto_gradient_is_the_targets_lowering(platform, native_convs):
    """The backward pass, too, is chosen by the target: exported from this
    CPU host for CUDA, ``auto``'s gradient program holds XLA's grouped
    convolutions (forward, input and kernel gradients), and for CPU none."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 32))
    kernel = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 4, 32))

    def loss(x, k):
        return jnp.sum(jnp.sin(rx.layers.grouped_conv(x, k, groups=8)))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    exported = jax.export.export(grad, platforms=(platform,))(x, kernel)
    assert _native_grouped_convs(exported.mlir_module(), 8) == native_convs
    if platform == "cpu":
        for got, want in zip(exported.call(x, kernel), jax.grad(
                lambda x, k: jnp.sum(jnp.sin(_reference(
                    x, k, (1, 1), "SAME", 8))), argnums=(0, 1))(x, kernel)):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["dense", "onednn"])
def test_max_pool_ties_send_the_gradient_to_the_first_maximum(impl):
    """With ties (a ReLU's zeros, repeated values) each window's gradient
    goes whole to its first maximum in row-major order, as PyTorch's
    max_pool2d; a NaN is the maximum of its windows."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.integers(-1, 3, (2, 9, 8, 3)).astype(np.float32)
    x[1, 4, 4, 1] = np.nan
    dy = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    out, pullback = jax.vjp(
        lambda x: conv_lib.max_pool(x, 3, 2, 1, impl=impl), jnp.asarray(x))
    dx, = pullback(jnp.asarray(dy))
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    ref = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    ref.backward(torch.tensor(dy).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(
        np.asarray(out), ref.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(np.asarray(dx),
                               xt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-6)


@pytest.mark.parametrize("window, stride, padding",
                         [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2)])
@pytest.mark.parametrize("impl", ["dense", "auto"])
def test_max_pool_ties_match_reduce_window(window, stride, padding, impl):
    """With ties, the sliced max-pool's value and gradient equal XLA's
    reduce-window's (each window's gradient to its first maximum), for
    other windows, strides and paddings too, and through ``auto``."""
    import flax.linen as nn
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(0, 3, (2, 11, 10, 3)).astype(np.float32))
    pads = ((padding, padding), (padding, padding))

    def ref(x):
        return nn.max_pool(x, (window, window), strides=(stride, stride),
                           padding=pads)
    out_ref, pull_ref = jax.vjp(ref, x)
    out, pull = jax.vjp(lambda x: conv_lib.max_pool(
        x, window, stride, padding, impl=impl), x)
    np.testing.assert_array_equal(out, out_ref)
    dy = jnp.asarray(rng.normal(size=out.shape).astype(np.float32))
    np.testing.assert_allclose(pull(dy)[0], pull_ref(dy)[0], atol=1e-6)
