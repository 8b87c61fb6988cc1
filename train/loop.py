"""``train_and_evaluate``: the training loop, the only place with effects on
the workdir (checkpoints, metrics, the model bundle) and the terminal.

Read top-down: :func:`train_and_evaluate` builds a :class:`Run` from the
config (:func:`setup`), restores the latest checkpoint, then runs one train
step after another, after each of which :class:`PeriodicActions` does what
is due (log, evaluate, save, stop on SIGTERM), and ends with the summary.
Process-wide effects (the distributed runtime, TensorFlow's devices) belong
to the entry point, ``train/__main__.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import pathlib
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from resnext_jax._compile import compile_run_once
from resnext_jax.layers.conv import resolve_conv_impl
from resnext_jax.runtime.malloc import release_if_near_limit
from train import (bundle, checkpoint, data as data_lib, distributed,
                   ema as ema_lib, init_from, mesh as mesh_lib, mixing, optim,
                   steps, workdir as workdir_lib)
from train.config_validation import validate_config, validate_data
from train.metrics_io import MetricWriter
from train.model_factory import build_model
from train.nonfinite import NonFiniteGuard
from train.preemption import PreemptionWatcher


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything built from the config before the first step."""
    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    mesh: Mesh
    source: data_lib.DataSource
    total_steps: int
    eval_every: int
    init_state: Callable
    train_step: Callable
    eval_step: Callable
    is_writer: bool  # Process 0 writes the run files, metrics, bundle.
    # Where a fine-tuning run's weights came from (init_from.json).
    init_record: dict | None = None


