"""Checkpoints of a training workdir: save, resume, load for inference.

``checkpoints/<step>/`` and ``best/<step>/`` of the workdir (see
:mod:`train.workdir`). A checkpoint holds the whole :class:`~train.steps.TrainState` (params, BN
statistics, optimizer state, step, rng) and JSON metadata; the input
pipeline position is the step (see :mod:`train.data`).

A run resumes from the newest intact state of either folder: a damaged
checkpoint (files that fail their checksums, see
:mod:`train.checkpoint_integrity`, or that orbax cannot read) is moved to
``damaged/`` with a warning and the previous one is restored; if none is
readable the run stops rather than start over.
"""

from __future__ import annotations

import contextlib
import errno
import logging as py_logging
import pathlib
import shutil
import time
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp
from absl import logging

from train import checkpoint_integrity as integrity
from train.steps import TrainState
from train.workdir import (BEST_DIR, DAMAGED_DIR, LATEST_DIR, load_config,
                           load_dataset_info, record_checkpoint)


class CheckpointError(RuntimeError):
    """No checkpoint of a workdir that has some could be restored."""


def _manager(directory: pathlib.Path, max_to_keep: int
             ) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        # Synchronous: the state is donated to the next step, and a save
        # that has returned is a save that is on disk.
        enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


class Checkpointer:
    """The latest ``keep`` states and the best one of a workdir."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
        self.workdir = pathlib.Path(workdir)
        self.latest = _manager(self.workdir / LATEST_DIR, keep)
        self.best = _manager(self.workdir / BEST_DIR, 1)

    def save(self, state: TrainState, metadata: dict,
             best: bool = False) -> None:
        """Saves ``state`` under its step (to ``best/`` if ``best``)."""
        manager = self.best if best else self.latest
        kind = BEST_DIR if best else LATEST_DIR
        step = int(jax.device_get(state.step))
        if step in manager.all_steps():
            return
        try:
            with _quiet_disk_full():
                manager.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_saved_tree(state)),
                    metadata=ocp.args.JsonSave(dict(metadata, step=step))))
                manager.wait_until_finished()
        except Exception as e:
            if not _no_space(e):
                raise
            self._remove_failed_save(kind, step)
            kept = sorted(self.latest.all_steps())
            raise CheckpointError(
                f"no space left on {self.workdir / kind} (saving step {step});"
                " removed what the save left, earlier checkpoints kept "
                f"({', '.join(map(str, kept)) or 'none'}). Free space, then "
                "run the same command to resume.") from None
        if jax.process_index() == 0:
            integrity.write_manifest(self.workdir, kind, step,
                                     self._step_dir(kind, step))
            integrity.prune(self.workdir, kind, manager.all_steps())
            record_checkpoint(self.workdir, step)

    def _remove_failed_save(self, kind: str, step: int) -> None:
        """Deletes orbax's temporary folders (and an unfinished step) so
        that a failed save does not keep filling the disk."""
        if jax.process_index() == 0:
            parent = self.workdir / kind
            for partial in [*parent.glob(f"{step}.orbax-checkpoint-tmp*"),
                            parent / str(step)]:
                shutil.rmtree(partial, ignore_errors=True)
        manager = self.best if kind == BEST_DIR else self.latest
        manager.reload()

    def _step_dir(self, kind: str, step: int) -> pathlib.Path:
        return (self.workdir / kind / str(step)).absolute()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def _manager_of(self, kind: str) -> ocp.CheckpointManager:
        return self.best if kind == BEST_DIR else self.latest

    def restore_latest(self, template: TrainState
                       ) -> tuple[TrainState, dict, pathlib.Path] | None:
        """``(state, metadata, step directory)`` of the newest intact state
        in ``checkpoints/`` or ``best/``, placed like ``template``; None if
        the workdir has no checkpoint.

        ``best/`` counts: a run killed after its first eval but before its
        first periodic save holds only ``best/<step>``, a whole train state.
        At equal steps ``checkpoints/`` is read first. Damaged ones are set
        aside with a warning; :class:`CheckpointError` if all are damaged.
        """
        candidates = sorted(
            [(s, 1, LATEST_DIR) for s in self.latest.all_steps()]
            + [(s, 0, BEST_DIR) for s in self.best.all_steps()],
            reverse=True)
        if not candidates:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                _saved_tree(template))
        problems = []
        for step, _, kind in candidates:
            step_dir = self._step_dir(kind, step)
            problem = integrity.verify(self.workdir, kind, step, step_dir)
            if problem is None:
                self._check_fits(step_dir, abstract)
                try:
                    restored = self._manager_of(kind).restore(
                        step, args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract),
                            metadata=ocp.args.JsonRestore()))
                except Exception as e:
                    if integrity.has_manifest(self.workdir, kind, step):
                        # Intact files that do not fit: another model, not
                        # damage (see config.allow_config_change).
                        raise CheckpointError(
                            f"checkpoint {step_dir} is intact but does not "
                            f"fit the current model and optimizer: {e}"
                        ) from e
                    # No checksums to tell: an unreadable file is damage.
                    problem = f"{type(e).__name__}: {str(e)[:300]}"
            if problem is None:
                if problems:
                    self.latest.reload()
                    self.best.reload()
                state = flax.serialization.from_state_dict(
                    template, {"ema": {}, **restored["state"]})
                return state, dict(restored["metadata"]), step_dir
            problems.append(f"{kind}/{step}: {problem}")
            self._set_aside(kind, step, problem)
        raise CheckpointError(
            f"every checkpoint in {self.workdir / LATEST_DIR} and "
            f"{self.workdir / BEST_DIR} is damaged ({'; '.join(problems)}); "
            f"they were moved to {self.workdir / DAMAGED_DIR}. Not starting "
            "from scratch: pass --config.restart_from_scratch=True for that, "
            "or use a new --workdir.")

    def _check_fits(self, step_dir: pathlib.Path, abstract) -> None:
        """Raises :class:`CheckpointError` naming the arrays whose shapes
        differ when the checkpoint holds another network than ``abstract``
        (``allow_config_change`` with another model): said before orbax
        tries, which would fail with its own advice and leave its reader
        tasks to print tracebacks at exit."""
        absl_logger = py_logging.getLogger("absl")
        level = absl_logger.level
        # Orbax warns that the item has no metadata file of its own: true
        # of every checkpoint a CheckpointManager writes, and harmless.
        absl_logger.setLevel(py_logging.ERROR)
        try:
            with ocp.StandardCheckpointer() as reader:
                saved = reader.metadata(
                    (step_dir / "state").absolute()).item_metadata.tree
        except Exception:  # pylint: disable=broad-except
            return  # Unreadable metadata: the restore tells damage apart.
        finally:
            absl_logger.setLevel(level)
        differ = _shape_differences(saved, abstract)
        if differ:
            raise CheckpointError(
                f"checkpoint {step_dir} holds another network than this "
                f"config's ({'; '.join(differ[:3])}"
                f"{'; ...' if len(differ) > 3 else ''}): "
                "config.allow_config_change resumes only a checkpoint that "
                "fits the new model. To start from this run's weights with "
                "another model, use a new --workdir with "
                f"--config.init_from={self.workdir}.")

    def _set_aside(self, kind: str, step: int, problem: str) -> None:
        """Moves a damaged step out of orbax's sight (so the step can be
        saved again) and keeps it for inspection."""
        target = (self.workdir / DAMAGED_DIR /
                  f"{kind}-{step}-{int(time.time())}")
        message = (f"checkpoint {self._step_dir(kind, step)} is "
                   f"damaged ({problem}); moved to {target}, falling back to "
                   "the previous checkpoint.")
        logging.warning(message)
        print(f"WARNING: {message}", flush=True)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self._step_dir(kind, step)), str(target))
            integrity.manifest_path(self.workdir, kind, step).unlink(
                missing_ok=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"set_aside_{kind}_{step}")

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _saved_tree(state: TrainState) -> dict:
    """``state`` as a checkpoint holds it: a run without a moving average
    (``ema`` empty) saves the same tree as before the field existed, so
    that its checkpoints and older ones restore alike."""
    tree = flax.serialization.to_state_dict(state)
    if not jax.tree.leaves(tree.get("ema", {})):
        tree.pop("ema", None)
    return tree


def _shape_differences(saved, expected) -> list[str]:
    """``"name: saved shape -> expected shape"`` for each array of two state
    trees whose shapes differ, and the arrays only one of them holds."""
    def shapes(tree):
        return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ()))
                for path, leaf in jax.tree_util.tree_flatten_with_path(
                    tree)[0]}
    have, want = shapes(saved), shapes(expected)
    differ = [f"{name}: {have[name]} -> {want[name]}"
              for name in sorted(set(have) & set(want))
              if have[name] != want[name]]
    differ += [f"{name}: only in the checkpoint"
               for name in sorted(set(have) - set(want))]
    differ += [f"{name}: not in the checkpoint"
               for name in sorted(set(want) - set(have))]
    return differ


class _DiskFullFilter(py_logging.Filter):
    """Drops log records about a full disk: orbax logs one traceback per
    thread and array; :meth:`Checkpointer.save` says it in one line."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (_no_space(error) if error else
                    "No space left on device" in record.getMessage())


