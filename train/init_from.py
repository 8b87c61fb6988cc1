"""Pretrained weights for a run (``config.init_from``): finding the source,
its preprocessing, and its variables fitted to the configured model.

A source is the name of published weights
(``resnext50_32x4d.IMAGENET1K_V2``), a torchvision/timm weights file
(``.safetensors``, ``.pth``/``.pt``; read without torch), a model bundle
directory (``model.json`` +
``weights.safetensors``) or a training workdir (its ``model/`` bundle).

The source is read only by a run that starts at step 0. A run that resumes
restores its own checkpoint and takes the source's facts (path, SHA-256,
head, preprocessing) from ``<workdir>/init_from.json``, written at step 0:
the source may have changed or gone since.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import ml_collections
import numpy as np
import resnext_jax
from resnext_jax.weights import bundle as rx_bundle
from resnext_jax.weights import pretrained as rx_pretrained
from resnext_jax.weights.state_dict import TORCH_SUFFIXES

from train import workdir as workdir_lib
from train.checkpoint_integrity import file_sha256
from train.config_validation import ConfigError, dataset_family
from train.model_factory import model_overrides


class InitFromError(ConfigError):
    """``config.init_from`` cannot initialize the configured model."""


def _fail(value, rule):
    raise InitFromError(f"config.init_from (={value!r}) {rule}")


_KINDS = ("a .safetensors or .pth/.pt weights file, a model bundle "
          "directory (model.json + weights.safetensors), a training "
          "workdir (its model/ bundle) or the name of published weights "
          "(e.g. resnext50_32x4d.tv_in1k, see resnext_jax.weights.pretrained)")


@dataclasses.dataclass(frozen=True)
class Source:
    """A pretrained source, found and described but not yet read."""
    given: str  # config.init_from as written
    kind: str  # "weights", "bundle", "workdir" or "published"
    weights: pathlib.Path  # the tensor file
    # The eval spec the weights expect (a bundle's own; for a weights file
    # the registry's, see resnext_jax.weights.pretrained); None if unknown.
    preprocessing: resnext_jax.Preprocessing | None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run does with ``config.init_from``: ``source`` to read at
    step 0, or (resuming) only ``record``, what step 0 recorded."""
    source: Source | None
    record: dict | None

    @property
    def source_preprocessing(self) -> resnext_jax.Preprocessing | None:
        if self.source is not None:
            return self.source.preprocessing
        spec = (self.record or {}).get("preprocessing")
        return resnext_jax.Preprocessing.from_dict(spec) if spec else None


def plan(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
         resuming: bool) -> Plan:
    """Finds the source of a run starting at step 0 (errors for a missing
    path or an unknown file type); a resuming run does not touch it."""
    if not config.init_from:
        return Plan(None, None)
    if resuming:
        return Plan(None, workdir_lib.read_init_record(workdir))
    return Plan(find_source(config), None)


def find_source(config: ml_collections.ConfigDict) -> Source:
    """``config.init_from`` as a :class:`Source`."""
    given = config.init_from
    path = pathlib.Path(given).expanduser()
    published = None if path.exists() else rx_pretrained.resolve_name(given)
    if published is not None:
        try:
            downloaded = rx_pretrained.weights_file(*published)
        except (OSError, ValueError, ImportError) as e:
            _fail(given, f"names published weights that could not be "
                  f"read: {e}")
        return Source(given, "published", downloaded,
                      rx_pretrained.preprocessing_of(*published))
    if not path.exists():
        _fail(given, f"does not exist; give {_KINDS}.")
    if path.is_dir():
        try:
            directory = rx_bundle.find_bundle(path)
        except FileNotFoundError as e:
            _fail(given, f"is a directory without a model bundle: {e}")
        try:
            spec = rx_bundle.read_config(directory)["preprocessing"]
            preprocessing = resnext_jax.Preprocessing.from_dict(spec)
        except (ValueError, KeyError, TypeError) as e:
            _fail(given, f"has an unreadable "
                  f"{directory / rx_bundle.CONFIG_FILE}: {e}")
        kind = "bundle" if directory == path else "workdir"
        return Source(given, kind, directory / rx_bundle.WEIGHTS_FILE,
                      preprocessing)
    suffix = path.suffix.lower()
    if suffix not in TORCH_SUFFIXES and suffix != ".safetensors":
        _fail(given, f"is a file of unknown type ({suffix or 'no suffix'}); "
              f"give {_KINDS}.")
    preprocessing = (None if config.model == "custom" else
                     resnext_jax.weights.pretrained.pretrained_preprocessing(
                         config.model))
    return Source(given, "weights", path, preprocessing)


