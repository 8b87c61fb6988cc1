"""The models as flax NNX modules.

::

    from flax import nnx
    from resnext_jax import nnx as rxnnx

    model = rxnnx.create_model("resnext50_32x4d", rngs=nnx.Rngs(0))
    model.train()              # BatchNorm on batch statistics, drop-path on
    logits = model(images)     # updates the BatchNorm statistics in place
    model.eval()               # running averages
    logits = model(images)

An `ResNeXt` here holds the linen `resnext_jax.ResNeXt`
through ``flax.nnx.bridge.ToNNX``: the same function and the same parameter
tree, so torchvision/timm weights and bundles load into it exactly
(`from_linen`, `to_linen_variables`). What the bridge alone
leaves to the user, passing ``mutable=["batch_stats"]`` in training (without
it the call fails with ``ModifyScopeVariableError``) and the ``train``
argument, follows ``model.train()`` / ``model.eval()`` here.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge
from flax.nnx.bridge import variables as bridge_variables

from resnext_jax import models

# Parameter shapes do not depend on the image size: initialize on a small
# image, which traces quickly.
_INIT_SIZE = 32


class ResNeXt(nnx.Module):
    """A linen `resnext_jax.ResNeXt` as an NNX module.

    Starts in eval mode (``use_running_average=True``), as NNX's own
    ``BatchNorm`` does; ``model.train()`` and ``model.eval()`` switch it.
    In training, the ``dropout`` stream of ``rngs`` feeds drop-path.
    """

    def __init__(self, model: models.ResNeXt, *, rngs: nnx.Rngs,
                 variables: Mapping[str, Any] | None = None):
        self.config = model
        self.module = bridge.ToNNX(model, rngs=rngs)
        bridge.lazy_init(self.module,
                         jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 3)))
        if variables is not None:
            load_linen_variables(self, variables)
        self.rngs = rngs
        self.use_running_average = True

    def __call__(self, images):
        if self.use_running_average:
            return self.module(images, train=False)
        return self.module(images, train=True, mutable=["batch_stats"],
                           rngs=self.rngs)


def create_model(name: str, *, rngs: nnx.Rngs, **overrides: Any) -> ResNeXt:
    """A registry model (`resnext_jax.create_model`) as NNX."""
    return ResNeXt(models.create_model(name, **overrides), rngs=rngs)


def from_linen(model: models.ResNeXt, variables: Mapping[str, Any], *,
               rngs: nnx.Rngs | None = None) -> ResNeXt:
    """An NNX module holding ``variables`` (``{"params", "batch_stats"}``
    of the linen ``model``, e.g. from `resnext_jax.load_pretrained`)."""
    return ResNeXt(model, rngs=rngs or nnx.Rngs(0), variables=variables)


def _bridge_attrs(model: ResNeXt) -> dict:
    return {k: v for k, v in vars(model.module).items()
            if not k.startswith(("to_nnx__", "_pytree__"))}


def to_linen_variables(model: ResNeXt) -> dict:
    """``{"params", "batch_stats"}`` for ``model.config.apply``: the same
    arrays, in linen's tree."""
    return bridge_variables.nnx_attrs_to_linen_vars(_bridge_attrs(model))


def load_linen_variables(model: ResNeXt,
                         variables: Mapping[str, Any]) -> None:
    """Replaces ``model``'s variables with linen ``variables`` of the same
    tree (a mismatch is a ``ValueError`` naming the first differing path)."""
    current = to_linen_variables(model)
    for collection in ("params", "batch_stats"):
        _check_same_tree(current.get(collection, {}),
                         variables.get(collection, {}), collection)
    for name, value in bridge_variables.linen_vars_to_nnx_attrs(
            {k: variables[k] for k in ("params", "batch_stats")
             if k in variables}).items():
        setattr(model.module, name, nnx.data(value))


def _check_same_tree(have, given, path: str) -> None:
    if isinstance(have, Mapping) != isinstance(given, Mapping):
        raise ValueError(f"variables[{path!r}] does not fit the model: "
                         "a leaf where a subtree was expected, or the "
                         "reverse.")
    if not isinstance(have, Mapping):
        if tuple(have.shape) != tuple(getattr(given, "shape", ())):
            raise ValueError(
                f"variables[{path!r}] has shape "
                f"{tuple(getattr(given, 'shape', ()))}; the model's is "
                f"{tuple(have.shape)}.")
        return
    if set(have) != set(given):
        raise ValueError(
            f"variables at {path!r} hold {sorted(given)}; the model has "
            f"{sorted(have)}.")
    for key in have:
        _check_same_tree(have[key], given[key], f"{path}/{key}")
