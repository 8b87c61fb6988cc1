"""``python -m train.sweep`` and ``python -m train.compare``: a grid of runs
survives a SIGKILL of the sweep (finished runs are not trained again, the
interrupted one resumes), bad grids are refused before anything trains, and
compare's statistics are those of the runs' own files."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import resnext_jax as rx
from train import sweep as sweep_lib
from train.metrics_io import read_metrics
from train_helpers import REPO

pytest.importorskip("tensorflow")

CONFIG = str(REPO / "configs" / "default.py")
STEPS = 30
# Each run: a few seconds (most of it the trainer's start). Checkpoints
# every 10 steps: the kill lands after the first, 20 steps before the end.
TINY = [f"--config.num_train_steps={STEPS}", "--config.eval_every_steps=10",
        "--config.checkpoint_every_steps=10", "--config.log_every_steps=5",
        "--config.batch_size=16", "--config.model_kwargs.base_width=2",
        "--config.warmup_epochs=0.0", "--config.progress_bar=False"]
# 2 cardinalities x 2 seeds. The order: seed 0 of each, then seed 1.
RUNS = ["cardinality=2,seed=0", "cardinality=4,seed=0",
        "cardinality=2,seed=1", "cardinality=4,seed=1"]
FIRST, KILLED = RUNS[0], RUNS[1]


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=1")
    return env


def _sweep_command(root, *extra):
    return [sys.executable, "-m", "train.sweep", "--config", CONFIG,
            "--set", "model_kwargs.cardinality=2,4", "--seeds", "2",
            "--workdir", str(root), *TINY, *extra]


def _run(command, timeout=300):
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _wait_until(condition, what, process=None, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the sweep ended (exit "
                                 f"{process.returncode}) before {what}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _attempts(log: pathlib.Path) -> list[str]:
    """The trainer's output of each start of a run (the sweep's train.log
    opens each with a '=== sweep attempt' line)."""
    text = log.read_text()
    return text.split("=== sweep attempt ")[1:]


def _files(workdir):
    """mtime of what a run writes: unchanged if it was not run again."""
    return {name: (workdir / name).stat().st_mtime_ns
            for name in ("summary.json", "metrics.jsonl", "config.json",
                         sweep_lib.LOG_FILE)}


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory):
    """A 2x2 sweep SIGKILLed while its second run trains (after the first
    run completed and the second saved its step-10 checkpoint), then
    started again with the same command until it ends."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a killed sweep stops its trainer on Linux only "
                    "(PR_SET_PDEATHSIG)")
    root = tmp_path_factory.mktemp("sweep") / "root"
    log = root.parent / "first_start.log"
    with open(log, "w") as out:
        first = subprocess.Popen(_sweep_command(root), cwd=REPO, env=_env(),
                                 stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_until(lambda: (root / FIRST / "summary.json").is_file()
                        and (root / KILLED / "checkpoints" / "10").is_dir(),
                        "the second run's first checkpoint", first)
            first.send_signal(signal.SIGKILL)
        finally:
            first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    # The orphaned trainer got SIGTERM (the sweep's death signal): it saves
    # a checkpoint and releases its workdir.
    _wait_until(lambda: not (root / KILLED / "lock").exists(),
                "the killed sweep's trainer to exit", timeout=120)
    state_after_kill = {
        "killed_summary": (root / KILLED / "summary.json").exists(),
        "killed_checkpoints": sorted(
            int(p.name) for p in (root / KILLED / "checkpoints").iterdir()
            if p.name.isdigit()),
        "started": [name for name in RUNS if (root / name).exists()],
        "first_files": _files(root / FIRST),
        "first_log": (root / FIRST / sweep_lib.LOG_FILE).read_text(),
    }
    started = time.time()
    second = _run(_sweep_command(root))
    return {"root": root, "first_output": log.read_text(),
            "second": second, "second_seconds": time.time() - started,
            **state_after_kill}


@pytest.mark.slow
def test_killed_sweep_resumes_and_finishes_every_run_once(killed_sweep):
    root, second = killed_sweep["root"], killed_sweep["second"]
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr
    # The kill landed mid-run: the first run done, the second not, the
    # others not started.
    assert killed_sweep["started"] == [FIRST, KILLED]
    assert not killed_sweep["killed_summary"]
    assert killed_sweep["killed_checkpoints"], "no checkpoint to resume"
    assert max(killed_sweep["killed_checkpoints"]) < STEPS

    # The finished run was not trained again: its files untouched.
    assert f"{FIRST}: already finished" in second.stdout
    assert _files(root / FIRST) == killed_sweep["first_files"]
    assert (root / FIRST / sweep_lib.LOG_FILE).read_text() == (
        killed_sweep["first_log"])
    assert len(_attempts(root / FIRST / sweep_lib.LOG_FILE)) == 1

    # The interrupted run resumed from its checkpoint, not from step 0.
    attempts = _attempts(root / KILLED / sweep_lib.LOG_FILE)
    assert len(attempts) == 2
    assert "Resuming from step" not in attempts[0]
    resumed_at = max(killed_sweep["killed_checkpoints"])
    assert f"Resuming from step {resumed_at} of {STEPS}" in attempts[1]
    # ... with the config it started with (no change recorded).
    history = (root / KILLED / "config_history.jsonl").read_text()
    assert len(history.splitlines()) == 1

    record = json.loads((root / sweep_lib.SWEEP_FILE).read_text())
    assert [r["name"] for r in record["runs"]] == RUNS
    assert {r["name"]: r["attempts"] for r in record["runs"]} == {
        FIRST: 1, KILLED: 2, RUNS[2]: 1, RUNS[3]: 1}
    assert record["grid"]["set"] == [["model_kwargs.cardinality", [2, 4]]]
    for run in record["runs"]:
        assert run["status"] == "completed", run
        workdir = root / run["name"]
        summary = json.loads((workdir / "summary.json").read_text())
        assert summary["completed"] and summary["steps"] == STEPS
        config = json.loads((workdir / "config.json").read_text())
        assert config["seed"] == run["seed"]
        assert config["model_kwargs"]["cardinality"] == (
            run["values"]["model_kwargs.cardinality"])
        assert config["num_train_steps"] == STEPS
        # One eval record per eval step: no step trained twice after the
        # resume wrote over the killed attempt's records.
        evals = [r["step"] for r in read_metrics(workdir)
                 if r["split"] == "eval"]
        assert evals == [10, 20, 30]
        if run["name"] != KILLED:
            assert len(_attempts(workdir / sweep_lib.LOG_FILE)) == 1

    # A third start finds everything done and touches nothing.
    before = {name: _files(root / name) for name in RUNS}
    third = _run(_sweep_command(root), timeout=120)
    assert third.returncode == 0, third.stderr
    assert third.stdout.count("already finished") == len(RUNS)
    assert {name: _files(root / name) for name in RUNS} == before


@pytest.mark.slow
def test_another_grid_in_the_same_root_is_refused(killed_sweep):
    root = killed_sweep["root"]
    sweep_file = root / sweep_lib.SWEEP_FILE
    before = sweep_file.read_text()
    result = _run(_sweep_command(root, "--seeds", "3"), timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "another grid" in lines[0]
    assert "--seeds: 2 -> 3" in lines[0]
    assert sweep_file.read_text() == before
    assert not (root / "cardinality=2,seed=2").exists()


@pytest.mark.slow
def test_compare_reports_the_runs_own_figures(killed_sweep, tmp_path):
    root = killed_sweep["root"]
    # A run that did not finish, of the same config as cardinality=2: it is
    # listed, and left out of the means.
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.json", "dataset.json", "metrics.jsonl"):
        shutil.copy(root / FIRST / name, unfinished / name)
    config = json.loads((unfinished / "config.json").read_text())
    config["seed"] = 7
    (unfinished / "config.json").write_text(json.dumps(config))

    out = tmp_path / "out"
    result = _run([sys.executable, "-m", "train.compare",
                   *sorted(str(p) for p in root.iterdir()), str(unfinished),
                   "--out", str(out)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"incomplete: {unfinished}" in result.stdout
    report = json.loads((out / "compare.json").read_text())
    assert report["varying"] == ["model_kwargs.cardinality"]
    groups = {g["group"]: g for g in report["groups"]}
    assert sorted(groups) == ["cardinality=2", "cardinality=4"]

    for cardinality in (2, 4):
        group = groups[f"cardinality={cardinality}"]
        workdirs = [root / f"cardinality={cardinality},seed={s}"
                    for s in (0, 1)]
        summaries = [json.loads((w / "summary.json").read_text())
                     for w in workdirs]
        expected = {
            "final_accuracy": [s["test_accuracy"] for s in summaries],
            "final_loss": [s["test_loss"] for s in summaries],
            "best_accuracy": [s["best_test_accuracy"] for s in summaries],
            "best_loss": [min(r["loss"] for r in read_metrics(w)
                              if r["split"] == "eval") for w in workdirs],
            "examples_per_second": [s["examples_per_second"]
                                    for s in summaries],
            "wall_seconds": [s["wall_seconds"] for s in summaries],
        }
        assert group["n"] == 2 and group["seeds"] == [0, 1]
        for key, values in expected.items():
            stat = group["stats"][key]
            assert stat["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert stat["std"] == pytest.approx(np.std(values, ddof=1),
                                                rel=1e-9, abs=1e-15)
        assert group["params"] == summaries[0]["num_params"]
        model = rx.ResNeXt(stage_sizes=(1, 1, 1), stem="cifar",
                           cardinality=cardinality, base_width=2,
                           num_classes=10)
        assert group["macs"] == rx.models.count_macs(model, image_size=8)
        # The printed table shows the same figures.
        final = expected["final_accuracy"]
        assert (f"{100 * np.mean(final):.2f} ± "
                f"{100 * np.std(final, ddof=1):.2f}") in result.stdout
    assert [r["workdir"] for r in groups["cardinality=2"]["not_completed"]
            ] == [str(unfinished)]

    rows = (out / "compare.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("group,")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    root = tmp_path / "root"
    # The eval split holds 360 images: the trainer refuses 1000 once it has
    # read the data (the sweep cannot know the split's size).
    result = _run([sys.executable, "-m", "train.sweep", "--config", CONFIG,
                   "--set", "eval_batch_size=1000,120", "--workdir",
                   str(root), "--config.model_kwargs.cardinality=2", *TINY])
    assert result.returncode == 1, result.stdout + result.stderr
    record = json.loads((root / sweep_lib.SWEEP_FILE).read_text())
    failed, done = record["runs"]
    assert failed["name"] == "eval_batch_size=1000,seed=0"
    assert failed["status"] == "failed" and failed["returncode"] == 1
    assert "eval_batch_size" in failed["error"]
    assert failed["error"].startswith("error:")
    assert done["status"] == "completed"
    assert f"failed: {failed['name']}" in result.stdout


@pytest.mark.parametrize("values,status,message", [
    (["--set", "no_such_field=1,2"], 2,
     "the config has no field 'no_such_field'"),
    (["--set", "model_kwargs.cardinaliti=4,8"], 2,
     "did you mean 'model_kwargs.cardinality'?"),
    (["--set", "base_learning_rate=0.1,-1"], 1,
     "config.base_learning_rate (=-1.0) must be >= 0."),
    (["--set", "batch_size=16,abc"], 2, "--set batch_size=abc"),
    (["--set", "model_kwargs.cardinality=4,8", "--config.nope=1"], 2,
     "--config.nope=1: the config has no field 'nope'"),
    (["--set", "seed=1,2"], 2, "--seeds N"),
])
def test_bad_grids_are_refused_before_anything_runs(tmp_path, capsys,
                                                    values, status, message):
    root = tmp_path / "root"
    code = sweep_lib.main(["--config", CONFIG, "--workdir", str(root),
                           *values])
    captured = capsys.readouterr()
    assert code == status
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0]
    assert not root.exists()


def test_unknown_field_on_the_command_line_is_one_line(tmp_path):
    root = tmp_path / "root"
    result = _run([sys.executable, "-m", "train.sweep", "--config", CONFIG,
                   "--set", "no_such_field=1,2", "--workdir", str(root)],
                  timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --set no_such_field=...: the config has no field "
        f"'no_such_field'; every field is listed in {REPO}/configs/base.py."]
    assert result.stdout == ""
    assert not root.exists()


def test_dry_run_lists_the_cartesian_product(tmp_path, capsys):
    root = tmp_path / "root"
    code = sweep_lib.main([
        "--config", CONFIG, "--workdir", str(root),
        "--set", "model_kwargs.stage_sizes=(1,1,1),(2,1,1)",
        "--set", "base_learning_rate=0.05,0.1",
        "--set", "augment=false", "--seeds", "2", "--dry-run",
        "--config.num_train_steps", "5"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    names = [line.split("] ", 1)[1].split(":", 1)[0] for line in out[:-1]]
    assert names == [
        f"stage_sizes={s},base_learning_rate={lr},seed={seed}"
        for seed in (0, 1) for s in ("1-1-1", "2-1-1")
        for lr in ("0.05", "0.1")]
    # Every run gets the common override, its values and its seed.
    assert all("--config.num_train_steps=5" in line for line in out[:-1])
    assert "--config.augment=false" in out[0]
    assert out[0].endswith("--config.seed=0")
    assert out[-1] == "8 runs; every config is valid."
    assert not root.exists()


def test_values_split_like_the_command_line():
    assert sweep_lib.split_values("4,8") == ["4", "8"]
    assert sweep_lib.split_values("(1,1,1), (2,2,2)") == ["(1,1,1)",
                                                          "(2,2,2)"]
    assert sweep_lib.split_values("'a,b',c") == ["a,b", "c"]
    with pytest.raises(ValueError):
        sweep_lib.split_values("(1,2")
    assert sweep_lib.format_value(0.05) == "0.05"
    assert sweep_lib.format_value((1, 2)) == "1-2"
    assert sweep_lib.format_value("imagenette/160px") == "imagenette_160px"