def total_train_steps(config: ml_collections.ConfigDict,
                      steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


def setup(config: ml_collections.ConfigDict,
          workdir: str | pathlib.Path) -> Run:
    """Checks the config against the devices, data and workdir; builds the
    data source, model, optimizer and compiled steps. Writes nothing."""
    distributed.check_initialized(config)
    workdir_lib.check_usable(workdir)
    mesh = mesh_lib.make_mesh()
    validate_config(config, num_devices=mesh.size,
                    num_processes=jax.process_count())
    resuming = checkpoint.has_saved_steps(workdir)
    if resuming:
        workdir_lib.check_optimizer_state(workdir, config)
    # Pretrained weights are read only by a run that starts at step 0.
    init_plan = init_from.plan(config, workdir, resuming=resuming)
    source = data_lib.create_data_source(
        config, preprocessing=init_from.run_preprocessing(
            config, init_plan.source_preprocessing))
    validate_data(config, source)
    workdir_lib.check_compatible(workdir, config, source.num_classes)
    total_steps = total_train_steps(config, source.steps_per_epoch)
    model = build_model(config, source.num_classes)
    # The run compiles only for its own devices, so "auto" becomes that
    # platform's lowering here: the traced step then holds one lowering
    # instead of each platform's behind a conditional, which XLA compiles
    # seconds faster (README, "Time to the first train step"). The model
    # bundle (train/bundle.py) keeps "auto" for wherever it is served.
    model = model.clone(conv_impl=resolve_conv_impl(model.conv_impl))
    pretrained, init_record = None, init_plan.record
    if init_plan.source is not None:
        pretrained, init_record = init_from.load(
            init_plan.source, config, model, source.num_classes)
    schedule = optim.create_learning_rate_schedule(
        config, source.steps_per_epoch, total_steps)
    tx = optim.create_optimizer(config, schedule)
    init = jax.jit(functools.partial(
        steps.create_train_state, model, tx, image_size=source.image_size,
        with_ema=config.model_ema),
        out_shardings=mesh_lib.replicated(mesh))
    train_step = mesh_lib.data_parallel(
        steps.make_train_step(
            model, tx, schedule, label_smoothing=config.label_smoothing,
            grad_accum_steps=config.grad_accum_steps,
            head_only=config.trainable == "head",
            mix=mixing.make_mix(config.mixup_alpha, config.cutmix_alpha),
            update_ema=ema_updater(config, source.steps_per_epoch,
                                   total_steps)),
        mesh, donate=True, has_state_output=True)
    eval_step = mesh_lib.data_parallel(steps.make_eval_step(model), mesh,
                                       donate=False, has_state_output=False)
    return Run(
        config=config, workdir=pathlib.Path(workdir), mesh=mesh,
        source=source, total_steps=total_steps,
        eval_every=(config.eval_every_steps if config.eval_every_steps > 0
                    else source.steps_per_epoch),
        init_state=lambda: compile_run_once(
            init, jax.random.PRNGKey(config.seed), variables=pretrained)(
                jax.random.PRNGKey(config.seed), variables=pretrained),
        train_step=train_step, eval_step=eval_step,
        is_writer=jax.process_index() == 0, init_record=init_record)


def ema_updater(config: ml_collections.ConfigDict, steps_per_epoch: int,
                total_steps: int) -> Callable | None:
    """``update(ema, params, batch_stats, step)`` with the run's EMA
    settings (:func:`train.ema.update`), or None without ``model_ema``."""
    if not config.model_ema:
        return None
    decay = ema_lib.decay_per_update(
        config.model_ema_decay, config.batch_size, config.model_ema_steps,
        total_steps / steps_per_epoch)
    return functools.partial(
        ema_lib.update, steps_per_epoch=steps_per_epoch,
        every=config.model_ema_steps, decay=decay,
        warmup_epochs=config.warmup_epochs)


def reported_state(config: ml_collections.ConfigDict, state):
    """The weights a run reports, keeps as best and bundles: the moving
    average with ``model_ema`` and ``model_ema_bundle``, else the weights."""
    if config.model_ema and config.model_ema_bundle:
        return steps.ema_view(state)
    return state


def evaluate(eval_step, state, source: data_lib.DataSource,
             mesh: Mesh) -> dict:
    """Mean loss and accuracy over the whole eval split (padding masked)."""
    totals = None
    for batch in mesh_lib.prefetch_to_mesh(source.eval_batches(), mesh):
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(
            lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count,
            "accuracy": float(totals["correct"]) / count,
            "num_examples": count}


class Throughput:
    """Training images per second, leaving out the first step (it
    compiles) and the time spent evaluating and saving."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.seconds = 0.0
        self.images = 0
        self._mark = None
        self._mark_step = 0

    @property
    def started(self) -> bool:
        return self._mark is not None

    def start(self, step: int) -> None:
        self._mark, self._mark_step = time.time(), step

    def lap(self, step: int) -> float:
        """Images per second since the last lap; counts them in the total."""
        now = time.time()
        images = (step - self._mark_step) * self.batch_size
        self.seconds += now - self._mark
        self.images += images
        rate = images / max(now - self._mark, 1e-9)
        self._mark, self._mark_step = now, step
        return rate

    def exclude_since_lap(self) -> None:
        """Time since the last lap was not training (eval, saving)."""
        self._mark = time.time()

    def overall(self) -> float | None:
        return self.images / self.seconds if self.seconds else None


def _mean_metrics(host: list[dict]) -> dict:
    """Means over the steps whose update was applied (all of them if none
    was), and the count of skipped steps."""
    good = [m for m in host if not m["nonfinite"]] or host
    out = {k: float(np.mean([m[k] for m in good])) for k in host[0]
           if k != "nonfinite"}
    out["nonfinite_steps"] = float(sum(m["nonfinite"] for m in host))
    return out


class PeriodicActions:
    """What is due after a train step: check for non-finite steps and
    SIGTERM, log train metrics, evaluate (and keep the best), save; and
    release memory malloc keeps when the process nears its limit."""

    def __init__(self, run: Run, *, start_step: int, end_step: int,
                 best_accuracy: float, checkpoints: checkpoint.Checkpointer,
                 writer: MetricWriter | None, bar: tqdm,
                 preemption: PreemptionWatcher):
        self.run, self.end_step = run, end_step
        self.checkpoints, self.writer, self.bar = checkpoints, writer, bar
        self.preemption = preemption
        self.best_accuracy = best_accuracy
        self.eval_metrics = None
        self.preempted = False
        self.throughput = Throughput(run.config.batch_size)
        self.guard = NonFiniteGuard(run.config.max_consecutive_nonfinite)
        self.bundle_step = None  # Step of the state in the model bundle.
        self.all_eval_metrics = {}  # "eval" and, with EMA, "eval_ema".
        self._metrics = []  # Train metrics since the last log, on device.
        self._flags, self._flags_from = [], start_step + 1

    def after_step(self, done: int, state, metrics) -> bool:
        """Runs what is due after step ``done`` (1-based); True to stop."""
        config = self.run.config
        # Memory kept by configure_malloc for speed must not get the run
        # killed: near the limit, malloc goes back to glibc's defaults.
        released = release_if_near_limit()
        if released:
            print(released, flush=True)
        self._metrics.append(metrics)
        self._flags.append(metrics["nonfinite"])
        if not self.throughput.started:
            jax.block_until_ready(state.step)
            self.throughput.start(done)
            self._metrics = []
        do_eval = done % self.run.eval_every == 0 or (
            done == self.run.total_steps)
        do_save = done % config.checkpoint_every_steps == 0 or (
            done == self.end_step)
        # SIGTERM is honoured at the next step, not the next logging step:
        # the grace period before the kill is short.
        stop = self._check_preemption(done)
        do_save = do_save or stop
        if done % config.log_every_steps == 0 or do_eval or do_save:
            # Before any save: a run that must stop keeps its last good
            # checkpoint as it was.
            self._check_nonfinite(done)
            self._log_train(done)
        self.bar.update(1)
        if do_eval:
            self._evaluate(done, state)
        if do_save:
            self.checkpoints.save(state, self.metadata(state))
        if do_eval or do_save:
            self.throughput.exclude_since_lap()
        return self.preempted

    def metadata(self, state) -> dict:
        return {"best_eval_accuracy": self.best_accuracy,
                "epoch": (int(jax.device_get(state.step))
                          / self.run.source.steps_per_epoch),
                "total_steps": self.run.total_steps}

    def save_bundle(self, state, step: int) -> None:
        """``<workdir>/model/`` from ``state``'s reported weights (process
        0)."""
        if self.run.is_writer and self.bundle_step != step:
            weights = reported_state(self.run.config, state)
            bundle.save_model(
                self.run.workdir, self.run.config, weights.params,
                weights.batch_stats, class_names=self.run.source.class_names,
                preprocessing=self.run.source.preprocessing,
                extra={"step": step, "eval_accuracy": (
                    self.eval_metrics or {}).get("accuracy")})
        self.bundle_step = step

    def _check_nonfinite(self, done: int) -> None:
        flags = [float(f) for f in jax.device_get(self._flags)]
        self.guard.update(self._flags_from, flags)
        self._flags, self._flags_from = [], done + 1

    def _check_preemption(self, done: int) -> bool:
        if self.preempted or not self.preemption.requested(done):
            return False
        self.preempted = True
        if self.preemption.signal_name == "SIGINT":
            print(f"Interrupted (Ctrl-C): saving a checkpoint at step {done} "
                  "and exiting; run the same command to resume (Ctrl-C "
                  "again aborts at once).", flush=True)
        else:  # SIGTERM, or another process's signal.
            print(f"Preempted (SIGTERM): saving a checkpoint at step {done} "
                  "and exiting; run the same command to resume.", flush=True)
        return True

    def _log_train(self, done: int) -> None:
        if not self._metrics:
            return
        logged = _mean_metrics(jax.device_get(self._metrics))
        logged["examples_per_second"] = self.throughput.lap(done)
        self._metrics = []
        if self.writer:
            self.writer.write(done, "train", logged)
        self.bar.set_postfix(loss=f"{logged['loss']:.4f}",
                             acc=f"{logged['accuracy']:.3f}",
                             lr=f"{logged['learning_rate']:.4g}",
                             img_s=f"{logged['examples_per_second']:.0f}")

    def _evaluate(self, done: int, state) -> None:
        """Evaluates the weights, and the moving average when the run keeps
        one; ``eval_metrics`` are those of the reported ones."""
        config = self.run.config
        evals = {"eval": state}
        if config.model_ema:
            evals["eval_ema"] = steps.ema_view(state)
        results = {}
        for name, weights in evals.items():
            results[name] = evaluate(self.run.eval_step, weights,
                                     self.run.source, self.run.mesh)
            if self.writer:
                self.writer.write(done, name, {
                    "loss": results[name]["loss"],
                    "accuracy": results[name]["accuracy"]})
            label = "eval" if name == "eval" else "eval (EMA)"
            self.bar.write(f"step {done}: {label} loss "
                           f"{results[name]['loss']:.4f}, accuracy "
                           f"{100 * results[name]['accuracy']:.2f}%")
        reported = ("eval_ema" if config.model_ema and config.model_ema_bundle
                    else "eval")
        self.eval_metrics = dict(results[reported],
                                 weights="ema" if reported == "eval_ema"
                                 else "raw")
        self.all_eval_metrics = results
        if self.eval_metrics["accuracy"] > self.best_accuracy:
            self.best_accuracy = self.eval_metrics["accuracy"]
            self.checkpoints.save(state, self.metadata(state), best=True)
            self.save_bundle(state, done)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path, *,
                       stop_at_step: int | None = None) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming from its latest
    checkpoint), evaluates, and returns the summary.

    ``stop_at_step`` ends this run early at that step, with a checkpoint,
    as a preempted run would (the schedule still spans the full run).
    SIGTERM or Ctrl-C does the same at the next step, with
    ``summary["preempted"]`` and ``summary["stop_signal"]``.
    A completed run writes ``<workdir>/summary.json`` and the model bundle
    ``<workdir>/model/`` (also written at every new best eval).
    """
    wall_start = time.time()
    run = setup(config, workdir)
    # Whatever ends the run (done, SIGTERM, an error), what was opened is
    # closed, in reverse order.
    with contextlib.ExitStack() as resources:
        _lock_workdir(run, resources)
        preemption = resources.enter_context(PreemptionWatcher())
        checkpoints = resources.enter_context(contextlib.closing(
            checkpoint.Checkpointer(run.workdir, config.keep_checkpoints)))
        state, best_accuracy, resumed_from = _restore(run, checkpoints)
        start_step = int(jax.device_get(state.step))
        if resumed_from:
            workdir_lib.check_resumable(run.workdir, config, start_step)
        num_params = sum(x.size for x in jax.tree.leaves(state.params))
        finished = workdir_lib.read_summary(run.workdir)
        if start_step >= run.total_steps and finished is not None:
            return _report_finished(run, start_step, finished)
        if run.is_writer:
            fresh_init = run.init_record if not resumed_from else None
            if fresh_init:
                workdir_lib.write_init_record(run.workdir, fresh_init)
            changes = workdir_lib.save_run_files(
                run.workdir, config, run.source.info(), step=start_step,
                init_from=fresh_init)
            if changes:
                print(f"Config changed at step {start_step}: " + "; ".join(
                    f"{k}: {old!r} -> {new!r}"
                    for k, (old, new) in changes.items())
                    + f". {workdir_lib.CONFIG_FILE} now holds the new config;"
                    f" every earlier one is in "
                    f"{run.workdir / workdir_lib.CONFIG_HISTORY_FILE}.",
                    flush=True)
            if resumed_from:
                print(f"Resuming from step {start_step} of "
                      f"{run.total_steps} ({resumed_from})"
                      + ("; config.init_from is not read again."
                         if config.init_from else "."))
        writer = resources.enter_context(contextlib.closing(
            MetricWriter(run.workdir))) if run.is_writer else None
        bar = resources.enter_context(contextlib.closing(tqdm(
            total=run.total_steps, initial=start_step, unit="step",
            disable=not (config.progress_bar and run.is_writer),
            dynamic_ncols=True, desc="train")))
        end_step = run.total_steps if stop_at_step is None else min(
            run.total_steps, max(stop_at_step, start_step))
        actions = PeriodicActions(
            run, start_step=start_step, end_step=end_step,
            best_accuracy=best_accuracy, checkpoints=checkpoints,
            writer=writer, bar=bar, preemption=preemption)

        batches = mesh_lib.prefetch_to_mesh(data_lib.inject_nonfinite(
            run.source.train_batches(start_step), start_step,
            config.inject_nonfinite_steps), run.mesh)
        for step in range(start_step, end_step):
            state, metrics = run.train_step(state, next(batches))
            if actions.after_step(step + 1, state, metrics):
                break
        bar.close()

        final_step = int(jax.device_get(state.step))
        completed = final_step >= run.total_steps
        if completed and actions.eval_metrics is None:  # Resumed at the end.
            actions.eval_metrics = evaluate(
                run.eval_step, reported_state(config, state), run.source,
                run.mesh)
        if final_step > start_step or checkpoints.latest_step() is None:
            checkpoints.save(state, actions.metadata(state))
        if completed:
            actions.save_bundle(state, final_step)
        summary = _summary(run, actions, final_step, completed, num_params,
                           wall_start)
        if run.is_writer and completed:
            workdir_lib.write_summary(run.workdir, summary)
            print(summary_line(summary))
    return summary


