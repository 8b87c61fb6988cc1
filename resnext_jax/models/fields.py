"""What a model's fields may hold: the allowed values, and the checks that
refuse anything else with a message naming the value and the rule. A model
checks its fields once, when it is made."""

from __future__ import annotations

import numbers

import flax.linen as nn

BLOCK_FORMS = ("A", "B", "C")
# Channel attention after the block's last BN (timm's ``attn_layer``).
ATTN_LAYERS = (None, "se", "eca")
STEMS = ("imagenet", "cifar")
# The ImageNet stem's first layers (timm's ``stem_type``): "" is the 7x7 conv;
# the deep stems are three 3x3 convs (ResNet-C, He et al. 2019, "Bag of
# Tricks", https://arxiv.org/abs/1812.01187), with the widths of timm's
# ``stem_width=32``, as in all of timm's deep-stem ResNeXts.
STEM_TYPES = ("", "deep", "deep_tiered")
# Input pixels per pixel of the last map: 32, or 16 and 8 by dilating the
# last stages instead of striding them (timm's and torchvision's rule).
OUTPUT_STRIDES = (8, 16, 32)
# Gradient checkpointing: "block" recomputes each block in the backward pass.
REMAT_POLICIES = ("none", "block")


def check_block_form(form: str) -> str:
    if form not in BLOCK_FORMS:
        raise ValueError(
            f"block_form={form!r} is not a ResNeXt block form; choose one of "
            f"{BLOCK_FORMS} (A: summed branches, B: concatenated branches, "
            "C: grouped convolution).")
    return form


def check_attn_layer(attn_layer: str | None) -> str | None:
    if attn_layer not in ATTN_LAYERS:
        raise ValueError(
            f"attn_layer={attn_layer!r} is not a channel attention; choose one "
            f"of {ATTN_LAYERS} (se: squeeze-and-excitation, eca: efficient "
            "channel attention).")
    return attn_layer


def check_drop_path_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (
            0 <= rate < 1):
        raise ValueError(f"drop_path_rate (={rate!r}) must be a number in "
                         "[0, 1): the probability of dropping a residual "
                         "branch.")


def integers_as_python_ints(model) -> dict:
    """The integer fields holding numpy integers (``np.int64(10)``, a
    config's value), as Python ints, so the fields serialize to JSON."""
    changed = {}
    for field in ("cardinality", "base_width", "num_classes", "expansion"):
        value = getattr(model, field)
        if isinstance(value, numbers.Integral) and not isinstance(
                value, bool) and type(value) is not int:
            changed[field] = int(value)
    for field in ("stage_sizes", "stage_widths", "out_indices"):
        value = getattr(model, field)
        if isinstance(value, (list, tuple)) and any(
                type(v) is not int for v in value) and all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool)
                for v in value):
            changed[field] = tuple(int(v) for v in value)
    return changed


def check_model_fields(model, stage_planes: dict) -> None:
    """Every field of a ``ResNeXt`` against its rule, with a one-line
    error naming the value (``stage_planes``: the stages of each stem)."""
    check_drop_path_rate(model.drop_path_rate)
    if not isinstance(model.features_only, bool):
        raise ValueError(f"features_only (={model.features_only!r}) must "
                         "be True or False.")
    num_maps = len(stage_planes.get(model.stem, ())) + 1
    indices = model.out_indices
    if indices is not None and not (
            isinstance(indices, (tuple, list)) and indices and all(
            isinstance(i, int) and 0 <= i < num_maps for i in indices)
            and list(indices) == sorted(set(indices))):
        raise ValueError(
            f"out_indices (={indices!r}) must list increasing map "
            f"indices from 0 (the stem) to {num_maps - 1} (the last "
            "stage), e.g. (1, 2, 3, 4).")
    if model.output_stride not in OUTPUT_STRIDES or (
            model.output_stride != 32 and model.stem != "imagenet"):
        raise ValueError(
            f"output_stride (={model.output_stride!r}) must be one of "
            f"{OUTPUT_STRIDES} (the ImageNet stem; CIFAR models keep "
            "their strides).")
    if model.remat not in REMAT_POLICIES:
        raise ValueError(f"remat (={model.remat!r}) must be one of "
                         f"{REMAT_POLICIES}.")
    if not (isinstance(model.block_cls, type)
            and issubclass(model.block_cls, nn.Module)):
        raise ValueError(f"block_cls (={model.block_cls!r}) must be a "
                         "flax module class, e.g. a Bottleneck subclass.")
    if model.stem not in STEMS:
        raise ValueError(
            f"stem={model.stem!r} is not a known stem; choose one of "
            f"{STEMS}.")
    num_stages = len(stage_planes[model.stem])
    sizes = tuple(model.stage_sizes)
    if len(sizes) != num_stages:
        raise ValueError(
            f"stage_sizes={sizes} has {len(sizes)} entries, but the "
            f"{model.stem!r} stem has {num_stages} stages: give one block "
            f"count per stage.")
    for size in sizes:
        if not isinstance(size, int) or size < 1:
            raise ValueError(
                f"stage_sizes={sizes}: every entry must be a positive "
                f"integer, got {size!r}.")
    for field in ("cardinality", "base_width", "expansion"):
        value = getattr(model, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{field} (={value!r}) must be a positive integer.")
    if not isinstance(model.num_classes, int) or model.num_classes < 0:
        raise ValueError(
            f"num_classes (={model.num_classes!r}) must be a non-negative "
            "integer (0 drops the classifier head).")
    check_block_form(model.block_form)
    check_attn_layer(model.attn_layer)
    if model.stem_type not in STEM_TYPES:
        raise ValueError(
            f"stem_type={model.stem_type!r} is not a known stem type; "
            f"choose one of {STEM_TYPES} ('' is the 7x7 conv).")
    if model.stem_type and model.stem != "imagenet":
        raise ValueError(
            f"stem_type={model.stem_type!r} replaces the 'imagenet' stem's "
            f"7x7 conv, but stem={model.stem!r}; use stem_type='' with "
            f"the {model.stem!r} stem.")
    if not isinstance(model.avg_down, bool):
        raise ValueError(
            f"avg_down (={model.avg_down!r}) must be True or False.")
    if model.stage_widths is not None:
        widths = tuple(model.stage_widths)
        if len(widths) != num_stages:
            raise ValueError(
                f"stage_widths={widths} has {len(widths)} entries; the "
                f"{model.stem!r} stem has {num_stages} stages.")
        for width in widths:
            if (not isinstance(width, int) or width < 1
                    or width % model.cardinality):
                raise ValueError(
                    f"stage width {width!r} in stage_widths={widths} must "
                    f"be a positive multiple of cardinality "
                    f"(={model.cardinality}).")