def run_preprocessing(config: ml_collections.ConfigDict,
                      source: resnext_jax.Preprocessing | None
                      ) -> resnext_jax.Preprocessing | None:
    """The run's eval spec from its source's: the source's rule
    (interpolation, crop fraction, mean/std) at ``config.image_size``; None
    (the data set decides) without a source spec, with a ``preprocess``
    other than "auto" (the config's override) or for the digits."""
    if (source is None or config.preprocess != "auto"
            or dataset_family(config.dataset) == "digits"):
        return None
    return source.with_crop_size(config.image_size)


def resolve_head(config: ml_collections.ConfigDict, source_classes: int,
                 num_classes: int) -> str:
    """``config.head`` as the converter's mode: "keep" or "reinit"."""
    same = source_classes == num_classes
    if config.head == "keep" and not same:
        raise InitFromError(
            f"config.head (='keep') needs the pretrained classifier's class "
            f"count to be the data set's: {config.init_from!r} has "
            f"{source_classes} classes, the data set {num_classes}; use "
            "config.head='auto' or 'reinit' for a fresh classifier.")
    if config.head == "auto":
        return "keep" if same else "reinit"
    return config.head


def load(source: Source, config: ml_collections.ConfigDict,
         model: resnext_jax.ResNeXt, num_classes: int) -> tuple[dict, dict]:
    """``(variables, record)``: the source's variables for ``model`` (host
    numpy arrays, a fresh classifier per ``config.head``) and what the run
    records of them. Raises :class:`InitFromError` when they do not fit.
    Compiles nothing."""
    try:
        state = resnext_jax.weights.read_state_dict(source.weights)
    except Exception as e:  # pylint: disable=broad-except
        # A damaged or foreign file (torch's unpickler raises many kinds):
        # the file, not the run, is at fault; say so in one line.
        _fail(source.given, f"could not be read: {type(e).__name__}: "
              f"{' '.join(str(e).split())}")
    source_classes = (state["fc.weight"].shape[0] if "fc.weight" in state
                      else 0)
    head = resolve_head(config, source_classes, num_classes)
    try:
        variables = resnext_jax.load_torch_state_dict(
            state, model.clone(axis_name=None), head=head, rng=config.seed)
    except resnext_jax.weights.StateDictMismatchError as e:
        _fail(source.given, f"does not fit config.model (={config.model!r}"
              f", model_kwargs={model_overrides(config)}): "
              f"{_mismatch_summary(e)}")
    record = {
        "init_from": source.given,
        "path": str(source.weights.resolve()),
        "kind": source.kind,
        "sha256": file_sha256(source.weights),
        "head": head,
        "source_num_classes": int(source_classes),
        "trainable": config.trainable,
        "preprocessing": (source.preprocessing.to_dict()
                          if source.preprocessing else None),
    }
    # Host arrays: the jitted init places them (replicated) on the mesh.
    return jax.tree.map(np.asarray, variables), record


def _mismatch_summary(error: resnext_jax.weights.StateDictMismatchError) -> str:
    """The converter's listing in one line: counts, a few keys, its hint."""
    parts = []
    for kind, keys in (("missing", error.missing),
                       ("unexpected", error.unexpected),
                       ("wrong-shaped", list(error.mismatched))):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            parts.append(f"{len(keys)} {kind} tensor(s) ({shown})")
    hint = str(error).splitlines()[-1]
    if hint.startswith("  "):  # No hint: the last line is a listing.
        hint = ""
    return "; ".join(parts) + (f". {hint}" if hint else ".")