def _lock_workdir(run: Run, resources: contextlib.ExitStack) -> None:
    """Process 0 locks the workdir until the run ends; every process stops
    if it could not."""
    error = None
    if run.is_writer:
        try:
            resources.enter_context(workdir_lib.WorkdirLock(run.workdir))
        except workdir_lib.WorkdirError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        failed = multihost_utils.broadcast_one_to_all(
            np.int32(error is not None))
        if failed and error is None:
            raise workdir_lib.WorkdirError(
                f"process 0 could not lock {run.workdir} (see its error).")
    if error is not None:
        raise error


def _restore(run: Run, checkpoints: checkpoint.Checkpointer):
    """``(state, best accuracy, step directory or None)``: the newest
    intact checkpoint's, or a fresh state (refused where checkpoints were
    lost, see :func:`train.workdir.check_fresh_start`)."""
    state = run.init_state()
    restored = checkpoints.restore_latest(state)
    if restored is None:
        workdir_lib.check_fresh_start(run.workdir, run.config)
        return state, -1.0, None
    state, meta, step_dir = restored
    return state, meta.get("best_eval_accuracy", -1.0), step_dir


def _report_finished(run: Run, step: int, summary: dict) -> dict:
    """A finished run reports its summary instead of re-evaluating and
    overwriting its figures (throughput, wall time) with a no-op run's."""
    summary.setdefault("preempted", False)
    if run.is_writer:
        print(f"Already finished at step {step}.")
        print(summary_line(summary))
    return summary


