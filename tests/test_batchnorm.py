"""The fused BatchNorm(+add)(+ReLU) computes what flax's BatchNorm followed by
the add and ``nn.relu`` computes: outputs, gradients of the input, scale,
bias and residual, and the updated running statistics, in float32 and
bfloat16, on one device and across devices (cross-replica statistics)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnext_jax.layers.batchnorm import BN_IMPLS, BatchNorm
from train_helpers import run_python

SHAPE = (4, 6, 5, 16)


class Reference(nn.Module):
    """flax's BatchNorm, then the add and ReLU as the blocks wrote them."""
    dtype: object = jnp.float32
    activation: str | None = "relu"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train, residual=None):
        y = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, dtype=self.dtype,
                         axis_name=self.axis_name, name="bn")(x)
        if residual is not None:
            y = y + residual
        return nn.relu(y) if self.activation else y


class Fused(nn.Module):
    dtype: object = jnp.float32
    activation: str | None = "relu"
    axis_name: str | None = None
    impl: str = "fused"

    @nn.compact
    def __call__(self, x, train, residual=None):
        return BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, dtype=self.dtype,
                         axis_name=self.axis_name, activation=self.activation,
                         impl=self.impl, name="bn")(x, residual=residual)


def _inputs(dtype, seed=0):
    kx, kr, ks, kb, kg = jax.random.split(jax.random.PRNGKey(seed), 5)
    # An offset mean and a spread so that the statistics matter.
    x = (3.0 + 2.0 * jax.random.normal(kx, SHAPE)).astype(dtype)
    residual = jax.random.normal(kr, SHAPE).astype(dtype)
    scale = 1.0 + 0.3 * jax.random.normal(ks, SHAPE[-1:])
    bias = 0.2 * jax.random.normal(kb, SHAPE[-1:])
    cotangent = jax.random.normal(kg, SHAPE)
    return x, residual, scale, bias, cotangent


def _variables(module, x, scale, bias):
    variables = module.init(jax.random.PRNGKey(1), x, False)
    params = {"bn": {"scale": scale, "bias": bias}}
    stats = {"bn": {"mean": jnp.full(SHAPE[-1:], 0.5),
                    "var": jnp.full(SHAPE[-1:], 2.0)}}
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(
        params)
    return params, stats


def _train_outputs(module, x, residual, scale, bias, cotangent):
    params, stats = _variables(module, x, scale, bias)

    def loss(params, x, residual):
        out, updates = module.apply(
            {"params": params, "batch_stats": stats}, x, True,
            residual, mutable=["batch_stats"])
        return jnp.sum(out.astype(jnp.float32) * cotangent), (out, updates)

    (_, (out, updates)), grads = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
            params, x, residual)
    return out, updates["batch_stats"], grads


def _close(a, b, rtol, atol):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("impl", ["fused", "auto"])
@pytest.mark.parametrize("activation,with_residual",
                         [("relu", False), ("relu", True), (None, False)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_matches_flax(impl, activation, with_residual, dtype):
    dtype = jnp.dtype(dtype)
    x, residual, scale, bias, cotangent = _inputs(dtype)
    residual = residual if with_residual else None
    ref = _train_outputs(Reference(dtype, activation), x, residual, scale,
                         bias, cotangent)
    ours = _train_outputs(Fused(dtype, activation, impl=impl), x, residual,
                          scale, bias, cotangent)
    (ref_out, ref_stats, ref_grads) = ref
    (out, stats, grads) = ours
    assert out.dtype == ref_out.dtype == dtype
    # The forward runs the same operations in the same order.
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == jnp.float32 else dict(
        rtol=1e-2, atol=1e-2)
    _close(out, ref_out, **tol)
    jax.tree.map(lambda a, b: _close(a, b, 1e-6, 1e-6), stats, ref_stats)
    # Gradients: input, scale, bias (and residual), summed differently.
    grad_tol = dict(rtol=2e-5, atol=2e-5) if dtype == jnp.float32 else dict(
        rtol=3e-2, atol=3e-2)
    for ours_g, ref_g in zip(jax.tree.leaves(grads),
                             jax.tree.leaves(ref_grads)):
        assert ours_g.dtype == ref_g.dtype
        _close(ours_g, ref_g, **grad_tol)
    # The gradients are not trivially zero.
    assert float(jnp.abs(grads[0]["bn"]["scale"]).max()) > 1e-2
    assert float(jnp.abs(grads[1].astype(jnp.float32)).max()) > 1e-3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_inference_matches_flax(dtype):
    dtype = jnp.dtype(dtype)
    x, residual, scale, bias, _ = _inputs(dtype, seed=3)
    outs = []
    for module in (Reference(dtype), Fused(dtype)):
        params, stats = _variables(module, x, scale, bias)
        outs.append(module.apply({"params": params, "batch_stats": stats},
                                 x, False, residual))
    np.testing.assert_array_equal(np.asarray(outs[0], np.float32),
                                  np.asarray(outs[1], np.float32))


def test_same_variables_as_flax():
    x = jnp.ones(SHAPE)
    ref = Reference().init(jax.random.PRNGKey(0), x, False)
    ours = Fused().init(jax.random.PRNGKey(0), x, False)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), ref) == jax.tree.map(
        lambda a: (a.shape, a.dtype), ours)


