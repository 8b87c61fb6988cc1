"""The V2 recipe's parts on their own: Mixup/CutMix (train/mixing.py)
against torchvision.transforms.v2, the EMA rule (train/ema.py), and the
config fields that turn them on."""

import unittest.mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import ema as ema_lib, mixing
from train.config_validation import validate_config
from train.workdir import ConfigMismatchError, check_optimizer_state
from train_helpers import tiny_config

NUM_CLASSES = 5


def _batch(seed=0, n=6, size=(9, 13)):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n,) + size + (3,)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, n)
    return images, labels


def _torchvision(kind, images, labels, lam, center=None):
    """torchvision's v2 MixUp/CutMix with its draws fixed."""
    torch = pytest.importorskip("torch")
    v2 = pytest.importorskip("torchvision.transforms.v2")
    transform = (v2.MixUp if kind == "mixup" else v2.CutMix)(
        num_classes=NUM_CLASSES)
    transform._dist = unittest.mock.Mock(
        sample=lambda shape=(): torch.tensor(lam))
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(labels)
    if center is None:
        out = transform(x, y)
    else:  # randint(W) then randint(H).
        draws = iter([torch.tensor([center[1]]), torch.tensor([center[0]])])
        with unittest.mock.patch.object(torch, "randint",
                                        lambda *a, **k: next(draws)):
            out = transform(x, y)
    return out[0].numpy().transpose(0, 2, 3, 1), out[1].numpy()


def _one_hot(labels):
    return np.asarray(jax.nn.one_hot(labels, NUM_CLASSES))


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.97])
def test_mixup_is_torchvisions(lam):
    images, labels = _batch()
    x, y = mixing.mixup(images, _one_hot(labels), lam)
    tx, ty = _torchvision("mixup", images, labels, lam)
    # Within an ulp: XLA may contract the multiply-add into one FMA.
    np.testing.assert_allclose(np.asarray(x), tx, rtol=2e-7, atol=1e-7)
    np.testing.assert_allclose(np.asarray(y), ty, rtol=0, atol=1e-7)


@pytest.mark.parametrize("lam,center", [(0.5, (4, 6)), (0.1, (0, 0)),
                                        (0.8, (8, 12)), (0.999, (3, 3)),
                                        (0.0, (5, 2))])
def test_cutmix_is_torchvisions(lam, center):
    images, labels = _batch(1)
    x, y = mixing.cutmix(images, _one_hot(labels), lam, *center)
    tx, ty = _torchvision("cutmix", images, labels, lam, center)
    np.testing.assert_array_equal(np.asarray(x), tx)
    np.testing.assert_allclose(np.asarray(y), ty, rtol=0, atol=1e-6)


def test_make_mix_draws_both_and_keeps_targets_distributions():
    images, labels = _batch(2)
    mix = jax.jit(mixing.make_mix(0.2, 1.0))
    pasted = blended = 0
    for seed in range(20):
        x, y = mix(jax.random.PRNGKey(seed), images, _one_hot(labels))
        np.testing.assert_allclose(np.asarray(y).sum(-1), 1.0, rtol=1e-6)
        changed = ~np.isclose(np.asarray(x), images)
        # CutMix copies pixels unchanged from the previous image; Mixup
        # changes every pixel (unless lambda is 1).
        copied = np.isclose(np.asarray(x), np.roll(images, 1, 0))
        if changed.any() and np.all(copied | ~changed):
            pasted += 1
        elif changed.all():
            blended += 1
    assert pasted and blended
    assert mixing.make_mix(0.0, 0.0) is None


def test_ema_rule_is_torchvisions():
    """First update copies; later ones average; during warmup epochs the
    count is reset (so the average copies again); only every N steps."""
    params = {"w": jnp.zeros(2)}
    ema = ema_lib.init(params, {})
    update = jax.jit(lambda e, p, step: ema_lib.update(
        e, p, {}, step=step, steps_per_epoch=4, every=2, decay=0.5,
        warmup_epochs=1.0))
    expected_w, expected_count = 0.0, 0
    for step in range(12):
        value = float(step + 1)
        ema = update(ema, {"w": jnp.full(2, value)}, step)
        if step % 4 % 2 == 0:  # Due.
            expected_w = (value if expected_count == 0
                          else 0.5 * expected_w + 0.5 * value)
            expected_count = 0 if step < 4 else expected_count + 1
        np.testing.assert_allclose(ema.params["w"], expected_w)
        assert int(ema.count) == expected_count, step


def test_ema_decay_is_rescaled_as_torchvision_does():
    # train.py: alpha = (1 - decay) * world_size * batch_size * steps / epochs
    assert ema_lib.decay_per_update(0.99998, 1024, 32, 600) == pytest.approx(
        1 - 2e-5 * 1024 * 32 / 600, rel=1e-12)
    assert ema_lib.decay_per_update(0.9, 1024, 32, 1) == 0.0  # alpha <= 1


@pytest.mark.parametrize("field,value", [
    ("auto_augment", "autoaugment"), ("ra_magnitude", 31),
    ("random_erase", 1.5), ("mixup_alpha", -0.1), ("cutmix_alpha", -1.0),
    ("model_ema_decay", 1.0), ("model_ema_steps", 0),
    ("lamb_max_grad_norm", -1.0), ("eval_image_size", 0),
    ("eval_resize_size", -5)])
def test_bad_recipe_field_is_refused(field, value):
    config = tiny_config(dataset="folder", data_dir="/data")
    config[field] = value
    with pytest.raises(ValueError, match=rf"config\.{field} \("):
        validate_config(config)


def test_eval_resize_below_the_crop_is_refused():
    config = tiny_config(dataset="folder", data_dir="/data",
                         eval_image_size=224, eval_resize_size=200)
    with pytest.raises(ValueError, match=r"eval_resize_size \(=200\).*224"):
        validate_config(config)


@pytest.mark.parametrize("field,value", [("auto_augment", "ta_wide"),
                                         ("random_erase", 0.1)])
def test_image_augmentations_are_refused_for_the_digits(field, value):
    with pytest.raises(ValueError, match=rf"config\.{field}.*digits"):
        validate_config(tiny_config(**{field: value}))


def test_turning_ema_on_when_resuming_is_refused(tmp_path):
    """A checkpoint without a moving average cannot restore into a state
    with one (nor the other way round)."""
    from train.workdir import CONFIG_FILE
    (tmp_path / CONFIG_FILE).write_text(tiny_config().to_json())
    with pytest.raises(ConfigMismatchError, match="model_ema"):
        check_optimizer_state(tmp_path, tiny_config(model_ema=True))
