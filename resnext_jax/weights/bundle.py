"""The model bundle: how a trained model leaves the trainer.

A bundle is a directory of two files::

  weights.safetensors   torchvision/timm tensor names (to_torch_state_dict)
  model.json            format, model name and fields, class names, the
                        preprocessing spec (resnext_jax.Preprocessing)

The training program writes one to ``<workdir>/model/``; predict, export and
serving read it through `load_pretrained`, which also reads a
torchvision/timm weights file given a model name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping, NamedTuple, Sequence

import jax.numpy as jnp

from resnext_jax import __version__
from resnext_jax.weights import pretrained
from resnext_jax._files import umask_mode
from resnext_jax.weights.state_dict import (load_torch_state_dict, read_state_dict,
                                 save_safetensors)
from resnext_jax.models.registry import create_model
from resnext_jax.models.resnext import ResNeXt
from resnext_jax.weights.pretrained import pretrained_preprocessing
from resnext_jax.inference.preprocessing import Preprocessing

FORMAT = "resnext_jax.bundle/1"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"
# Where a training workdir keeps its bundle.
WORKDIR_BUNDLE = "model"
# Fields that describe how a model runs here, not what it is.
_RUNTIME_FIELDS = ("parent", "name", "axis_name")
_DTYPE_FIELDS = ("dtype", "param_dtype")


class Pretrained(NamedTuple):
    """What `load_pretrained` returns."""
    model: ResNeXt
    variables: dict
    preprocessing: Preprocessing
    class_names: list[str]


def model_fields(model: ResNeXt) -> dict:
    """The model's fields as JSON values (dtypes by name), without the
    per-run ones (``axis_name``)."""
    fields = {}
    for field in dataclasses.fields(model):
        if field.name in _RUNTIME_FIELDS:
            continue
        value = getattr(model, field.name)
        if field.name in _DTYPE_FIELDS:
            value = jnp.dtype(value).name
        elif field.name == "block_cls":
            value = f"{value.__module__}:{value.__qualname__}"
        elif isinstance(value, (tuple, list)):
            value = [int(v) for v in value]
        fields[field.name] = value
    return fields


def _decode_fields(fields: Mapping) -> dict:
    fields = dict(fields)
    for key in _DTYPE_FIELDS:
        if key in fields:
            fields[key] = jnp.dtype(fields[key])
    for key in ("stage_sizes", "stage_widths", "out_indices"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    return fields


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in torchvision's index order."""
    from importlib import resources  # pylint: disable=import-outside-toplevel

    text = resources.files("resnext_jax").joinpath(
        "data", "imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet names for 1000 classes, else ``class_0``, ``class_1``..."""
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class_{i}" for i in range(num_classes)]


def save_pretrained(directory: str | os.PathLike, model: ResNeXt,
                    variables: Mapping, *,
                    class_names: Sequence[str] | None = None,
                    preprocessing: Preprocessing | None = None,
                    model_name: str | None = None,
                    extra: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Writes a bundle to ``directory``; returns it.

    ``directory`` is new, empty, or a bundle, whose two files are replaced
    (any other files in it are kept). A directory holding anything else is
    refused with `FileExistsError`: it is never emptied. The files
    are written to a temporary directory beside it first, then each takes
    its place in one rename: a kill at any moment leaves a whole file, old
    or new, never a truncated one. ``model_name`` (a registry name) is
    recorded for people; the model is rebuilt from its fields. ``extra``
    (JSON values, e.g. the step) is recorded under ``"extra"``.
    """
    directory = pathlib.Path(directory)
    _check_replaceable(directory)
    class_names = list(class_names) if class_names is not None else (
        default_class_names(model.num_classes))
    if len(class_names) != model.num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} entries but the model has "
            f"num_classes={model.num_classes}.")
    preprocessing = preprocessing or Preprocessing()
    config = {"format": FORMAT, "model": model_name or "custom",
              "model_kwargs": model_fields(model),
              "class_names": class_names,
              "preprocessing": preprocessing.to_dict(),
              "resnext_jax_version": __version__,
              "extra": dict(extra or {})}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-",
                                        dir=directory.parent))
    try:
        save_safetensors(variables, model, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        # The files have the umask's mode already; mkdtemp's 0700 does not.
        os.chmod(tmp, umask_mode(0o777))
        if directory.is_dir() and any(directory.iterdir()):
            _replace_own_files(tmp, directory)
        else:
            if directory.is_dir():
                directory.rmdir()  # Empty: a rename cannot land on it.
            tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


_OWN_FILES = (WEIGHTS_FILE, CONFIG_FILE)


def _check_replaceable(directory: pathlib.Path) -> None:
    """Refuses a path that is a file, or a directory holding more than an
    earlier bundle: saving must never delete what it did not write."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; save the bundle to a "
                              "new or empty directory, or an earlier bundle.")
    if not directory.is_dir() or is_bundle(directory):
        return
    found = sorted(p.name for p in directory.iterdir())
    if found:
        raise FileExistsError(
            f"{directory} is not empty and is not a model bundle (it holds "
            f"{', '.join(found[:5])}{', ...' if len(found) > 5 else ''}); "
            "save_pretrained writes only to a new or empty directory or over "
            f"an earlier bundle ({CONFIG_FILE} and {WEIGHTS_FILE}). Name a "
            "new directory, e.g. its model/ subdirectory.")


def _replace_own_files(new: pathlib.Path, bundle_dir: pathlib.Path) -> None:
    """Moves the bundle's files from ``new`` over ``bundle_dir``'s, one
    rename each, leaving its other files alone. The weights go first: until
    ``model.json`` is replaced too, a reader that checks shapes refuses the
    mix rather than mislabel it."""
    for file in _OWN_FILES:
        os.replace(new / file, bundle_dir / file)


def read_config(directory: str | os.PathLike) -> dict:
    """A bundle's ``model.json``."""
    path = pathlib.Path(directory) / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} has format {config.get('format')!r}; this "
                         f"version of resnext_jax reads {FORMAT!r}.")
    return config


