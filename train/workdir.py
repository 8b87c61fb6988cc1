"""The layout of a training workdir, and the files the run writes beside its
checkpoints.

::

  config.json          the config of the run
  dataset.json         class names, sizes, the eval preprocessing spec
  metrics.jsonl        one JSON line per log/eval point
  tensorboard/         the same as TensorBoard events
  checkpoints/<step>/  latest train states (orbax), with metadata
  best/<step>/         the state with the best eval accuracy so far
  checksums/           SHA-256 of each checkpoint's files
  damaged/             checkpoints found damaged on resume, set aside
  model/               the model bundle (resnext_jax.load_pretrained)
  summary.json         the figures of a completed run

Every other module takes its paths from here.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
from resnext_jax import bundle

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

# What the saved parameters depend on: changing any of these makes the
# checkpoint describe another network (or classes).
MODEL_FIELDS = ("model", "model_kwargs", "dataset", "image_size")


class ConfigMismatchError(ValueError):
    """The workdir was trained with a different model or data set."""


def save_run_files(workdir: str | pathlib.Path,
                   config: ml_collections.ConfigDict,
                   dataset_info: dict) -> None:
    """Writes ``config.json`` and ``dataset.json``."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
    (workdir / DATASET_FILE).write_text(json.dumps(dataset_info, indent=2))


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


def read_summary(workdir: str | pathlib.Path) -> dict | None:
    """The summary of a completed run, or None."""
    path = pathlib.Path(workdir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_summary(workdir: str | pathlib.Path, summary: dict) -> None:
    (pathlib.Path(workdir) / SUMMARY_FILE).write_text(
        json.dumps(summary, indent=2))


def differences(saved: dict, config: ml_collections.ConfigDict,
                saved_classes: int | None, num_classes: int) -> list[str]:
    """``"field: saved -> new"`` for each model-defining field that changed."""
    new = json.loads(config.to_json_best_effort())
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
