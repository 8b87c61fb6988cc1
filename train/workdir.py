"""The layout of a training workdir, and the files the run writes beside its
checkpoints.

::

  config.json          the config of the run (the latest, if it changed)
  config_history.jsonl every config the run was started with, and when
  dataset.json         class names, sizes, the eval preprocessing spec
  metrics.jsonl        one JSON line per log/eval point
  tensorboard/         the same as TensorBoard events
  checkpoints/<step>/  latest train states (orbax), with metadata
  best/<step>/         the state with the best eval accuracy so far
  checksums/           SHA-256 of each checkpoint's files
  damaged/             checkpoints found damaged on resume, set aside
  model/               the model bundle (resnext_jax.load_pretrained)
  init_from.json       a fine-tuning run's source: path, SHA-256, head
  summary.json         the figures of a completed run
  first_checkpoint.json  written at the first save: the workdir has held
                       checkpoints, so losing them all is not a fresh start
  lock                 pid and host of the run using the workdir

Every other module takes its paths from here.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

import ml_collections
from resnext_jax.weights import bundle

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
CHECKSUM_DIR = "checksums"
DAMAGED_DIR = "damaged"
MODEL_DIR = bundle.WORKDIR_BUNDLE
SUMMARY_FILE = "summary.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
FIRST_CHECKPOINT_FILE = "first_checkpoint.json"
LOCK_FILE = "lock"
INIT_FROM_FILE = "init_from.json"

# What the saved parameters depend on: changing any of these makes the
# checkpoint describe another network (or classes).
MODEL_FIELDS = ("model", "model_kwargs", "dataset", "image_size")
# What gives a step its batch (the data position is the step) and its
# learning rate: a resumed run with other values would continue another
# run's data order or schedule. The learning rate itself, momentum and
# weight decay may change (lowering the rate is the remedy for a diverging
# run), though not in ways that change the optimizer state's structure
# (see check_optimizer_state).
RESUME_FIELDS = ("batch_size", "seed", "shuffle_buffer_size", "train_split",
                 "folder_eval_fraction", "num_train_steps", "num_epochs",
                 "lr_schedule", "warmup_epochs", "lr_decay_epochs")
# Switches of one invocation, not part of what a run is.
_SWITCHES = ("allow_config_change", "restart_from_scratch", "progress_bar",
             "coordinator_address", "num_processes", "process_id")


class ConfigMismatchError(ValueError):
    """The workdir was trained with a different model, data set, data order
    or schedule."""


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked: not a writable directory, in
    use by another run, or it lost the checkpoints it held."""


def _to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _without_unset(config: dict) -> dict:
    """``config`` without its unset ``model_kwargs`` (None: the registry's
    value), so a workdir written before they were listed compares equal."""
    kwargs = config.get("model_kwargs")
    if not isinstance(kwargs, dict):
        return config
    return dict(config, model_kwargs={k: v for k, v in kwargs.items()
                                      if v is not None})


def config_changes(saved: dict, new: dict) -> dict:
    """``{field: [saved, new]}`` for every field that differs (but for the
    switches of one invocation)."""
    saved, new = _without_unset(saved), _without_unset(new)
    return {k: [saved.get(k), new.get(k)]
            for k in sorted(set(saved) | set(new))
            if k not in _SWITCHES and not _same(saved.get(k), new.get(k))}


