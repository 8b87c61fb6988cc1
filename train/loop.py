"""``train_and_evaluate``: the training loop, the only place with effects
(files, progress bar, checkpoints)."""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from train import (checkpoint, data as data_lib, distributed, optim, steps,
                   workdir_compat)
from train.config_validation import validate_config, validate_data
from train.nonfinite import NonFiniteGuard
from train.preemption import PreemptionWatcher
from train.metrics_io import MetricWriter
from train.model_factory import build_model

SUMMARY_FILE = "summary.json"


def total_train_steps(config: ml_collections.ConfigDict,
                      steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


def evaluate(eval_step, state, source: data_lib.DataSource, mesh) -> dict:
    """Mean loss and accuracy over the whole eval split (padding masked)."""
    totals = None
    for batch in data_lib.prefetch_to_mesh(source.eval_batches(), mesh):
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(
            lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count,
            "accuracy": float(totals["correct"]) / count,
            "num_examples": count}


def _mean_metrics(host: list[dict]) -> dict:
    """Means over the steps whose update was applied (all of them if none
    was), and the count of skipped steps."""
    good = [m for m in host if not m["nonfinite"]] or host
    out = {k: float(np.mean([m[k] for m in good])) for k in host[0]
           if k != "nonfinite"}
    out["nonfinite_steps"] = float(sum(m["nonfinite"] for m in host))
    return out


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path, *,
                       stop_at_step: int | None = None) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming from its latest
    checkpoint), evaluates, and returns the summary.

    ``stop_at_step`` ends this run early at that step, with a checkpoint,
    as a preempted run would (the schedule still spans the full run).
    SIGTERM does the same at the next step, with ``summary["preempted"]``.
    ``<workdir>/summary.json`` is written when the run completes.
    """
    with PreemptionWatcher() as preemption:
        return _train_and_evaluate(config, workdir, stop_at_step, preemption)


def _train_and_evaluate(config, workdir, stop_at_step, preemption) -> dict:
    wall_start = time.time()
    workdir = pathlib.Path(workdir)
    distributed.initialize(config)
    mesh = steps.make_mesh()
    validate_config(config, num_devices=mesh.size,
                    num_processes=jax.process_count())
    is_writer = jax.process_index() == 0

    source = data_lib.create_data_source(config)
    validate_data(config, source)
    workdir_compat.check(workdir, config, source.num_classes)
    steps_per_epoch = source.steps_per_epoch
    total_steps = total_train_steps(config, steps_per_epoch)
    eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                  else steps_per_epoch)
    model = build_model(config, source.num_classes)
    schedule = optim.create_learning_rate_schedule(config, steps_per_epoch,
                                                   total_steps)
    tx = optim.create_optimizer(config, schedule)

    init = jax.jit(functools.partial(
        steps.create_train_state, model, tx, image_size=source.image_size),
        out_shardings=steps.replicated(mesh))
    state = init(jax.random.PRNGKey(config.seed))
    num_params = sum(x.size for x in jax.tree.leaves(state.params))

    checkpoints = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
    best_accuracy = -1.0
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state, meta = restored
        best_accuracy = meta.get("best_eval_accuracy", -1.0)
    start_step = int(jax.device_get(state.step))
    summary_file = workdir / SUMMARY_FILE
    if start_step >= total_steps and summary_file.exists():
        # A finished run: report its summary instead of re-evaluating and
        # overwriting its figures (throughput, wall time) with a no-op run's.
        summary = json.loads(summary_file.read_text())
        summary.setdefault("preempted", False)
        if is_writer:
            print(f"Already finished at step {start_step}.")
            print(summary_line(summary))
        return summary
    if is_writer:
        checkpoint.save_run_files(workdir, config, source.info())
        if restored is not None:
            print(f"Resuming from step {start_step} of {total_steps} "
                  f"({workdir / checkpoint.LATEST_DIR}).")
    writer = MetricWriter(workdir) if is_writer else None

    train_step = steps.data_parallel(
        steps.make_train_step(model, tx, schedule,
                              label_smoothing=config.label_smoothing,
                              grad_accum_steps=config.grad_accum_steps),
        mesh, donate=True, has_state_output=True)
    eval_step = steps.data_parallel(steps.make_eval_step(model), mesh,
                                    donate=False, has_state_output=False)

    end_step = total_steps if stop_at_step is None else min(
        total_steps, max(stop_at_step, start_step))

    def metadata():
        return {"best_eval_accuracy": best_accuracy,
                "epoch": int(jax.device_get(state.step)) / steps_per_epoch,
                "total_steps": total_steps}

    train_seconds, timed_images = 0.0, 0
    eval_metrics = None
    host_batches = data_lib.inject_nonfinite(
        source.train_batches(start_step), start_step,
        config.inject_nonfinite_steps)
    batches = data_lib.prefetch_to_mesh(host_batches, mesh)
    guard = NonFiniteGuard(config.max_consecutive_nonfinite)
    preempted = False
    bar = tqdm(total=total_steps, initial=start_step, unit="step",
               disable=not (config.progress_bar and is_writer),
               dynamic_ncols=True, desc="train")
    pending, mark, mark_step = [], None, start_step
    flags, flags_from = [], start_step + 1  # Non-finite flags, unchecked.
    for step in range(start_step, end_step):
        state, metrics = train_step(state, next(batches))
        pending.append(metrics)
        flags.append(metrics["nonfinite"])
        done = step + 1
        if mark is None:  # The first step compiles: keep it out of img/s.
            jax.block_until_ready(state.step)
            mark, mark_step, pending = time.time(), done, []
        do_eval = done % eval_every == 0 or done == total_steps
        do_save = done % config.checkpoint_every_steps == 0 or done == end_step
        do_log = done % config.log_every_steps == 0 or do_eval or do_save
        if do_log:
            # Before any save: a run that must stop keeps its last good
            # checkpoint as it was.
            guard.update(flags_from, [float(f) for f in
                                      jax.device_get(flags)])
            flags, flags_from = [], done + 1
            if not preempted and preemption.requested():
                preempted, do_save = True, True
                print(f"Preempted (SIGTERM): saving a checkpoint at step "
                      f"{done} and exiting; run the same command to resume.",
                      flush=True)
        if pending and do_log:
            logged = _mean_metrics(jax.device_get(pending))
            now = time.time()
            images = (done - mark_step) * config.batch_size
            train_seconds += now - mark
            timed_images += images
            logged["examples_per_second"] = images / max(now - mark, 1e-9)
            mark, mark_step, pending = now, done, []
            if writer:
                writer.write(done, "train", logged)
            bar.set_postfix(loss=f"{logged['loss']:.4f}",
                            acc=f"{logged['accuracy']:.3f}",
                            lr=f"{logged['learning_rate']:.4g}",
                            img_s=f"{logged['examples_per_second']:.0f}")
        bar.update(1)
        if do_eval:
            eval_metrics = evaluate(eval_step, state, source, mesh)
            if writer:
                writer.write(done, "eval", {
                    "loss": eval_metrics["loss"],
                    "accuracy": eval_metrics["accuracy"]})
            bar.write(f"step {done}: eval loss {eval_metrics['loss']:.4f}, "
                      f"accuracy {100 * eval_metrics['accuracy']:.2f}%")
            if eval_metrics["accuracy"] > best_accuracy:
                best_accuracy = eval_metrics["accuracy"]
                checkpoints.save(state, metadata(), best=True)
        if do_save:
            checkpoints.save(state, metadata())
        if do_eval or do_save:
            mark = time.time()  # Eval and saving are not training time.
        if preempted:
            break
    bar.close()

    final_step = int(jax.device_get(state.step))
    completed = final_step >= total_steps
    if completed and eval_metrics is None:  # Resumed a finished run.
        eval_metrics = evaluate(eval_step, state, source, mesh)
    if final_step > start_step or checkpoints.latest_step() is None:
        checkpoints.save(state, metadata())
    checkpoints.close()
    summary = {
        "completed": completed,
        "preempted": preempted,
        "nonfinite_steps": guard.total,
        "steps": final_step,
        "total_steps": total_steps,
        "epochs": final_step / steps_per_epoch,
        "test_accuracy": eval_metrics["accuracy"] if eval_metrics else None,
        "test_loss": eval_metrics["loss"] if eval_metrics else None,
        "test_examples": eval_metrics["num_examples"] if eval_metrics
        else None,
        "best_test_accuracy": best_accuracy if best_accuracy >= 0 else None,
        "examples_per_second": (timed_images / train_seconds
                                if train_seconds else None),
        "train_seconds": train_seconds,
        "wall_seconds": time.time() - wall_start,
        "dataset": source.name,
        "model": config.model,
        "num_params": int(num_params),
        "num_devices": mesh.size,
        "batch_size": config.batch_size,
    }
    if writer:
        writer.close()
        if completed:
            (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            print(summary_line(summary))
    return summary


def summary_line(summary: dict) -> str:
    ips = summary["examples_per_second"]
    return (f"done: test accuracy {100 * summary['test_accuracy']:.2f}% | "
            f"test loss {summary['test_loss']:.4f} | {summary['steps']} steps"
            f" | {ips:.0f} img/s | {summary['wall_seconds']:.0f} s"
            if ips else
            f"done: test accuracy {100 * summary['test_accuracy']:.2f}% | "
            f"test loss {summary['test_loss']:.4f} | {summary['steps']} steps")
