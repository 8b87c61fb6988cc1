"""Faults a run survives: SIGKILL, SIGTERM, non-finite steps, damaged
checkpoints, changed configs, bad configs and bad images."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from train import data as data_lib, loop
from train.checkpoint import CheckpointError, restore_for_inference
from train.config_validation import validate_config, validate_data
from train.metrics_io import read_metrics
from train.nonfinite import NonFiniteError
from train.workdir import ConfigMismatchError
from train_helpers import REPO, tiny_config

STEPS = 24


def _config(**overrides):
    base = dict(num_train_steps=STEPS, eval_every_steps=8,
                checkpoint_every_steps=4, log_every_steps=4)
    return tiny_config(**{**base, **overrides})


def _flat(workdir):
    _, variables, _ = restore_for_inference(workdir, "latest")
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(variables)[0]}


def _assert_same_run(workdir, reference):
    expected, got = _flat(reference[0]), _flat(workdir)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == STEPS
    assert summary["test_loss"] == reference[1]["test_loss"]
    assert summary["test_accuracy"] == reference[1]["test_accuracy"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, loop.train_and_evaluate(_config(), workdir)


# The child trains through the CLI; each batch waits a little so that the
# kill lands mid-run rather than after the (fast) tiny run has finished.
_CHILD = r"""
import sys, time
from absl import app
import train.__main__ as main, train.data as data_lib
create = data_lib.create_data_source
def slow_source(*args, **kwargs):
    source = create(*args, **kwargs)
    batches = source.train_batches
    def slow(start):
        for batch in batches(start):
            time.sleep(0.05)
            yield batch
    source.train_batches = slow
    return source
data_lib.create_data_source = slow_source
sys.argv = ["train", "--config", "configs/default.py", "--workdir", WORKDIR,
            "--config.num_train_steps=24", "--config.eval_every_steps=8",
            "--config.checkpoint_every_steps=4", "--config.log_every_steps=4",
            "--config.model_kwargs.cardinality=4",
            "--config.model_kwargs.base_width=2", "--config.batch_size=16",
            "--config.eval_batch_size=64", "--config.warmup_epochs=0.0",
            "--config.progress_bar=False"]