def _append_history(workdir: pathlib.Path, record: dict) -> None:
    with open(workdir / CONFIG_HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def save_run_files(workdir: str | pathlib.Path,
                   config: ml_collections.ConfigDict,
                   dataset_info: dict, step: int = 0,
                   init_from: dict | None = None) -> dict:
    """Writes ``config.json`` and ``dataset.json``; returns the fields that
    changed since the config of the run so far (see :func:`config_changes`).

    Every config a run is started with is appended to
    ``config_history.jsonl`` (with ``step``, where it took over, and the
    ``init_from`` record of a run that starts from pretrained weights), so a
    changed config never erases the earlier one.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    new = _to_dict(config)
    path = workdir / CONFIG_FILE
    history = workdir / CONFIG_HISTORY_FILE
    changes = {}
    if path.is_file():
        saved = json.loads(path.read_text())
        changes = config_changes(saved, new)
        if not history.is_file():  # A workdir of an earlier version.
            _append_history(workdir, {"step": None, "config": saved})
    if changes or not history.is_file() or init_from:
        record = {"step": int(step), "time": time.time(),
                  "changes": changes, "config": new}
        if init_from:
            record["init_from"] = init_from
        _append_history(workdir, record)
    path.write_text(config.to_json_best_effort(indent=2))
    (workdir / DATASET_FILE).write_text(json.dumps(dataset_info, indent=2))
    return changes


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a workdir was trained with."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a "
                                "training workdir.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_dataset_info(workdir: str | pathlib.Path) -> dict:
    """Class names, image size and eval preprocessing of a workdir's data."""
    return json.loads((pathlib.Path(workdir) / DATASET_FILE).read_text())


def _read_json(workdir: str | pathlib.Path, name: str) -> dict | None:
    path = pathlib.Path(workdir) / name
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(workdir: str | pathlib.Path, name: str, value: dict) -> None:
    (pathlib.Path(workdir) / name).write_text(json.dumps(value, indent=2))


def read_init_record(workdir: str | pathlib.Path) -> dict | None:
    """What a fine-tuning run recorded of its source at step 0, or None."""
    return _read_json(workdir, INIT_FROM_FILE)


def write_init_record(workdir: str | pathlib.Path, record: dict) -> None:
    _write_json(workdir, INIT_FROM_FILE, record)


def read_summary(workdir: str | pathlib.Path) -> dict | None:
    """The summary of a completed run, or None."""
    return _read_json(workdir, SUMMARY_FILE)


def write_summary(workdir: str | pathlib.Path, summary: dict) -> None:
    _write_json(workdir, SUMMARY_FILE, summary)


def check_usable(workdir: str | pathlib.Path) -> None:
    """Raises :class:`WorkdirError` when ``workdir`` is a file, or cannot
    be created or written. Writes nothing."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory: "
                           "name a directory (new, or of an earlier run).")
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WorkdirError(f"--workdir {workdir} cannot be created: "
                           f"{existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} is not writable ({existing}"
                           ": permission denied or read-only file system); "
                           "name another --workdir.")


def record_checkpoint(workdir: str | pathlib.Path, step: int) -> None:
    """Notes (once) that the workdir holds checkpoints."""
    path = pathlib.Path(workdir) / FIRST_CHECKPOINT_FILE
    if not path.is_file():
        path.write_text(json.dumps({"step": int(step), "time": time.time()}))


def check_fresh_start(workdir: str | pathlib.Path,
                      config: ml_collections.ConfigDict) -> None:
    """Raises :class:`WorkdirError` when a workdir with no checkpoint left
    in ``checkpoints/`` or ``best/`` has held some (they were set aside as
    damaged, or deleted), unless ``config.restart_from_scratch``: a
    requeued job must not silently start over from step 0. The message
    says which of the two happened."""
    workdir = pathlib.Path(workdir)
    damaged = workdir / DAMAGED_DIR
    set_aside = sorted(p.name for p in damaged.iterdir()) if (
        damaged.is_dir()) else []
    first = _read_json(workdir, FIRST_CHECKPOINT_FILE)
    if not (first or set_aside) or config.restart_from_scratch:
        return
    if set_aside:
        what = (f"every checkpoint it held was damaged and set aside in "
                f"{damaged} ({', '.join(set_aside[:4])})")
    else:
        what = (f"it held checkpoints (the first at step {first.get('step')},"
                f" per {workdir / FIRST_CHECKPOINT_FILE}) but "
                f"{workdir / LATEST_DIR} and {workdir / BEST_DIR} now hold "
                "none: they were deleted")
    raise WorkdirError(
        f"{workdir}: {what}. To start over from step 0 in this workdir pass "
        "--config.restart_from_scratch=True, or use a new --workdir.")


def _optimizer_state_kind(config: dict) -> dict:
    """What decides the structure of the optimizer's state: a checkpoint's
    state restores only into an optimizer that agrees on all of it."""
    optimizer = config.get("optimizer", "sgd")
    return {"trainable": config.get("trainable", "all"),
            "optimizer": optimizer,
            "model_ema": bool(config.get("model_ema", False)),
            "momentum": ("none" if optimizer == "sgd"
                         and not config.get("momentum") else "used")}


def check_optimizer_state(workdir: str | pathlib.Path,
                          config: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigMismatchError` when the run's checkpoints hold
    an optimizer state of another structure than ``config``'s optimizer
    (``trainable``, the optimizer, momentum on or off, a moving average
    kept or not). ``allow_config_change`` cannot
    override it: such a checkpoint cannot be restored."""
    workdir = pathlib.Path(workdir)
    if not (workdir / CONFIG_FILE).is_file():
        return
    saved = _optimizer_state_kind(load_config(workdir).to_dict())
    new = _optimizer_state_kind(_to_dict(config))
    diffs = [f"{k}: {saved[k]!r} -> {new[k]!r}" for k in saved
             if saved[k] != new[k]]
    if diffs:
        raise ConfigMismatchError(
            f"{workdir} holds checkpoints of another optimizer "
            f"({'; '.join(diffs)}): its state has another structure and "
            "cannot be restored into this one. To start from that run's "
            "weights, use a new --workdir with "
            f"--config.init_from={workdir}.")


def check_resumable(workdir: str | pathlib.Path,
                    config: ml_collections.ConfigDict, step: int) -> None:
    """Raises :class:`ConfigMismatchError` naming the :data:`RESUME_FIELDS`
    whose values differ from the run's, unless
    ``config.allow_config_change``."""
    workdir = pathlib.Path(workdir)
    if config.allow_config_change or not (workdir / CONFIG_FILE).is_file():
        return
    saved, new = load_config(workdir).to_dict(), _to_dict(config)
    fields = [f for f in RESUME_FIELDS if not _same(saved.get(f), new.get(f))]
    if "num_epochs" in fields and saved.get("num_train_steps", -1) > 0 and (
            new["num_train_steps"] > 0):
        fields.remove("num_epochs")  # Not used by either.
    diffs = [f"{f}: {saved.get(f)!r} -> {new.get(f)!r}" for f in fields]
    engines = (_run_engine(workdir), _config_engine(config))
    if None not in engines and engines[0] != engines[1]:
        # config.data_engine="auto" resolves by what is installed.
        diffs.append(f"input engine: {engines[0]!r} -> {engines[1]!r}, "
                     "whose random crops differ")
    if diffs:
        diffs = "; ".join(diffs)
        raise ConfigMismatchError(
            f"resuming {workdir} at step {step} with another data order or "
            f"learning-rate schedule ({diffs}): the data position and the "
            "schedule would no longer mean what they did. Use a new "
            "--workdir, or pass --config.allow_config_change=True to resume "
            "anyway.")


def _run_engine(workdir: pathlib.Path) -> str | None:
    """The input engine a run read its image data with (``dataset.json``);
    runs from before there was a choice read them with tf.data. None for
    the digits, or no record."""
    if not (workdir / DATASET_FILE).is_file():
        return None
    info = load_dataset_info(workdir)
    if "data_engine" in info:
        return info["data_engine"]
    return None if info.get("dataset") == "digits" else "tf"


def _config_engine(config: ml_collections.ConfigDict) -> str | None:
    # pylint: disable=import-outside-toplevel
    from train.data.engines import resolve_engine
    from train.data.source import DataError
    try:
        engine = resolve_engine(config)
    except (ValueError, DataError):  # Refused where the data are read.
        return None
    return None if engine == "digits" else engine


class WorkdirLock:
    """``<workdir>/lock`` for the duration of a ``with`` block: a second
    run on the workdir is refused, naming the holder (pid and host). The
    lock of a process that died without releasing it (``kill -9``) is taken
    over when it was on this host."""

    def __init__(self, workdir: str | pathlib.Path):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self._me = {"pid": os.getpid(), "host": socket.gethostname()}
        self._held = False

    def __enter__(self) -> "WorkdirLock":
        for _ in range(3):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                             0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    raise WorkdirError(self._in_use(holder)) from None
                print(f"WARNING: taking over {self.path} of process "
                      f"{holder.get('pid')} on {holder.get('host')}, which "
                      "no longer runs.", flush=True)
                self.path.unlink(missing_ok=True)
                continue
            except OSError as e:  # What check_usable could not foresee.
                raise WorkdirError(f"cannot write {self.path}: {e.strerror}; "
                                   "name another --workdir.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(dict(self._me, time=time.time()), f)
            self._held = True
            return self
        raise WorkdirError(f"could not take {self.path}: another run keeps "
                           "taking it.")

    def __exit__(self, *exc) -> None:
        if self._held and self._holder() == self._me:
            self.path.unlink(missing_ok=True)
        self._held = False

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return {"pid": int(holder["pid"]), "host": str(holder["host"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # Being written, or torn.

    def _stale(self, holder: dict) -> bool:
        if not holder:  # Torn by a crash, unless it is being written now.
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except FileNotFoundError:
                return True
        if holder["host"] != self._me["host"]:
            return False  # Cannot tell: another machine's process.
        if holder["pid"] == self._me["pid"]:
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _in_use(self, holder: dict) -> str:
        who = (f"process {holder['pid']} on host {holder['host']}"
               if holder else "a run that is starting")
        return (f"{self.path.parent} is in use by {who} ({self.path}); wait "
                "for that run to end, or use another --workdir. If that "
                f"process is gone (on another host), delete {self.path}.")


def differences(saved: dict, config: ml_collections.ConfigDict,
                saved_classes: int | None, num_classes: int) -> list[str]:
    """``"field: saved -> new"`` for each model-defining field that changed."""
    saved = _without_unset(saved)
    new = _without_unset(json.loads(config.to_json_best_effort()))
    diffs = [f"{f}: {saved.get(f)!r} -> {new.get(f)!r}" for f in MODEL_FIELDS
             if json.dumps(saved.get(f), sort_keys=True)
             != json.dumps(new.get(f), sort_keys=True)]
    if saved_classes is not None and saved_classes != num_classes:
        diffs.append(f"num_classes: {saved_classes} -> {num_classes}")
    return diffs


def check_compatible(workdir: str | pathlib.Path,
                     config: ml_collections.ConfigDict,
                     num_classes: int) -> None:
    """Raises :class:`ConfigMismatchError` naming the changed fields, unless
    ``config.allow_config_change``; a new workdir always passes."""
    workdir = pathlib.Path(workdir)
    if not (workdir / CONFIG_FILE).is_file():
        return
    saved = load_config(workdir).to_dict()
    saved_classes = (len(load_dataset_info(workdir)["class_names"])
                     if (workdir / DATASET_FILE).is_file() else None)
    diffs = differences(saved, config, saved_classes, num_classes)
    if diffs and not config.allow_config_change:
        raise ConfigMismatchError(
            f"{workdir} was trained with another config ({'; '.join(diffs)})"
            ". Use a new --workdir, or pass "
            "--config.allow_config_change=True to resume from it anyway.")
