"""Serialized, jit-compiled inference with ``jax.export`` (StableHLO).

The exported function maps ``(weights, images)`` to logits, where ``images``
are normalized NHWC float32 of a fixed spatial size and a *symbolic* batch
dimension: one file serves any batch size. The weights are arguments rather
than constants folded into the program, so XLA compiles quickly and the file
stays loadable for the largest models.

Load and run the file with `resnext_jax.inference.serving`, which
needs numpy and jax only (it can be copied beside a server).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from resnext_jax.inference import serving
from resnext_jax._files import atomic_path
from resnext_jax.models.resnext import ResNeXt
from resnext_jax.inference.preprocessing import Preprocessing

# Platform names as jax.export spells them.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    """Validated, de-duplicated platform names, in the order given."""
    if isinstance(platforms, str):
        platforms = [p for p in platforms.split(",") if p]
    platforms = tuple(dict.fromkeys(p.strip().lower() for p in platforms))
    if not platforms:
        raise ValueError("platforms is empty; name at least one of "
                         f"{PLATFORMS}.")
    for platform in platforms:
        if platform not in PLATFORMS:
            hint = " (jax.export calls NVIDIA GPUs 'cuda')" if (
                platform == "gpu") else ""
            raise ValueError(
                f"platform {platform!r} cannot be exported for{hint}; choose "
                f"from {PLATFORMS}.")
    return platforms


def _inference_fn(model: ResNeXt, treedef):
    """``(flat weights, images) -> logits`` in eval mode.

    With ``conv_impl="auto"`` the traced program carries every platform's
    lowering and each target's is picked when it is lowered, so one trace
    serves all ``platforms``.
    """
    def apply(weights, images):
        variables = jax.tree.unflatten(treedef, weights)
        return model.apply(variables, images, train=False)
    return apply


def export_model(model: ResNeXt, variables: Mapping, *,
                 platforms: Sequence[str] = ("cpu",),
                 image_size: int = serving.CROP_SIZE):
    """Exports eval-mode inference; returns ``(Exported, flat_weights)``.

    Args:
      model: the `ResNeXt`.
      variables: its ``{"params": ..., "batch_stats": ...}``.
      platforms: targets, any of `PLATFORMS`; lowering for an
        accelerator does not need one present.
      image_size: height and width of the input images.
    """
    platforms = check_platforms(platforms)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(
            f"image_size (={image_size!r}) must be a positive integer.")
    variables = {k: variables[k] for k in ("params", "batch_stats")
                 if k in variables}
    weights, treedef = jax.tree.flatten(variables)
    weights = [np.asarray(w) for w in weights]
    batch, = jax_export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3),
                                  jnp.float32)
    weight_specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]
    fn = jax.jit(_inference_fn(model, treedef))
    exported = jax_export.export(fn, platforms=platforms)(weight_specs,
                                                          images)
    return exported, weights


def _model_config(model: ResNeXt) -> dict:
    config = {}
    for field in dataclasses.fields(model):
        if field.name in ("parent", "name"):
            continue
        value = getattr(model, field.name)
        if isinstance(value, (tuple, list)):
            value = list(value)
        elif not isinstance(value, (int, float, str, bool, type(None))):
            value = str(getattr(value, "__name__", value))
        config[field.name] = value
    return config


def save_exported(path: str | os.PathLike, model: ResNeXt,
                  variables: Mapping, *, platforms: Sequence[str] = ("cpu",),
                  image_size: int | None = None,
                  preprocessing: Preprocessing | None = None,
                  class_names: Sequence[str] | None = None) -> dict:
    """Exports the model and writes it to ``path``; returns the metadata.

    ``path`` is new or an earlier export, replaced whole by one rename;
    anything else there is refused (`check_output`).

    Read it back with ``resnext_jax.inference.serving.load(path)``. The input is
    ``image_size`` square (default: the preprocessing's crop, else 224).
    ``preprocessing`` (default: ImageNet's, at that size) and
    ``class_names`` are recorded for the server; they do not change the
    exported function.
    """
    check_output(path)
    if preprocessing is None:
        preprocessing = Preprocessing.imagenet(image_size or serving.CROP_SIZE)
    elif image_size is not None and image_size != preprocessing.crop_size:
        preprocessing = preprocessing.with_crop_size(image_size)
    image_size = preprocessing.crop_size
    exported, weights = export_model(model, variables, platforms=platforms,
                                     image_size=image_size)
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} entries but the model has "
            f"num_classes={model.num_classes}.")
    meta = dict(
        format=serving.FORMAT, platforms=list(exported.platforms),
        image_size=image_size, resize_size=preprocessing.resize_size,
        num_classes=model.num_classes, mean=list(preprocessing.mean),
        std=list(preprocessing.std),
        preprocessing=preprocessing.to_dict(), num_weights=len(weights),
        class_names=list(class_names or []), jax_version=jax.__version__,
        model=_model_config(model))
    arrays = {f"w{i:05d}": w for i, w in enumerate(weights)}
    arrays["exported"] = np.frombuffer(bytes(exported.serialize()), np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"),
                                   np.uint8)
    # np.savez appends .npz to names without it; write through a handle so
    # the file gets exactly the name asked for.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return meta


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by `save_exported` (reads
    only its metadata)."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        return meta.get("format") == serving.FORMAT
    except Exception:  # pylint: disable=broad-except
        return False  # Not an .npz, no meta, torn: not ours to replace.


def check_output(path: str | os.PathLike) -> None:
    """Refuses an output path that is a directory, or an existing file that
    is not an export: only an earlier export is replaced."""
    if os.path.isdir(path):
        raise ValueError(f"output {os.fspath(path)!r} is a directory; name "
                         "a file, e.g. model.rxexport.")
    if os.path.exists(path) and not is_export(path):
        raise FileExistsError(
            f"output {os.fspath(path)!r} exists and is not a resnext_jax "
            "export; refusing to overwrite it. Name another file, or delete "
            "it first.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output {os.fspath(path)!r}: the directory "
                                f"{parent!r} does not exist.")