app.run(main.main)
"""


def _start_child(workdir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=1")
    code = _CHILD.replace("WORKDIR", repr(str(workdir)))
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for_checkpoint(child, workdir, timeout=240):
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / "4").is_dir():
        assert child.poll() is None, child.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 4"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(reference, tmp_path):
    delay = random.Random().uniform(0.0, 0.8)  # 20 steps take ~1 s.
    child = _start_child(tmp_path)
    try:
        _wait_for_checkpoint(child, tmp_path)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, f"delay {delay:.2f}s"
    assert not (tmp_path / "summary.json").exists()
    loop.train_and_evaluate(_config(), tmp_path)
    _assert_same_run(tmp_path, reference)


def test_kill_after_first_best_save_resumes_from_it(reference, tmp_path,
                                                   capsys):
    """The first save of a run is often ``best/<step>`` at the first eval;
    a kill -9 just after it leaves ``checkpoints/`` empty."""
    loop.train_and_evaluate(_config(checkpoint_every_steps=1000), tmp_path,
                            stop_at_step=8)
    assert (tmp_path / "best" / "8").is_dir()
    # What the workdir holds when the kill lands before the first periodic
    # save: stop_at_step's own save to checkpoints/ never happened.
    shutil.rmtree(tmp_path / "checkpoints")
    for manifest in (tmp_path / "checksums").glob("checkpoints-*"):
        manifest.unlink()
    capsys.readouterr()
    loop.train_and_evaluate(_config(), tmp_path)
    assert f"Resuming from step 8 of {STEPS} ({tmp_path / 'best' / '8'})" in (
        capsys.readouterr().out)
    _assert_same_run(tmp_path, reference)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(reference, tmp_path):
    child = _start_child(tmp_path)
    try:
        _wait_for_checkpoint(child, tmp_path)
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 143, out[-3000:]
    assert "Preempted (SIGTERM): saving a checkpoint at step" in out
    stopped = int(out.split("checkpoint at step ")[1].split()[0])
    assert stopped < STEPS
    assert (tmp_path / "checkpoints" / str(stopped)).is_dir()
    resumed = loop.train_and_evaluate(_config(), tmp_path)
    assert resumed["completed"]
    _assert_same_run(tmp_path, reference)


# --- Non-finite steps. ---

def test_one_nonfinite_step_is_skipped_and_counted(tmp_path):
    summary = loop.train_and_evaluate(
        tiny_config(num_train_steps=4, inject_nonfinite_steps=(2,)),
        tmp_path)
    assert summary["completed"] and summary["nonfinite_steps"] == 1
    assert np.isfinite(summary["test_loss"])
    train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    # Logged at steps 2, 3, 4 (step 1 compiles and is not timed).
    assert [r["nonfinite_steps"] for r in train] == [1, 0, 0]
    assert all(np.isfinite(r["loss"]) for r in train)


def _state_dir(workdir, step):
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore((workdir / "checkpoints" / str(step) /
                             "state").absolute())


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, capsys):
    config = tiny_config(num_train_steps=8, checkpoint_every_steps=2,
                         inject_nonfinite_steps=(3, 4, 5),
                         max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteError,
                       match=r"3 consecutive .*up to step 5\).*"
                             r"max_consecutive_nonfinite"):
        loop.train_and_evaluate(config, tmp_path)
    assert "step 3: non-finite loss" in capsys.readouterr().out
    # Step 4's checkpoint (bad steps 3, 4 skipped) holds step 2's state.
    good, last = _state_dir(tmp_path, 2), _state_dir(tmp_path, 4)
    assert int(last["step"]) == 4
    for part in ("params", "batch_stats", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, last[part], good[part])
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == [2, 4]


# --- Damaged checkpoints and changed configs. ---

def _stopped_run(workdir):
    loop.train_and_evaluate(_config(), workdir, stop_at_step=12)
    return workdir / "checkpoints" / "12"


def _flip_bytes(step_dir):
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))


def _truncate_without_checksums(step_dir):
    for name in os.listdir(step_dir.parent.parent / "checksums"):
        if name.startswith("checkpoints-12"):
            os.remove(step_dir.parent.parent / "checksums" / name)
    for p in (step_dir / "state").rglob("*"):
        if p.is_file() and p.stat().st_size > 1000:
            p.write_bytes(p.read_bytes()[:100])


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate_without_checksums])
def test_damaged_latest_checkpoint_falls_back(reference, tmp_path, capsys,
                                              damage):
    damage(_stopped_run(tmp_path))
    summary = loop.train_and_evaluate(_config(), tmp_path)
    out = capsys.readouterr().out
    assert "checkpoints/12 is damaged" in out
    assert "falling back to the previous checkpoint" in out
    assert "Resuming from step 8" in out
    assert list((tmp_path / "damaged").glob("checkpoints-12-*"))
    assert summary["completed"]
    _assert_same_run(tmp_path, reference)


def test_half_written_save_is_ignored(reference, tmp_path, capsys):
    step_dir = _stopped_run(tmp_path)
    # What a save killed midway leaves: orbax's temporary directory.
    import shutil
    partial = step_dir.parent / "16.orbax-checkpoint-tmp-1234"
    shutil.copytree(step_dir, partial)
    shutil.rmtree(partial / "state")
    loop.train_and_evaluate(_config(), tmp_path)
    assert "Resuming from step 12" in capsys.readouterr().out
    _assert_same_run(tmp_path, reference)


def test_all_checkpoints_damaged_is_an_error_not_a_fresh_start(tmp_path):
    step_dir = _stopped_run(tmp_path)
    _flip_bytes(step_dir)
    _flip_bytes(step_dir.parent / "8")
    _flip_bytes(tmp_path / "best" / "8")  # The eval at step 8 kept it.
    with pytest.raises(CheckpointError, match="every checkpoint .* damaged"):
        loop.train_and_evaluate(_config(), tmp_path)


def test_damaged_latest_checkpoints_fall_back_to_an_intact_best(tmp_path,
                                                                capsys):
    step_dir = _stopped_run(tmp_path)
    _flip_bytes(step_dir)
    _flip_bytes(step_dir.parent / "8")
    capsys.readouterr()
    summary = loop.train_and_evaluate(_config(), tmp_path)
    out = capsys.readouterr().out
    assert f"Resuming from step 8 of {STEPS} ({tmp_path / 'best' / '8'})" in (
        out)
    assert summary["completed"]
    assert len(list((tmp_path / "damaged").iterdir())) == 2


@pytest.mark.slow
def test_changed_model_is_refused_with_the_fields(tmp_path):
    loop.train_and_evaluate(tiny_config(num_train_steps=2), tmp_path)
    config = tiny_config(num_train_steps=4)
    config.model_kwargs.cardinality = 2
    with pytest.raises(ConfigMismatchError,
                       match=r"model_kwargs: .*'cardinality': 4.* -> .*"
                             r"'cardinality': 2.*allow_config_change"):
        loop.train_and_evaluate(config, tmp_path)
    # Overriding a change that keeps the parameter shapes resumes.
    summary = loop.train_and_evaluate(
        tiny_config(num_train_steps=4, image_size=16,
                    allow_config_change=True), tmp_path)
    assert summary["steps"] == 4


# --- Config validation before compiling. ---

@pytest.mark.parametrize("field,value,processes", [
    ("batch_size", 20, 1),  # not divisible by 8 devices.
    ("batch_size", 24, 16),  # not divisible by 16 processes.
    ("max_consecutive_nonfinite", 0, 1),
    ("bad_images", "ignore", 1),
    ("inject_nonfinite_steps", (0,), 1),
    ("base_learning_rate", -1.0, 1),
    ("dataset", "imagenet", 1),
    ("model", "resnext9", 1),
])
def test_bad_value_names_the_field(field, value, processes):
    config = tiny_config(batch_size=16)
    config[field] = value
    with pytest.raises(ValueError, match=rf"config\.{field} \("):
        validate_config(config, num_devices=8, num_processes=processes)


def test_eval_batch_larger_than_the_split_names_the_field():
    config = tiny_config(eval_batch_size=400)
    source = data_lib.create_data_source(config)
    with pytest.raises(ValueError, match=r"config\.eval_batch_size \(=400\) "
                                         r"must not exceed the 360"):
        validate_data(config, source)


# --- Bad images in an image folder. ---

def _folder_with_bad_images(root):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), np.uint8)).save(
                root / name / f"{i}.png")
    (root / "cat" / "corrupt.jpg").write_bytes(b"not an image at all")
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[:len(good) // 2])
    return [str(root / "cat" / "corrupt.jpg"),
            str(root / "dog" / "truncated.png")]


def test_bad_images_are_reported_and_skipped(tmp_path, capsys):
    bad = _folder_with_bad_images(tmp_path / "images")
    config = tiny_config(dataset="folder", data_dir=str(tmp_path / "images"),
                         folder_eval_fraction=0.34, batch_size=4,
                         eval_batch_size=4)
    source = data_lib.create_data_source(config)
    out = capsys.readouterr().out
    for path in bad:
        assert path in out
    assert source.num_train_examples + source.num_eval_examples == 12
    batches = source.train_batches(0)  # A whole epoch, and eval: no crash.
    for _ in range(source.steps_per_epoch):
        assert np.isfinite(next(batches)["image"]).all()
    assert sum(b["mask"].sum() for b in source.eval_batches()) == \
        source.num_eval_examples


def test_bad_images_fail_fast_by_config(tmp_path):
    bad = _folder_with_bad_images(tmp_path / "images")
    config = tiny_config(dataset="folder", data_dir=str(tmp_path / "images"),
                         bad_images="fail", batch_size=4, eval_batch_size=4)
    with pytest.raises(ValueError, match="bad_images='fail'") as error:
        data_lib.create_data_source(config)
    for path in bad:
        assert path in str(error.value)


@pytest.mark.slow
def test_memory_soak_benchmark_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "memory_soak.py"),
         "--steps", "30", "--every", "10", "--out", str(tmp_path / "m.json")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "m.json").read_text())
    assert [r["step"] for r in result["rows"]] == [10, 20, 30]
    assert all(r["peak_rss_mib"] > 0 for r in result["rows"])
