"""The recipe configs (paper ImageNet, torchvision V2, paper CIFAR) train
at a tiny size (tests/test_train_config.py validates them at full size);
the V2 recipe, with EMA, Mixup/CutMix, TrivialAugment and random erasing on,
resumes bit-exactly."""

import importlib
import json

import jax
import numpy as np
import pytest

from train import loop
from train.checkpoint import restore_for_inference
from train_helpers import short_run

pytest.importorskip("tensorflow")


def _write_folder(root, classes=3, per_class=6, size=(40, 48)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size + (3,), np.uint8)
            pixels[..., c] = 240
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.jpg")
    return root


def _tiny(config, data_dir, **overrides):
    """The recipe with its training rules kept and its sizes shrunk: an
    image folder, a one-block-per-stage model with 2 groups, 32 px."""
    stages = len(config.model_kwargs.stage_sizes or ()) or (
        3 if "resnext29" in config.model else 4)
    config.model_kwargs.stage_sizes = (1,) * stages
    config.model_kwargs.cardinality = 2
    config.model_kwargs.base_width = 2
    config.dataset = "folder"
    config.data_dir = str(data_dir)
    config.train_split = "train"
    config.folder_eval_fraction = 0.34
    config.compute_dtype = "float32"
    config.batch_size = 4
    config.eval_batch_size = 6
    config.shuffle_buffer_size = 16
    config.num_train_steps = 2
    if config.eval_image_size > 0:  # Keep a train/eval size difference.
        config.image_size, config.eval_image_size = 24, 32
        config.eval_resize_size = 36
    else:
        config.image_size = 32
    return short_run(config, **overrides)


def _recipe(name):
    return importlib.import_module(f"configs.{name}").get_config()


def test_tv2_recipe_is_torchvisions():
    config = _recipe("imagenet_resnext50_32x4d_tv2")
    assert (config.batch_size, config.base_learning_rate, config.num_epochs,
            config.warmup_epochs, config.lr_schedule) == (1024, 0.5, 600.0,
                                                          5.0, "cosine")
    assert (config.weight_decay, config.weight_decay_bn,
            config.label_smoothing, config.mixup_alpha, config.cutmix_alpha,
            config.auto_augment, config.random_erase) == (
                2e-5, False, 0.1, 0.2, 1.0, "ta_wide", 0.1)
    assert (config.image_size, config.eval_image_size,
            config.eval_resize_size) == (176, 224, 232)
    assert config.model_ema and config.model_ema_steps == 32


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagenet_resnext50_32x4d",
                                  "cifar10_resnext29_8x64d"])
def test_paper_recipes_train_two_steps(name, tmp_path):
    data = _write_folder(tmp_path / "images")
    summary = loop.train_and_evaluate(_tiny(_recipe(name), data),
                                      tmp_path / "run")
    assert summary["completed"] and summary["steps"] == 2
    assert np.isfinite(summary["test_loss"])


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


def _saved_state(workdir):
    """The whole train state of the latest checkpoint, as saved."""
    import orbax.checkpoint as ocp
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir()
               if p.name.isdigit())
    with ocp.StandardCheckpointer() as reader:
        return reader.restore(
            (workdir / "checkpoints" / str(step) / "state").absolute())


@pytest.mark.slow
def test_tv2_recipe_trains_and_resumes_bit_exactly(tmp_path):
    """Two steps, a stop (as a preemption: the checkpoint a kill would
    resume from), two more; against four uninterrupted steps. EMA every
    step, so that the average changes at each."""
    data = _write_folder(tmp_path / "images")
    overrides = dict(num_train_steps=4, model_ema_steps=1, random_erase=0.5)
    config = _tiny(_recipe("imagenet_resnext50_32x4d_tv2"), data,
                   **overrides)
    resumed = tmp_path / "resumed"
    first = loop.train_and_evaluate(config, resumed, stop_at_step=2)
    assert first["steps"] == 2 and not first["completed"]
    summary = loop.train_and_evaluate(config, resumed)
    reference = loop.train_and_evaluate(
        _tiny(_recipe("imagenet_resnext50_32x4d_tv2"), data, **overrides),
        tmp_path / "reference")
    assert summary["steps"] == reference["steps"] == 4
    for which in (resumed, tmp_path / "reference"):
        assert json.loads((which / "dataset.json").read_text())[
            "preprocessing"]["resize_size"] == 36
    # The whole state: weights, statistics, optimizer, the average.
    got = _flat(_saved_state(resumed))
    expected = _flat(_saved_state(tmp_path / "reference"))
    assert any("ema" in key for key in expected)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # What inference loads is the average.
    ema = _flat(restore_for_inference(resumed, "latest")[1])
    np.testing.assert_array_equal(
        ema["['params']['fc']['kernel']"],
        expected["['ema']['params']['fc']['kernel']"])
    assert summary["test_weights"] == "ema"
    for key in ("test_loss", "test_accuracy_raw", "test_accuracy_ema"):
        assert summary[key] == reference[key], key