def _summary(run: Run, actions: PeriodicActions, final_step: int,
             completed: bool, num_params: int, wall_start: float) -> dict:
    metrics = actions.eval_metrics or {}
    return {
        "completed": completed,
        "preempted": actions.preempted,
        "stop_signal": actions.preemption.signal_name,
        "nonfinite_steps": actions.guard.total,
        "steps": final_step,
        "total_steps": run.total_steps,
        "epochs": final_step / run.source.steps_per_epoch,
        "test_accuracy": metrics.get("accuracy"),
        "test_loss": metrics.get("loss"),
        "test_examples": metrics.get("num_examples"),
        "best_test_accuracy": (actions.best_accuracy
                               if actions.best_accuracy >= 0 else None),
        # With model_ema: which weights the figures above are of, and both
        # evals of the last eval point.
        "test_weights": "ema" if (run.config.model_ema
                                  and run.config.model_ema_bundle) else "raw",
        "test_accuracy_raw": (actions.all_eval_metrics.get("eval") or {}).get(
            "accuracy"),
        "test_accuracy_ema": (actions.all_eval_metrics.get("eval_ema")
                              or {}).get("accuracy"),
        "examples_per_second": actions.throughput.overall(),
        "train_seconds": actions.throughput.seconds,
        "wall_seconds": time.time() - wall_start,
        "dataset": run.source.name,
        "model": run.config.model,
        "num_params": int(num_params),
        "num_devices": run.mesh.size,
        "batch_size": run.config.batch_size,
        "init_from": run.init_record,
    }


def summary_line(summary: dict) -> str:
    line = (f"done: test accuracy {100 * summary['test_accuracy']:.2f}% | "
            f"test loss {summary['test_loss']:.4f} | {summary['steps']} "
            "steps")
    ips = summary["examples_per_second"]
    if ips:
        line += f" | {ips:.0f} img/s | {summary['wall_seconds']:.0f} s"
    return line