@contextlib.contextmanager
def _quiet_disk_full():
    logger = py_logging.getLogger("absl")
    quiet = _DiskFullFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _no_space(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it, through orbax's and
    tensorstore's wrappers) is a full disk."""
    seen = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e):  # tensorstore's message.
            return True
        todo += [e.__cause__, e.__context__,
                 *getattr(e, "exceptions", ())]
    return False


def has_saved_steps(workdir: str | pathlib.Path) -> bool:
    """Whether ``checkpoints/`` or ``best/`` holds a step (orbax names them
    by their number): the run will resume, or stop if none is readable, but
    never start from step 0. Reads no checkpoint."""
    return any(
        folder.is_dir() and any(p.is_dir() and p.name.isdigit()
                                for p in folder.iterdir())
        for folder in (pathlib.Path(workdir) / LATEST_DIR,
                       pathlib.Path(workdir) / BEST_DIR))


def _local_target(state_dir: pathlib.Path):
    """Shapes and dtypes of a saved state, placed on this host's first
    device: a checkpoint saved by many devices or hosts loads anywhere."""
    with ocp.StandardCheckpointer() as reader:
        saved = reader.metadata(state_dir.absolute()).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        saved.tree)


def restore_for_inference(workdir: str | pathlib.Path, which: str = "best"
                          ) -> tuple[Any, dict, list[str]]:
    """``(model, variables, class_names)`` of a training workdir.

    Loads the best checkpoint (``which="best"``, falling back to the latest
    when none was kept) or the latest (``which="latest"``) and rebuilds the
    model from the saved config, without a BatchNorm axis. ``variables`` is
    ``{"params", "batch_stats"}``, ready for ``model.apply(variables, x)``:
    the moving average's where the run reports it (``model_ema`` and
    ``model_ema_bundle``).
    Outside the training program, load the run's model bundle instead
    (``resnext_jax.load_pretrained(workdir)``).
    """
    from train.model_factory import build_model  # Avoids an import cycle.

    if which not in ("best", "latest"):
        raise ValueError(f"which (={which!r}) must be 'best' or 'latest'.")
    workdir = pathlib.Path(workdir)
    config = load_config(workdir)
    info = load_dataset_info(workdir)
    order = [BEST_DIR, LATEST_DIR] if which == "best" else [LATEST_DIR]
    for sub in order:
        if not (workdir / sub).is_dir():
            continue
        manager = ocp.CheckpointManager(
            (workdir / sub).absolute(),
            options=ocp.CheckpointManagerOptions(read_only=True))
        step = manager.latest_step()
        if step is None:
            continue
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_local_target(
                workdir / sub / str(step) / "state"))))
        state = restored["state"]
        # A run that reports its moving average is used through it.
        if (config.get("model_ema") and config.get("model_ema_bundle", True)
                and state.get("ema")):
            state = state["ema"]
        variables = {"params": state["params"],
                     "batch_stats": state.get("batch_stats", {})}
        model = build_model(config, len(info["class_names"]), axis_name=None)
        return model, variables, list(info["class_names"])
    raise FileNotFoundError(f"no checkpoint in {workdir / BEST_DIR} or "
                            f"{workdir / LATEST_DIR}.")
