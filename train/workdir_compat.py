"""Refusing to resume a workdir with a config of another model or data."""

from __future__ import annotations

import json
import pathlib

import ml_collections

from train import checkpoint

# What the saved parameters depend on: changing any of these makes the
# checkpoint describe another network (or classes).
FIELDS = ("model", "model_kwargs", "dataset", "image_size")


class ConfigMismatchError(ValueError):
    """The workdir was trained with a different model or data set."""


def differences(saved: dict, config: ml_collections.ConfigDict,
                saved_classes: int | None, num_classes: int) -> list[str]:
    """``"field: saved -> new"`` for each field that changed."""
    new = json.loads(config.to_json_best_effort())
    diffs = [f"{f}: {saved.get(f)!r} -> {new.get(f)!r}" for f in FIELDS
             if json.dumps(saved.get(f), sort_keys=True)
             != json.dumps(new.get(f), sort_keys=True)]
    if saved_classes is not None and saved_classes != num_classes:
        diffs.append(f"num_classes: {saved_classes} -> {num_classes}")
    return diffs


def check(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
          num_classes: int) -> None:
    """Raises :class:`ConfigMismatchError` naming the changed fields, unless
    ``config.allow_config_change``; a new workdir always passes."""
    workdir = pathlib.Path(workdir)
    path = workdir / checkpoint.CONFIG_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    info = workdir / checkpoint.DATASET_FILE
    saved_classes = (len(json.loads(info.read_text())["class_names"])
                     if info.is_file() else None)
    diffs = differences(saved, config, saved_classes, num_classes)
    if diffs and not config.allow_config_change:
        raise ConfigMismatchError(
            f"{workdir} was trained with another config ({'; '.join(diffs)})"
            ". Use a new --workdir, or pass "
            "--config.allow_config_change=True to resume from it anyway.")