def is_bundle(path: str | os.PathLike) -> bool:
    path = pathlib.Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def find_bundle(path: pathlib.Path) -> pathlib.Path:
    """The bundle directory of ``path``: itself, or a workdir's ``model/``;
    FileNotFoundError saying what ``path`` lacks otherwise."""
    if is_bundle(path):
        return path
    if is_bundle(path / WORKDIR_BUNDLE):
        return path / WORKDIR_BUNDLE
    if (path / "config.json").is_file() or (path / "checkpoints").is_dir():
        raise FileNotFoundError(
            f"{path} is a training workdir without a model bundle "
            f"({WORKDIR_BUNDLE}/): it was trained by an older version or has "
            "not reached an eval yet; from the repository's checkout run "
            f"`python -m train.bundle {path}` to write one from its "
            "checkpoint.")
    raise FileNotFoundError(
        f"{path} holds no model bundle ({CONFIG_FILE} and {WEIGHTS_FILE}, "
        f"directly or in {WORKDIR_BUNDLE}/).")


def load_pretrained(path: str | os.PathLike, model_name: str | None = None,
                    **model_kwargs: Any) -> Pretrained:
    """Loads a model with its variables, preprocessing and class names.

    ``path`` is a bundle directory, a training workdir (its ``model/``), a
    torchvision/timm weights file (``.safetensors`` or ``.pth``) together
    with ``model_name``, or, where no such path exists, the name of
    published weights (``"resnext50_32x4d.IMAGENET1K_V2"``,
    ``"resnext50_32x4d.a1h_in1k"``, or a model alone for its default),
    downloaded once (`resnext_jax.weights.pretrained`). ``model_kwargs`` override model
    fields, e.g. ``dtype=jnp.bfloat16`` or ``conv_impl="xla"``; for a weights
    file the classifier size comes from the file unless ``num_classes`` is
    given.

    Returns ``Pretrained(model, variables, preprocessing, class_names)``.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        if model_name is not None:
            raise ValueError(
                f"model_name (={model_name!r}) is for a weights file; "
                f"{path} is a directory, whose model.json names the model.")
        directory = find_bundle(path)
        config = read_config(directory)
        fields = _decode_fields(config["model_kwargs"])
        fields.update(model_kwargs)
        model = ResNeXt(**fields)
        variables = load_torch_state_dict(directory / WEIGHTS_FILE, model)
        preprocessing = Preprocessing.from_dict(config["preprocessing"])
        class_names = list(config["class_names"])
        return Pretrained(model, variables, preprocessing, class_names)
    if not path.exists():
        published = (pretrained.resolve_name(str(path)) if model_name is None
                     else None)
        if published is None:
            raise FileNotFoundError(
                f"{path} does not exist, and is not the name of published "
                "weights (rx.list_pretrained()).")
        return load_published(*published, **model_kwargs)
    if model_name is None:
        raise ValueError(
            f"{path} is a weights file: give the model's name too, e.g. "
            "load_pretrained(path, 'resnext50_32x4d').")
    state = read_state_dict(path)
    if "num_classes" not in model_kwargs:
        model_kwargs["num_classes"] = (state["fc.weight"].shape[0]
                                       if "fc.weight" in state else 0)
    model = create_model(model_name, **model_kwargs)
    variables = load_torch_state_dict(
        state, model, head="keep" if model.num_classes else "drop")
    # The transform the publisher evaluated these weights with (timm's
    # interpolation and crop_pct for timm's names).
    preprocessing = pretrained_preprocessing(model_name) or (
        Preprocessing.cifar() if model.stem == "cifar" else Preprocessing())
    return Pretrained(model, variables, preprocessing,
                      default_class_names(model.num_classes))


def load_published(model_name: str, tag: str, **model_kwargs: Any
                   ) -> Pretrained:
    """Published weights ``model_name.tag`` (downloaded once), with the
    preprocessing they were published with."""
    loaded = load_pretrained(pretrained.weights_file(model_name, tag),
                             model_name, **model_kwargs)
    return loaded._replace(
        preprocessing=pretrained.preprocessing_of(model_name, tag))
