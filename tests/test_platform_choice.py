"""choose_with_vjp: the target's implementation, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnext_jax.layers import platform_choice


def _marked(scale):
    """sin(x) * y, with a custom VJP that multiplies its cotangents by
    ``scale``, so the test can see whose backward ran."""

    @jax.custom_vjp
    def f(x, y):
        return jnp.sin(x) * y

    def fwd(x, y):
        return f(x, y), (x, y)

    def bwd(res, g):
        x, y = res
        return scale * g * jnp.cos(x) * y, scale * g * jnp.sin(x)

    f.defvjp(fwd, bwd)
    return f


@pytest.mark.parametrize("target, scale", [("cpu", 2.0), ("tpu", 3.0)])
def test_backward_is_the_targets(target, scale):
    """On CPU the cpu implementation's backward runs; an export for another
    platform keeps only the default's."""
    x, y = jnp.linspace(-1.0, 1.0, 5), jnp.linspace(2.0, 3.0, 5)

    def loss(x, y):
        return jnp.sum(platform_choice.choose_with_vjp(
            {"cpu": _marked(2.0)}, _marked(3.0), x, y))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    if target == "cpu":
        got = grad(x, y)
    else:
        exported = jax.export.export(grad, platforms=(target,))(x, y)
        text = exported.mlir_module()
        assert "3.000000e+00" in text and "2.000000e+00" not in text
        return
    np.testing.assert_allclose(got[0], scale * jnp.cos(x) * y, rtol=1e-6)
    np.testing.assert_allclose(got[1], scale * jnp.sin(x), rtol=1e-6)
    # The forward value is the implementations' common one.
    np.testing.assert_allclose(platform_choice.choose_with_vjp(
        {"cpu": _marked(2.0)}, _marked(3.0), x, y), jnp.sin(x) * y)


def test_default_backward_runs_where_no_platform_is_named():
    x = jnp.linspace(-1.0, 1.0, 5)
    got = jax.grad(lambda x: jnp.sum(platform_choice.choose_with_vjp(
        {"tpu": jnp.sin}, lambda x: jnp.sin(x), x)))(x)
    np.testing.assert_allclose(got, jnp.cos(x), rtol=1e-6)
