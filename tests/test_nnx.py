"""resnext_jax.nnx: the same function, parameters and gradients as linen."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_variables, tiny_model
from flax import nnx

import resnext_jax as rx
from resnext_jax import nnx as rxnnx


def _assert_same_tree(a, b):
    leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(leaves_a) == len(leaves_b)
    for path, leaf in leaves_a:
        np.testing.assert_array_equal(leaf, leaves_b[path],
                                      err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def linen():
    model = tiny_model()
    return model, random_variables(model, 32, seed=4)


def test_outputs_equal_linen_in_both_modes(linen):
    model, variables = linen
    images = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    ported = rxnnx.from_linen(model, variables)
    _assert_same_tree(rxnnx.to_linen_variables(ported), variables)
    np.testing.assert_array_equal(ported(images), model.apply(variables,
                                                              images))
    ported.train()
    expected, updates = model.apply(variables, images, train=True,
                                    mutable=["batch_stats"])
    np.testing.assert_array_equal(ported(images), expected)
    # Training mode updated the statistics in place, as linen's mutable.
    _assert_same_tree(rxnnx.to_linen_variables(ported)["batch_stats"],
                      updates["batch_stats"])
    ported.eval()
    np.testing.assert_array_equal(
        ported(images), model.apply(
            {"params": variables["params"], **updates}, images))


def test_gradients_equal_linen(linen):
    model, variables = linen
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    labels = jnp.array([0, 1, 2, 3])

    def linen_loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, labels).mean()

    expected = jax.grad(linen_loss)(variables["params"])
    ported = rxnnx.from_linen(model, variables)
    ported.train()
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(images), labels).mean())(ported)
    # The bridge keeps linen's tree under ``module``, one attribute per
    # top-level layer (conv1, bn1, layer1_0, ...).
    _assert_same_tree(nnx.to_pure_dict(grads)["module"], expected)


def test_nnx_optimizer_trains_and_weights_go_back_to_linen(linen):
    model, variables = linen
    ported = rxnnx.from_linen(model, variables, rngs=nnx.Rngs(0))
    ported.train()
    optimizer = nnx.Optimizer(ported, optax.sgd(0.05), wrt=nnx.Param)
    images = jax.random.normal(jax.random.PRNGKey(2), (8, 32, 32, 3))
    labels = jnp.arange(8) % 7

    @nnx.jit
    def step(m, opt):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(
                m(images), labels).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    losses = [float(step(ported, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    trained = rxnnx.to_linen_variables(ported)
    ported.eval()
    np.testing.assert_allclose(ported(images), model.apply(trained, images),
                               rtol=1e-6, atol=1e-6)


def test_registry_models_and_bad_variables():
    ported = rxnnx.create_model("resnext29_32x4d", rngs=nnx.Rngs(0),
                                stage_sizes=(1, 1, 1))
    assert ported.config.cardinality == 32
    assert ported(jnp.zeros((2, 32, 32, 3))).shape == (2, 10)
    model = tiny_model()
    variables = random_variables(model, 32)
    wrong = jax.tree.map(lambda a: a, variables)
    wrong["params"]["fc"]["kernel"] = jnp.zeros((3, 3))
    with pytest.raises(ValueError, match=r"params/fc/kernel.*has shape"):
        rxnnx.from_linen(model, wrong)
    assert isinstance(rx.ResNeXt(), rx.ResNeXt)
