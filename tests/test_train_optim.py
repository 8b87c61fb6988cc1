"""Learning-rate schedules and the weight-decay mask, checked by value."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import small_cifar_model
from train import optim
from train_helpers import tiny_config


def test_linear_scaling_rule():
    config = tiny_config(base_learning_rate=0.1, base_batch_size=256,
                         batch_size=1024)
    assert optim.scaled_learning_rate(config) == pytest.approx(0.4)


def test_warmup_then_cosine_by_value():
    config = tiny_config(base_learning_rate=0.1, base_batch_size=256,
                         batch_size=512, lr_schedule="cosine",
                         warmup_epochs=2.0)
    schedule = optim.create_learning_rate_schedule(
        config, steps_per_epoch=10, total_steps=120)
    peak = 0.2
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(10)) == pytest.approx(peak / 2)
    assert float(schedule(20)) == pytest.approx(peak)
    # Halfway through the 100 cosine steps the rate is half the peak.
    assert float(schedule(70)) == pytest.approx(peak / 2, rel=1e-5)
    expected = peak * 0.5 * (1 + np.cos(np.pi * 25 / 100))
    assert float(schedule(45)) == pytest.approx(expected, rel=1e-5)
    assert float(schedule(120)) == pytest.approx(0.0, abs=1e-7)


def test_paper_step_schedule_by_value():
    # CIFAR: 0.1, /10 at epochs 150 and 225 of 300.
    config = tiny_config(base_learning_rate=0.1, base_batch_size=128,
                         batch_size=128, lr_schedule="step", warmup_epochs=0.,
                         lr_decay_epochs=(150, 225), lr_decay_factor=0.1)
    schedule = optim.create_learning_rate_schedule(
        config, steps_per_epoch=391, total_steps=300 * 391)
    values = [float(schedule(s)) for s in
              (0, 150 * 391 - 1, 150 * 391, 225 * 391 - 1, 225 * 391)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001],
                               rtol=1e-6)


def test_step_schedule_boundaries_count_from_start_with_warmup():
    config = tiny_config(base_learning_rate=0.1, base_batch_size=256,
                         batch_size=256, lr_schedule="step", warmup_epochs=1.,
                         lr_decay_epochs=(3,), lr_decay_factor=0.1)
    schedule = optim.create_learning_rate_schedule(config, 10, 50)
    assert float(schedule(5)) == pytest.approx(0.05)
    assert float(schedule(29)) == pytest.approx(0.1)
    assert float(schedule(30)) == pytest.approx(0.01)


@pytest.fixture(scope="module")
def params():
    model = small_cifar_model()
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))))
    return shapes["params"]


def _flat(tree):
    return {jax.tree_util.keystr(path): leaf for path, leaf in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_weight_decay_mask_excludes_bn_and_biases_by_default(params):
    mask = _flat(optim.weight_decay_mask(params))
    assert mask["['conv1']['kernel']"] is True
    assert mask["['layer1_0']['conv2']['kernel']"] is True
    assert mask["['fc']['kernel']"] is True
    assert mask["['fc']['bias']"] is False
    assert mask["['bn1']['scale']"] is False
    assert mask["['bn1']['bias']"] is False
    assert mask["['layer2_0']['bn3']['scale']"] is False
    assert mask["['layer2_0']['downsample']['bn']['bias']"] is False
    decayed = {k for k, v in mask.items() if v}
    assert all(k.endswith("['kernel']") for k in decayed)


def test_weight_decay_mask_is_configurable(params):
    mask = _flat(optim.weight_decay_mask(params, decay_bn=True,
                                         decay_bias=False))
    assert mask["['bn1']['scale']"] is True
    assert mask["['layer2_0']['downsample']['bn']['bias']"] is True
    assert mask["['fc']['bias']"] is False
    mask = _flat(optim.weight_decay_mask(params, decay_bn=False,
                                         decay_bias=True))
    assert mask["['bn1']['scale']"] is False
    assert mask["['fc']['bias']"] is True


def test_optimizer_decays_only_masked_params():
    config = tiny_config(weight_decay=0.5, momentum=0.0, nesterov=False)
    tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
    params = {"bn1": {"scale": jnp.ones(2)}, "fc": {"kernel": jnp.ones(2),
                                                    "bias": jnp.ones(2)}}
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # SGD update = -lr * (grad + wd * param) where decayed, else -lr * grad.
    np.testing.assert_allclose(updates["fc"]["kernel"], -0.05)
    np.testing.assert_allclose(updates["fc"]["bias"], 0.0)
    np.testing.assert_allclose(updates["bn1"]["scale"], 0.0)
