"""The named variants: torchvision's and timm's ResNeXt family, ResNet as
cardinality 1, the paper's Table 2 ResNeXt-50s and CIFAR ResNeXt-29s.

A name is a dict of `ResNeXt` fields;
`create_model` builds it, with any field overridden.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any

import jax
import jax.numpy as jnp

from resnext_jax._compile import compile_run_once
from resnext_jax.models.resnext import ResNeXt

_IMAGENET_DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                    152: (3, 8, 36, 3)}


def _imagenet(depth, cardinality, base_width, **options):
    return dict(stage_sizes=_IMAGENET_DEPTHS[depth], cardinality=cardinality,
                base_width=base_width, stem="imagenet", num_classes=1000,
                **options)


# timm's suffixes: "d" deep stem + average-pool shortcut (ResNet-D), "t" the
# same with the tiered stem; prefixes "se"/"eca" add channel attention.
_D = dict(stem_type="deep", avg_down=True)
_T = dict(stem_type="deep_tiered", avg_down=True)
_SE = dict(attn_layer="se")
_ECA = dict(attn_layer="eca")


def _cifar(cardinality, base_width):
    return dict(stage_sizes=(3, 3, 3), cardinality=cardinality,
                base_width=base_width, stem="cifar", num_classes=10)


_MODELS: dict[str, dict] = {
    "resnet50": _imagenet(50, 1, 64),
    "resnet101": _imagenet(101, 1, 64),
    "resnet152": _imagenet(152, 1, 64),
    "resnext50_32x4d": _imagenet(50, 32, 4),
    "resnext50_32x8d": _imagenet(50, 32, 8),
    "resnext101_32x4d": _imagenet(101, 32, 4),
    "resnext101_32x8d": _imagenet(101, 32, 8),
    "resnext101_32x16d": _imagenet(101, 32, 16),
    "resnext101_32x32d": _imagenet(101, 32, 32),
    "resnext101_64x4d": _imagenet(101, 64, 4),
    "resnext152_32x4d": _imagenet(152, 32, 4),
    # Paper Table 2: ResNeXt-50 settings of equal complexity (C x d).
    "resnext50_1x64d": _imagenet(50, 1, 64),
    "resnext50_2x40d": _imagenet(50, 2, 40),
    "resnext50_4x24d": _imagenet(50, 4, 24),
    "resnext50_8x14d": _imagenet(50, 8, 14),
    # timm's ResNeXt family, under timm's names and architectures.
    "resnext50d_32x4d": _imagenet(50, 32, 4, **_D),
    "seresnext26d_32x4d": _imagenet(26, 32, 4, **_D, **_SE),
    "seresnext26t_32x4d": _imagenet(26, 32, 4, **_T, **_SE),
    "seresnext50_32x4d": _imagenet(50, 32, 4, **_SE),
    "seresnext101_32x4d": _imagenet(101, 32, 4, **_SE),
    "seresnext101_32x8d": _imagenet(101, 32, 8, **_SE),
    "seresnext101_64x4d": _imagenet(101, 64, 4, **_SE),
    "seresnext101d_32x8d": _imagenet(101, 32, 8, **_D, **_SE),
    "ecaresnext26t_32x4d": _imagenet(26, 32, 4, **_T, **_ECA),
    "ecaresnext50t_32x4d": _imagenet(50, 32, 4, **_T, **_ECA),
    # Paper Sec. 5.3 / Table 7: CIFAR ResNeXt-29.
    "resnext29_8x64d": _cifar(8, 64),
    "resnext29_16x64d": _cifar(16, 64),
    "resnext29_32x4d": _cifar(32, 4),
}

_FIELDS = tuple(f.name for f in dataclasses.fields(ResNeXt)
                if f.name not in ("parent", "name"))


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def model_config(name: str) -> dict:
    """The field values that define the named variant."""
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), _MODELS, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model name {name!r}.{hint} Known models: "
            f"{', '.join(list_models())}.")
    return dict(_MODELS[name])


def create_model(name: str, pretrained: bool | str = False,
                 **overrides: Any):
    """Builds a named ResNeXt, e.g. ``create_model("resnext50_32x4d",
    num_classes=10, dtype=jnp.bfloat16, block_form="A")``.

    Any `ResNeXt` field can be overridden. With ``pretrained``
    (``True`` for the model's default weights, or a tag such as
    ``"IMAGENET1K_V2"`` or ``"a1h_in1k"``: see ``rx.list_pretrained(name)``)
    it returns ``Pretrained(model, variables, preprocessing, class_names)``
    instead, the weights downloaded once (a Flax module holds no weights).
    """
    if pretrained:
        # Imported here: the weights package builds on this module.
        from resnext_jax.weights import bundle, pretrained as published  # pylint: disable=import-outside-toplevel
        model_config(name)  # An unknown name fails as without pretrained.
        tag = published.check_tag(name, pretrained)
        return bundle.load_published(name, tag, **overrides)
    config = model_config(name)
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"create_model({name!r}) got unknown override(s) {unknown}; "
            f"valid fields are {', '.join(_FIELDS)}.")
    config.update(overrides)
    return ResNeXt(**config)


def init_variables(model: ResNeXt, rng: jax.Array | int = 0,
                   image_size: int | None = None, batch_size: int = 1):
    """Initializes variables with a dummy batch of the model's input size."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    if image_size is None:
        image_size = 32 if model.stem == "cifar" else 224
    dummy = jnp.zeros((batch_size, image_size, image_size, 3), jnp.float32)
    init = jax.jit(lambda r, x: model.init(r, x, train=False))
    if isinstance(rng, jax.core.Tracer):  # Inside eval_shape, jit, ...
        return init(rng, dummy)
    return compile_run_once(init, rng, dummy)(rng, dummy)


def parse_model_kwargs(text: str) -> dict:
    """ResNeXt field overrides from a command line's JSON object."""
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"model kwargs {text!r} are not JSON: {e}") from e
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"model kwargs {text!r} must be a JSON object of ResNeXt field "
            "overrides.")
    for field in ("dtype", "param_dtype"):
        if field in kwargs:  # JSON has names ("bfloat16"), flax wants dtypes
            try:
                kwargs[field] = jnp.dtype(kwargs[field])
            except TypeError:
                raise ValueError(f"{field} (={kwargs[field]!r}) is not a "
                                 "dtype; use a floating type, e.g. 'float32' "
                                 "or 'bfloat16'.") from None
    return kwargs
