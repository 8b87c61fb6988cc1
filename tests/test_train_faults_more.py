"""More faults: bad numbers in the config, late SIGTERM, restarts of a
workdir that lost its checkpoints, resumes with another config, two runs on
one workdir, a full disk, bad command lines, torn metric files and dead
image-folder classes."""

import errno
import json
import math
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from train import loop
from train.checkpoint import CheckpointError
from train.config_validation import validate_config
from train.nonfinite import NonFiniteError
from train.preemption import PreemptionWatcher
from train.workdir import ConfigMismatchError, WorkdirError
from train_helpers import REPO, tiny_config


def _checkpoint_steps(workdir, kind="checkpoints"):
    return sorted(int(p.name) for p in (workdir / kind).iterdir()
                  if p.name.isdigit())


def _saved_state(workdir, step, kind="checkpoints"):
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as reader:
        return reader.restore((workdir / kind / str(step) /
                               "state").absolute())


# --- Non-finite hyperparameters. ---

@pytest.mark.parametrize("field", ["base_learning_rate", "momentum",
                                   "weight_decay", "warmup_epochs"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_number_is_refused_naming_the_field(field, value):
    config = tiny_config()
    config[field] = value
    with pytest.raises(ValueError,
                       match=rf"config\.{field} \(={value}\) must be a "
                             "finite number"):
        validate_config(config)


def test_nonfinite_state_is_never_applied_or_saved(tmp_path, monkeypatch):
    # Past validation (as a NaN from elsewhere would be): the gradients of
    # step 1 are finite, its update is not.
    monkeypatch.setattr(loop, "validate_config", lambda *a, **k: None)
    config = tiny_config(num_train_steps=8, momentum=math.nan,
                         checkpoint_every_steps=2,
                         max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteError, match=r"3 consecutive .*step 3\)"):
        loop.train_and_evaluate(config, tmp_path)
    assert _checkpoint_steps(tmp_path) == [2]
    state = _saved_state(tmp_path, 2)
    for part in ("params", "batch_stats", "opt_state"):
        for leaf in jax.tree.leaves(state[part]):
            assert np.isfinite(leaf).all(), part


# --- SIGTERM between logging steps; two runs on one workdir. ---

# The child trains through the CLI, slowly (each batch waits), printing the
# index of each batch it reads.
_CHILD = r"""
import sys, time
from absl import app
import train.__main__ as main, train.data as data_lib
create = data_lib.create_data_source
def slow_source(*args, **kwargs):
    source = create(*args, **kwargs)
    batches = source.train_batches
    def slow(start):
        for i, batch in enumerate(batches(start), start):
            time.sleep(0.1)
            print("batch", i, flush=True)
            yield batch
    source.train_batches = slow
    return source
data_lib.create_data_source = slow_source
sys.argv = ["train", "--config", "configs/default.py", "--workdir", WORKDIR,
            "--config.model_kwargs.cardinality=4",
            "--config.model_kwargs.base_width=2", "--config.batch_size=16",
            "--config.eval_batch_size=64", "--config.warmup_epochs=0.0",
            "--config.progress_bar=False", "--config.num_train_steps=200",
            "--config.log_every_steps=1000", "--config.eval_every_steps=1000",
            "--config.checkpoint_every_steps=1000"]
app.run(main.main)
"""


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=1")
    return env


def _wait_for_line(child, prefix, timeout=240):
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no {prefix!r} line:\n" + "".join(lines)[-3000:])


def _signal_training_child(workdir, signum, while_running=None):
    """Starts the slow CLI child on ``workdir``, sends ``signum`` after its
    fifth batch (first calling ``while_running(child)``); returns its exit
    status and output."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.replace("WORKDIR", repr(str(workdir)))],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(child, "batch 5")
        if while_running:
            while_running(child)
        child.send_signal(signum)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, out


def _stopped_step(out, line_start):
    stopped = int(out.split(f"{line_start}: saving a checkpoint at step ")[1]
                  .split()[0])
    # Logging (and so, before, the signal check) is every 1000 steps.
    assert stopped < 100, out[-3000:]
    return stopped


@pytest.mark.slow
def test_sigterm_stops_at_the_next_step_and_the_lock_keeps_others_out(
        tmp_path):
    def second_run_is_refused(child):
        with pytest.raises(WorkdirError,
                           match=rf"in use by process {child.pid} on host "
                                 rf"{socket.gethostname()}"):
            loop.train_and_evaluate(tiny_config(num_train_steps=200),
                                    tmp_path)

    status, out = _signal_training_child(tmp_path, signal.SIGTERM,
                                         second_run_is_refused)
    assert status == 143, out[-3000:]
    stopped = _stopped_step(out, "Preempted (SIGTERM)")
    assert _checkpoint_steps(tmp_path) == [stopped]
    assert not (tmp_path / "lock").exists()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    status, out = _signal_training_child(tmp_path, signal.SIGINT)
    assert status == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    stopped = _stopped_step(out, "Interrupted (Ctrl-C)")
    assert _checkpoint_steps(tmp_path) == [stopped]
    assert not (tmp_path / "lock").exists()


def test_second_ctrl_c_aborts_at_once():
    previous = signal.getsignal(signal.SIGINT)
    with PreemptionWatcher() as watcher:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # The handler runs in the main thread.
        assert watcher.requested(1) and watcher.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is previous


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "lock").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname()}))
    summary = loop.train_and_evaluate(tiny_config(num_train_steps=2),
                                      tmp_path)
    assert summary["completed"]
    assert f"taking over {tmp_path / 'lock'} of process {dead.pid}" in (
        capsys.readouterr().out)
    assert not (tmp_path / "lock").exists()


# --- A workdir that lost its checkpoints; a resume with another config. ---

def _damage(step_dir):
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))


def test_lost_checkpoints_are_not_a_silent_fresh_start(tmp_path, capsys):
    config = tiny_config(num_train_steps=4)
    loop.train_and_evaluate(config, tmp_path, stop_at_step=2)
    _damage(tmp_path / "checkpoints" / "2")
    with pytest.raises(CheckpointError, match="every checkpoint"):
        loop.train_and_evaluate(config, tmp_path)
    # What a requeued job does next: run the same command again.
    with pytest.raises(WorkdirError, match=r"every checkpoint it held was "
                       r"damaged and set aside in .*damaged \(checkpoints-2-"
                       r".*--config\.restart_from_scratch=True"):
        loop.train_and_evaluate(config, tmp_path)
    capsys.readouterr()
    summary = loop.train_and_evaluate(
        tiny_config(num_train_steps=4, restart_from_scratch=True), tmp_path)
    assert summary["completed"] and summary["steps"] == 4
    assert "Resuming" not in capsys.readouterr().out


def test_deleted_checkpoints_are_named_as_deleted(tmp_path):
    config = tiny_config(num_train_steps=4)
    loop.train_and_evaluate(config, tmp_path, stop_at_step=2)
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(WorkdirError, match=r"first at step 2.* hold none: "
                       r"they were deleted") as error:
        loop.train_and_evaluate(config, tmp_path)
    assert "damaged" not in str(error.value)


def test_another_network_under_allow_config_change_is_one_clear_error(
        tmp_path, capfd):
    loop.train_and_evaluate(tiny_config(num_train_steps=4), tmp_path,
                            stop_at_step=2)
    wider = tiny_config(num_train_steps=4, allow_config_change=True)
    wider.model_kwargs.base_width = 4
    capfd.readouterr()
    with pytest.raises(CheckpointError, match=r"checkpoints/2 holds another "
                       r"network than this config's \(.*: \(8,\) -> \(16,\)"
                       r".*--config\.init_from=") as error:
        loop.train_and_evaluate(wider, tmp_path)
    assert "strict" not in str(error.value)
    assert "Metadata file" not in capfd.readouterr().err
    assert (tmp_path / "checkpoints" / "2").is_dir()  # Not set aside.


def test_resume_with_another_data_order_is_refused(tmp_path, capsys):
    loop.train_and_evaluate(tiny_config(num_train_steps=4), tmp_path,
                            stop_at_step=2)
    original = (tmp_path / "config.json").read_text()
    with pytest.raises(ConfigMismatchError,
                       match=r"step 2 .*batch_size: 16 -> 32; seed: 0 -> 7"
                             r".*allow_config_change=True"):
        loop.train_and_evaluate(
            tiny_config(num_train_steps=4, batch_size=32, seed=7), tmp_path)
    assert (tmp_path / "config.json").read_text() == original
    capsys.readouterr()
    summary = loop.train_and_evaluate(
        tiny_config(num_train_steps=4, seed=7, allow_config_change=True),
        tmp_path)
    assert summary["completed"]
    out = capsys.readouterr().out
    assert "Config changed at step 2: seed: 0 -> 7" in out
    assert "config_history.jsonl" in out
    history = [json.loads(line) for line in
               (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [0, 2]
    assert history[0]["config"]["seed"] == 0
    assert history[1]["changes"] == {"seed": [0, 7]}
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 7


# --- Config mistakes through the command line. ---

@pytest.mark.parametrize("args,status,message", [
    (["--config.batch_sise=8"], 2,
     "the config has no field 'batch_sise' (did you mean 'batch_size'?)"),
    (["--config", "configs/nope.py", "--config.seed=1"], 2,
     "--config configs/nope.py: no such file"),
    (["--workdir", "FILE"], 1, "is a file, not a directory"),
    (["--config.momentum=nan"], 1,
     "config.momentum (=nan) must be a finite number."),
])
def test_command_line_mistake_is_one_error_line(tmp_path, args, status,
                                                message):
    (tmp_path / "file").write_text("")
    args = [str(tmp_path / "file") if a == "FILE" else a for a in args]
    if "--workdir" not in args:
        args += ["--workdir", str(tmp_path / "run")]
    result = subprocess.run(
        [sys.executable, "-m", "train", *args,
         "--config.num_train_steps=1"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]


def test_read_only_workdir_is_refused_before_training(tmp_path,
                                                      monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if str(path) == str(tmp_path) else real_access(path, mode)))
    with pytest.raises(WorkdirError, match=r"is not writable"):
        loop.train_and_evaluate(tiny_config(), tmp_path / "run")


# --- A metrics file torn by a kill mid-write. ---

def test_torn_metrics_line_is_tolerated_and_repaired(tmp_path, capsys):
    from train.metrics_io import MetricWriter, read_metrics
    from train.plot import main as plot_main

    writer = MetricWriter(tmp_path)
    writer.write(1, "train", {"loss": 2.0, "accuracy": 0.1})
    writer.write(1, "eval", {"loss": 2.5, "accuracy": 0.2})
    writer.close()
    path = tmp_path / "metrics.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 2, "split": "train", "lo')
    assert [(r["split"], r["step"]) for r in read_metrics(tmp_path)] == [
        ("eval", 1), ("train", 1)]
    plot_main([str(tmp_path), "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0
    writer = MetricWriter(tmp_path)  # As a resumed run does.
    writer.write(2, "train", {"loss": 1.5, "accuracy": 0.3})
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in records] == [
        ("train", 1), ("eval", 1), ("train", 2)]
    assert "partial last line" in capsys.readouterr().out


# --- Image-folder classes with nothing to train on. ---

def _folder(root, files_per_class):
    """``files_per_class``: class -> list of (file name, PIL format or
    None for junk bytes)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for name, files in files_per_class.items():
        (root / name).mkdir(parents=True)
        for file_name, fmt in files:
            if fmt is None:
                (root / name / file_name).write_bytes(b"not an image")
            else:
                Image.fromarray(rng.integers(0, 255, (10, 12, 3), np.uint8)
                                ).save(root / name / file_name, fmt)
    return str(root)


def _folder_config(data_dir):
    return tiny_config(dataset="folder", data_dir=data_dir, batch_size=4,
                       eval_batch_size=4, folder_eval_fraction=0.25)


@pytest.mark.parametrize("bad,reason", [
    ([(f"{i}.tif", "TIFF") for i in range(4)], r"unsupported file types "
     r"\(4 \.tif\)"),
    ([(f"{i}.jpg", None) for i in range(4)],
     r"4 unusable image\(s\), listed above\."),
])
def test_class_with_nothing_to_train_on_is_named(tmp_path, bad, reason):
    from train import data as data_lib
    from train.data.image_check import BadImageError

    good = [(f"{i}.png", "PNG") for i in range(4)]
    data_dir = _folder(tmp_path / "images", {"cat": good, "dog": bad})
    with pytest.raises(BadImageError,
                       match=rf"no training image for class 'dog': {reason}"):
        data_lib.create_data_source(_folder_config(data_dir))


def test_bmp_gif_and_webp_train_and_others_are_listed(tmp_path, capsys):
    from train import data as data_lib

    data_dir = _folder(tmp_path / "images", {
        "a": [("0.bmp", "BMP"), ("1.bmp", "BMP"), ("2.gif", "GIF"),
              ("3.webp", "WEBP"), ("4.tif", "TIFF")],
        "b": [(f"{i}.png", "PNG") for i in range(4)]})
    source = data_lib.create_data_source(_folder_config(data_dir))
    assert source.num_train_examples + source.num_eval_examples == 8
    assert "4.tif" in capsys.readouterr().out
    batch = next(source.train_batches(0))
    assert np.isfinite(batch["image"]).all()


# --- config.download=True failing. ---

def test_failed_download_says_the_true_cause(monkeypatch):
    from train.data import DataError, tf_pipelines

    class Builder:
        def download_and_prepare(self, **kwargs):
            raise ModuleNotFoundError("No module named 'importlib_resources'",
                                      name="importlib_resources")

    monkeypatch.setattr(tf_pipelines.tfds, "builder",
                        lambda *args, **kwargs: Builder())
    config = tiny_config(dataset="cifar10", download=True)
    with pytest.raises(DataError) as error:
        tf_pipelines.create_tf_source(config, 0, 1)
    message = str(error.value)
    assert "with config.download=True failed" in message
    assert "No module named 'importlib_resources'" in message
    assert "pip install" in message
    assert "download is False" not in message


def test_train_extra_declares_what_downloads_need():
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("importlib_resources")
               for r in project["optional-dependencies"]["train"])


# --- A full disk while saving. ---

def test_full_disk_while_saving_keeps_earlier_checkpoints(tmp_path,
                                                          monkeypatch):
    import orbax.checkpoint as ocp
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step != 4:
            return real_save(self, step, *args, **kwargs)
        # What orbax leaves and raises when tensorstore hits a full disk.
        partial = (pathlib.Path(self.directory) / f"{step}.orbax-checkpoint-tmp"
                   / "state.orbax-checkpoint-tmp")
        partial.mkdir(parents=True)
        (partial / "chunk").write_bytes(b"x" * 1000)
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params.fc.kernel/0" in OCDBT '
            f'database at local file "{partial}/": Failed to write 686069 '
            "bytes to file 21: No space left on device "
            "[os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(CheckpointError,
                       match=r"^no space left on .*checkpoints \(saving step "
                             r"4\).*earlier checkpoints kept \(2\)"):
        loop.train_and_evaluate(
            tiny_config(num_train_steps=8, checkpoint_every_steps=2),
            tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "2"]
    assert not (tmp_path / "lock").exists()


def test_disk_full_is_recognised_through_wrappers():
    from train.checkpoint import _no_space
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as wrapped:
        assert _no_space(wrapped)
    assert not _no_space(RuntimeError("another failure"))


def test_processes_agree_on_sigterm_every_few_steps(monkeypatch):
    from jax.experimental import multihost_utils
    from train import preemption

    gathered = []

    def allgather(flag):
        gathered.append(int(flag))
        return np.asarray([int(flag), 0])  # Process 1 got no SIGTERM.

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    watcher = preemption.PreemptionWatcher()
    watcher._handle(signal.SIGTERM, None)
    every = preemption.SYNC_EVERY_STEPS
    decisions = [watcher.requested(step) for step in range(1, 2 * every + 1)]
    # Every process stops at the same step: the first agreement.
    assert decisions.index(True) == every - 1
    assert len(gathered) == 2 and every <= 10