_MULTI_DEVICE = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import test_batchnorm as t

mesh = Mesh(np.array(jax.devices()), ("data",))
results = {}
for dtype in ("float32", "bfloat16"):
    x, residual, scale, bias, cotangent = t._inputs(jnp.dtype(dtype))
    per = {}
    for name, module in (
            ("flax", t.Reference(jnp.dtype(dtype), "relu", "data")),
            ("fused", t.Fused(jnp.dtype(dtype), "relu", "data"))):
        params, stats = t._variables(module, x, scale, bias)

        def step(params, x, residual, cotangent):
            def loss(params, x, residual):
                out, upd = module.apply(
                    {"params": params, "batch_stats": stats}, x, True,
                    residual, mutable=["batch_stats"])
                return (jnp.sum(out.astype(jnp.float32) * cotangent),
                        upd["batch_stats"])
            (_, upd), grads = jax.value_and_grad(
                loss, argnums=(0, 1, 2), has_aux=True)(params, x, residual)
            # Parameter gradients are averaged as the trainer does.
            grads = (jax.lax.pmean(grads[0], "data"),) + grads[1:]
            return upd, grads

        mapped = jax.jit(jax.shard_map(
            step, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data")),
            out_specs=(P(), (P(), P("data"), P("data"))), check_vma=False))
        upd, grads = mapped(params, x, residual, cotangent)
        per[name] = [np.asarray(a, np.float32).tolist()
                     for a in jax.tree.leaves((upd, grads))]
    results[dtype] = per
print(json.dumps(dict(devices=jax.device_count(), results=results)))
"""


def test_cross_replica_statistics_match_flax():
    out = run_python(_MULTI_DEVICE, devices=4)
    found = json.loads(out.strip().splitlines()[-1])
    assert found["devices"] == 4
    for dtype, per in found["results"].items():
        tol = 2e-5 if dtype == "float32" else 3e-2
        assert len(per["flax"]) == len(per["fused"]) == 6
        for ref, ours in zip(per["flax"], per["fused"]):
            np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


def test_cross_replica_statistics_differ_from_local_ones():
    """Guards the test above: per-device statistics would give other
    values, so matching flax's cross-replica values is not automatic."""
    x, residual, scale, bias, cotangent = _inputs(jnp.float32)
    module = Fused(jnp.float32, "relu")
    whole = _train_outputs(module, x, residual, scale, bias, cotangent)
    half = _train_outputs(module, x[:2], residual[:2], scale, bias,
                          cotangent[:2])
    assert not np.allclose(whole[1]["bn"]["mean"], half[1]["bn"]["mean"])


def test_bad_arguments_are_named():
    x = jnp.ones(SHAPE)
    with pytest.raises(ValueError, match="bn_impl='cudnn'.*" + str(BN_IMPLS)
                       .replace("(", r"\(").replace(")", r"\)")):
        Fused(impl="cudnn").init(jax.random.PRNGKey(0), x, False)
    with pytest.raises(ValueError, match="activation='gelu'"):
        Fused(activation="gelu").init(jax.random.PRNGKey(0), x, False)
    with pytest.raises(ValueError, match="residual shape"):
        Fused().init(jax.random.PRNGKey(0), x, False, jnp.ones((4, 6, 5, 8)))
