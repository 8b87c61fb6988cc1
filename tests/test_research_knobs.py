"""The research knobs of the model: a custom block class, drop-path,
rematerialization, output stride, and model fields from any config's
command line."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, tiny_model

import resnext_jax as rx
from examples.no_shortcut_block import NoShortcutBottleneck
from train_helpers import REPO

NO_SHORTCUT = "examples.no_shortcut_block:NoShortcutBottleneck"


def _loss_and_grads(model, variables, images):
    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images, train=True, mutable=["batch_stats"])
        return jnp.sum(logits ** 2)
    return jax.jit(jax.value_and_grad(loss))(variables["params"])


def residual_bytes(model, variables, images) -> int:
    """Bytes the backward pass keeps from the forward pass: the residuals
    ``jax.vjp`` holds (shapes only, nothing computed)."""
    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images, train=True, mutable=["batch_stats"])
        return jnp.sum(logits ** 2)
    kept = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], variables["params"])
    return sum(int(np.prod(r.shape)) * r.dtype.itemsize
               for r in jax.tree.leaves(kept))


def test_remat_gives_identical_gradients_and_keeps_less():
    model = tiny_model(stage_sizes=(2, 1, 1, 1))
    variables = random_variables(model, 32)
    images = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
    plain = _loss_and_grads(model, variables, images)
    remat = _loss_and_grads(model.clone(remat="block"), variables, images)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_array_equal(a, b)
    kept = residual_bytes(model.clone(remat="block"), variables, images)
    # 0.71 here: the weights are kept either way; activations are not.
    assert kept < 0.8 * residual_bytes(model, variables, images)


def test_drop_path_is_the_identity_in_eval_mode():
    model = tiny_model()
    variables = random_variables(model, 32)
    images = jax.random.normal(jax.random.PRNGKey(2), (4, 32, 32, 3))
    np.testing.assert_array_equal(
        model.clone(drop_path_rate=0.5).apply(variables, images),
        model.apply(variables, images))


def test_drop_path_keeps_each_branch_with_the_right_probability():
    """A block without its shortcut, rate 0.3: each sample's output is
    either 0 (branch dropped) or the undropped output scaled by 1 / 0.7
    (ReLU commutes with a positive scale)."""
    rate, n = 0.3, 4000
    block = NoShortcutBottleneck(planes=4, cardinality=2, base_width=64,
                                 zero_init_residual=False,
                                 drop_path_rate=rate)
    x = jax.random.normal(jax.random.PRNGKey(3), (n, 4, 4, 16))
    variables = block.init(jax.random.PRNGKey(0), x[:1])
    full, _ = block.clone(drop_path_rate=0.0).apply(
        variables, x, train=True, mutable=["batch_stats"])
    out, _ = block.apply(variables, x, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.PRNGKey(7)})
    full, out = np.asarray(full), np.asarray(out)
    dropped = np.all(out == 0, axis=(1, 2, 3))
    assert not np.any(np.all(full == 0, axis=(1, 2, 3)))
    np.testing.assert_allclose(out[~dropped], full[~dropped] / (1 - rate),
                               rtol=1e-5, atol=1e-6)
    # Binomial(4000, 0.7): standard deviation 0.0072; 5 of them.
    kept = 1 - dropped.mean()
    assert abs(kept - (1 - rate)) < 0.036, kept


def test_drop_path_in_training_without_a_key_says_how():
    model = tiny_model(drop_path_rate=0.1)
    variables = random_variables(model, 32)
    with pytest.raises(ValueError, match="needs a 'dropout' key"):
        model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=True,
                    mutable=["batch_stats"])


def test_linear_drop_path_decay_as_timm():
    model = tiny_model(stage_sizes=(2, 1, 1, 1), drop_path_rate=0.4)
    rates = []
    original = rx.Bottleneck.__call__

    def spy(self, x, train=False):
        rates.append(self.drop_path_rate)
        return original(self, x, train)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rx.Bottleneck, "__call__", spy)
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                          jnp.zeros((1, 32, 32, 3))))
    np.testing.assert_allclose(rates, [0.0, 0.4 / 4, 0.8 / 4, 1.2 / 4, 0.4])


@pytest.mark.parametrize("field,value,match", [
    ("drop_path_rate", 1.0, r"drop_path_rate \(=1.0\) must be a number in "
                            r"\[0, 1\)"),
    ("remat", "all", r"remat \(='all'\) must be one of"),
    ("block_cls", "nowhere:Block", r"block_cls \(='nowhere:Block'\) cannot "
                                   "be imported"),
    ("expansion", 0, r"expansion \(=0\) must be a positive integer"),
])
def test_bad_knobs_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        rx.ResNeXt(**{field: value})


def test_expansion_sets_the_block_outputs():
    model = tiny_model(expansion=2)
    variables = random_variables(model, 32)
    assert variables["params"]["layer4_0"]["conv3"]["kernel"].shape[-1] == (
        512 * 2)
    assert variables["params"]["fc"]["kernel"].shape[0] == 1024


@pytest.mark.slow
def test_custom_block_trains_from_the_command_line_and_reloads(tmp_path):
    workdir = tmp_path / "run"
    command = [
        sys.executable, "-m", "train", "--workdir", str(workdir),
        "--config.num_train_steps=3", "--config.eval_every_steps=3",
        "--config.progress_bar=False", "--config.batch_size=16",
        "--config.eval_batch_size=120",
        f"--config.model_kwargs.block_cls={NO_SHORTCUT}",
        "--config.model_kwargs.drop_path_rate=0.1",
        "--config.model_kwargs.remat=block",
        "--config.model_kwargs.zero_init_residual=False"]
    result = subprocess.run(command, cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[
        -3000:]
    saved = json.loads((workdir / "model" / "model.json").read_text())
    kwargs = saved["model_kwargs"]
    assert kwargs["block_cls"] == NO_SHORTCUT
    assert kwargs["drop_path_rate"] == 0.1 and kwargs["remat"] == "block"
    assert kwargs["zero_init_residual"] is False
    sys.path.insert(0, str(REPO))
    try:
        loaded = rx.load_pretrained(workdir)
    finally:
        sys.path.remove(str(REPO))
    assert loaded.model.block_cls.__name__ == "NoShortcutBottleneck"
    params = loaded.variables["params"]
    assert "downsample" not in params["layer2_0"]  # No shortcut at all.
    logits = loaded.model.apply(loaded.variables,
                                jnp.zeros((1, 8, 8, 3)))
    assert logits.shape == (1, 10)


def test_model_fields_override_on_a_registry_config():
    """--config.model_kwargs.<field> works on a config naming a registry
    model, where model_kwargs sets nothing itself."""
    code = ("import sys; from absl import flags; "
            "from ml_collections import config_flags; "
            "c = config_flags.DEFINE_config_file('config'); "
            "flags.FLAGS(sys.argv); "
            "from train.model_factory import build_model; "
            "m = build_model(c.value, 10, axis_name=None); "
            "print(m.stage_sizes, m.cardinality, m.zero_init_residual, "
            "m.drop_path_rate)")
    result = subprocess.run(
        [sys.executable, "-c", code,
         "--config=configs/imagenet_resnext50_32x4d.py",
         "--config.model_kwargs.stage_sizes=(1, 1, 1, 1)",
         "--config.model_kwargs.zero_init_residual=False",
         "--config.model_kwargs.drop_path_rate=0.05"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["(1,", "1,", "1,", "1)", "32", "False",
                                     "0.05"]


def test_output_stride_dilates_in_every_form():
    model = tiny_model(output_stride=8)
    variables = random_variables(model, 64)
    images = jax.random.normal(jax.random.PRNGKey(5), (2, 64, 64, 3))
    maps = model.clone(features_only=True).apply(variables, images)
    assert [m.shape[1] for m in maps] == [32, 16, 8, 8, 8]
    assert [i["reduction"] for i in model.clone(
        features_only=True).feature_info()] == [2, 4, 8, 8, 8]
    expected = model.apply(variables, images)
    for form in ("A", "B"):
        other = model.clone(block_form=form)
        np.testing.assert_allclose(
            other.apply(rx.convert_block_form(variables, to=form), images),
            expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"output_stride \(=4\) must be one "
                       r"of \(8, 16, 32\)"):
        tiny_model(output_stride=4)
    with pytest.raises(ValueError, match=r"output_stride \(=16\).*CIFAR"):
        rx.create_model("resnext29_32x4d", output_stride=16)
