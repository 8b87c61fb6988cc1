"""Forms A, B and C are the same function given converted weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnext_jax as rx
from conftest import random_variables, randomize, small_cifar_model


def _assert_trees_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def variables_c():
    return random_variables(small_cifar_model(), seed=3)


@pytest.mark.parametrize("form", ["A", "B"])
def test_round_trip_is_exact(variables_c, form):
    there = rx.convert_block_form(variables_c, to=form)
    back = rx.convert_block_form(there, to="C")
    _assert_trees_equal(back, variables_c)
    # And A <-> B directly.
    other = "B" if form == "A" else "A"
    via = rx.convert_block_form(rx.convert_block_form(there, to=other),
                                to=form)
    _assert_trees_equal(via, there)


def test_converted_structure(variables_c):
    a = rx.convert_block_form(variables_c, to="A")["params"]["layer2_0"]
    b = rx.convert_block_form(variables_c, to="B")["params"]["layer2_0"]
    assert sorted(k for k in a if k.startswith("branch_")) == [
        "branch_0", "branch_1", "branch_2", "branch_3"]
    assert "conv3" in a["branch_0"] and "conv3" not in a
    assert "conv3" not in b["branch_0"] and "conv3" in b
    # Parameter count does not change with the form (paper Sec. 3.3).
    assert rx.models.count_params(a) == rx.models.count_params(
        variables_c["params"]["layer2_0"])


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("form", ["A", "B"])
def test_forms_give_same_outputs_and_gradients(variables_c, form, train):
    model_c = small_cifar_model()
    model_x = small_cifar_model(block_form=form)
    variables_x = rx.convert_block_form(variables_c, to=form)

    images = jax.random.normal(jax.random.PRNGKey(7), (4, 16, 16, 3))

    def loss(params, model, stats):
        variables = {"params": params, "batch_stats": stats}
        if train:
            logits, new_state = model.apply(variables, images, train=True,
                                            mutable=["batch_stats"])
        else:
            logits, new_state = model.apply(variables, images), {}
        return jnp.sum(jnp.sin(logits)), (logits, new_state)

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g_c, (out_c, state_c) = grad(variables_c["params"], model_c,
                                 variables_c["batch_stats"])
    g_x, (out_x, state_x) = grad(variables_x["params"], model_x,
                                 variables_x["batch_stats"])
    scale = float(jnp.abs(out_c).max())
    assert scale > 0
    assert float(jnp.abs(out_c - out_x).max()) < 1e-4 * max(scale, 1.0)
    # Gradients, mapped back to form C, agree.
    g_x_as_c = rx.convert_block_form({"params": g_x}, to="C")["params"]
    # (In float64 they agree to 1e-14; float32 rounding differs by order of
    # summation only.)
    assert jax.tree.structure(g_c) == jax.tree.structure(g_x_as_c)
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_x_as_c)):
        tol = 1e-4 * max(float(jnp.abs(a).max()), 1.0)
        assert float(jnp.abs(a - b).max()) < tol
    if train:
        # Updated running statistics agree too.
        new_x = rx.convert_block_form(
            {"params": variables_x["params"], **state_x}, to="C")
        for a, b in zip(jax.tree.leaves(state_c["batch_stats"]),
                        jax.tree.leaves(new_x["batch_stats"])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_single_block_forms_agree():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 16))
    block_c = rx.Bottleneck(planes=8, cardinality=8, base_width=16, strides=2,
                            zero_init_residual=False)
    variables = randomize(block_c.init(jax.random.PRNGKey(1), x), seed=5)
    y_c = block_c.apply(variables, x)
    for form in "AB":
        block = block_c.clone(form=form)
        y = block.apply(rx.convert_block_form(variables, to=form), x)
        np.testing.assert_allclose(y, y_c, atol=1e-5)
