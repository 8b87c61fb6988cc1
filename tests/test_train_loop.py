"""The training loop: outputs of a run, resume, inference loading, CLI."""

import json

import jax
import numpy as np
import pytest

from resnext_jax.layers.conv import resolve_conv_impl
from train import loop
from train.checkpoint import restore_for_inference
from train.workdir import load_dataset_info
from train.metrics_io import read_metrics
from train.model_factory import model_overrides
from train.plot import plot_curves
from train_helpers import run_python, tiny_config

STEPS = 6


def _config():
    # Eval and checkpoints mid-run, so that resume crosses both.
    return tiny_config(num_train_steps=STEPS, eval_every_steps=2,
                       checkpoint_every_steps=2, log_every_steps=2)


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    summary = loop.train_and_evaluate(_config(), workdir)
    return workdir, summary


def test_run_writes_summary_metrics_events_and_config(full_run):
    workdir, summary = full_run
    saved = json.loads((workdir / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "steps", "examples_per_second",
                "wall_seconds"):
        assert saved[key] is not None, key
    assert saved["steps"] == STEPS and saved["completed"]
    assert saved["test_examples"] == 360
    assert saved == json.loads(json.dumps(summary))
    records = read_metrics(workdir)
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert {"loss", "accuracy", "learning_rate",
            "examples_per_second"} <= set(train[-1])
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    config = json.loads((workdir / "config.json").read_text())
    assert config["num_train_steps"] == STEPS
    assert load_dataset_info(workdir)["class_names"] == [
        str(i) for i in range(10)]
    assert (workdir / "best").is_dir()


def test_plot_writes_a_png(full_run, tmp_path):
    workdir, _ = full_run
    out = plot_curves(workdir, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_restore_for_inference_reproduces_eval(full_run):
    workdir, summary = full_run
    from train import data as data_lib

    model, variables, class_names = restore_for_inference(workdir, "latest")
    assert class_names == [str(i) for i in range(10)]
    assert model.axis_name is None
    source = data_lib.create_data_source(tiny_config())
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    correct = count = 0
    for batch in source.eval_batches():
        predicted = np.argmax(apply(variables, batch["image"]), -1)
        correct += float(((predicted == batch["label"]) * batch["mask"]).sum())
        count += float(batch["mask"].sum())
    assert count == 360
    assert correct / count == pytest.approx(summary["test_accuracy"])


def test_run_traces_only_its_own_platforms_lowering(tmp_path):
    # The run compiles for this process's devices, so its step holds one
    # lowering, not a per-platform conditional; the bundle it writes keeps
    # "auto" for wherever the model is served.
    config = tiny_config()
    assert model_overrides(config).get("conv_impl", "auto") == "auto"
    run = loop.setup(config, tmp_path)
    state = run.init_state()
    batch = next(iter(run.source.train_batches(0)))
    step = str(jax.make_jaxpr(run.train_step)(state, batch))
    assert "platform_index" not in step
    # The 3x3 convolutions of this platform's lowering: oneDNN's calls on
    # CPU, XLA's convolution elsewhere.
    assert ("resnext_onednn_conv" if resolve_conv_impl("auto") == "onednn"
            else "conv_general_dilated") in step


def test_model_bundle_keeps_the_per_platform_lowering(full_run):
    workdir, _ = full_run
    model, _, _ = restore_for_inference(workdir, "latest")
    assert model.conv_impl == "auto"
    apply = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3)),
                           train=False)
    assert "platform_index" in str(apply(variables, np.zeros((1, 8, 8, 3))))


def test_resume_after_stop_equals_uninterrupted_run(full_run, tmp_path):
    workdir, summary = full_run
    stopped = loop.train_and_evaluate(_config(), tmp_path, stop_at_step=3)
    assert stopped["steps"] == 3 and not stopped["completed"]
    assert not (tmp_path / "summary.json").exists()
    resumed = loop.train_and_evaluate(_config(), tmp_path)
    assert resumed["steps"] == STEPS
    _, expected, _ = restore_for_inference(workdir, "latest")
    _, got, _ = restore_for_inference(tmp_path, "latest")
    expected, got = _flat(expected), _flat(got)
    for key in expected:  # Same program, same data, same state: same bits.
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert resumed["test_loss"] == summary["test_loss"]
    assert resumed["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.slow
def test_cli_with_overrides(tmp_path):
    out = run_python(
        "import sys; from absl import app; import train.__main__ as m; "
        "sys.argv = ['train', '--config', 'configs/default.py', "
        f"'--workdir', {str(tmp_path)!r}, '--config.num_train_steps=2', "
        "'--config.model_kwargs.cardinality=4', "
        "'--config.model_kwargs.base_width=2', '--config.batch_size=16', "
        "'--config.progress_bar=False']; app.run(m.main)")
    assert "done: test accuracy" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["batch_size"] == 16


def test_rerunning_a_finished_workdir_keeps_its_summary(full_run):
    workdir, summary = full_run
    before = (workdir / "summary.json").read_text()
    again = loop.train_and_evaluate(_config(), workdir)
    assert (workdir / "summary.json").read_text() == before
    assert again["test_accuracy"] == summary["test_accuracy"]
    assert again["examples_per_second"] == summary["examples_per_second"]


def test_run_leaves_a_bundle_that_reproduces_its_eval(full_run):
    import resnext_jax as rx
    workdir, summary = full_run
    model, variables, preprocessing, names = rx.load_pretrained(workdir)
    assert names == [str(i) for i in range(10)]
    assert preprocessing.crop_size == 8
    config = json.loads((workdir / "model" / "model.json").read_text())
    assert config["extra"]["step"] == STEPS  # The final state.
    _, expected, _ = restore_for_inference(workdir, "latest")
    assert _flat(variables).keys() == _flat(expected).keys()
    for key, value in _flat(expected).items():
        np.testing.assert_array_equal(_flat(variables)[key], value)


def test_bundle_command_rebuilds_a_missing_bundle(full_run, tmp_path):
    """A workdir trained before bundles: python -m train.bundle writes one
    from its checkpoint, with the preprocessing of its old dataset.json."""
    import shutil

    import resnext_jax as rx
    from train import bundle

    workdir, _ = full_run
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    shutil.rmtree(old / "model")
    info = json.loads((old / "dataset.json").read_text())
    spec = info.pop("preprocessing")
    info.update(mean=spec["mean"], std=spec["std"])  # The old format.
    (old / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(FileNotFoundError, match="python -m train.bundle"):
        rx.load_pretrained(old)
    bundle.main([str(old), "--which", "latest"])
    loaded = rx.load_pretrained(old)
    new = rx.Preprocessing.from_dict(spec)
    for field in ("resize_size", "crop_size", "mean", "std"):
        assert getattr(loaded.preprocessing, field) == getattr(new, field)
    _, expected, _ = restore_for_inference(old, "latest")
    for key, value in _flat(expected).items():
        np.testing.assert_array_equal(_flat(loaded.variables)[key], value)
