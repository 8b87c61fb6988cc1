"""Builds the ResNeXt a config describes."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

import resnext_jax

from train.mesh import AXIS

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_overrides(config: ml_collections.ConfigDict) -> dict:
    """The ``model_kwargs`` a config sets: fields left unset (None, see
    configs/base.py) keep the registry model's value."""
    kwargs = dict(config.model_kwargs.to_dict()) if hasattr(
        config.model_kwargs, "to_dict") else dict(config.model_kwargs)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for key in ("stage_sizes", "stage_widths"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return kwargs


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                axis_name: str | None = AXIS) -> resnext_jax.ResNeXt:
    """``config.model`` (a registry name or "custom") with
    ``config.model_kwargs``, ``num_classes`` classes, ``compute_dtype``
    computation and float32 parameters; BatchNorm reduces over
    ``axis_name`` (the data-parallel axis; None for inference).
    """
    kwargs = model_overrides(config)
    kwargs.update(num_classes=num_classes, axis_name=axis_name,
                  dtype=_DTYPES[config.compute_dtype],
                  param_dtype=jnp.float32)
    try:
        if config.model == "custom":
            return resnext_jax.ResNeXt(**kwargs)
        return resnext_jax.create_model(config.model, **kwargs)
    except TypeError as error:  # Unknown keyword to the dataclass.
        raise ValueError(f"config.model_kwargs: {error}") from error
