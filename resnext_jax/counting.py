"""Parameter and FLOP counts, with a per-stage table (CLI: ``summary``).

FLOPs are counted as multiply-adds of convolutions and dense layers (the
convention of the paper and of torchvision's published "GFLOPS"), from the
shapes seen by each layer in a shape-only trace: nothing is computed.

Command line: ``python -m resnext_jax.summary resnext50_32x4d``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnext_jax.conv import GroupedConv
from resnext_jax.models import ResNeXt


def count_params(variables: Any) -> int:
    """Number of trainable parameters (the ``params`` collection).

    BatchNorm running statistics are buffers, not parameters, as in PyTorch.
    Accepts full variables or a bare params tree.
    """
    if isinstance(variables, dict) and "params" in variables:
        variables = variables["params"]
    return sum(math.prod(x.shape) for x in jax.tree.leaves(variables))


@dataclasses.dataclass
class LayerCost:
    path: tuple[str, ...]
    kind: str
    output_shape: tuple[int, ...]
    macs: int


def _trace_layer_costs(model: ResNeXt, image_size: int,
                       batch_size: int = 1) -> tuple[list[LayerCost], Any]:
    """Shape-only trace that records the multiply-adds of every conv/dense."""
    if isinstance(image_size, bool) or not isinstance(
            image_size, numbers.Integral) or image_size < 1:
        raise ValueError(
            f"image_size (={image_size!r}) must be a positive integer.")
    costs: list[LayerCost] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__":
            return out
        if isinstance(module, (nn.Conv, GroupedConv)):
            x = args[0]
            taps = math.prod(module.kernel_size)  # 2-D, or ECA's 1-D
            groups = getattr(module, "feature_group_count", 1)
            cin = x.shape[-1] // groups
            macs = math.prod(out.shape) * taps * cin
            costs.append(LayerCost(module.path, "conv", tuple(out.shape), macs))
        elif isinstance(module, nn.Dense):
            x = args[0]
            macs = math.prod(out.shape) * x.shape[-1]
            costs.append(LayerCost(module.path, "dense", tuple(out.shape),
                                   macs))
        return out

    images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3),
                                  jnp.float32)
    with nn.intercept_methods(interceptor):
        variables = jax.eval_shape(
            lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
            images)
    return costs, variables


def count_flops(model: ResNeXt, image_size: int = 224) -> int:
    """Multiply-adds for one image of ``image_size`` x ``image_size``."""
    costs, _ = _trace_layer_costs(model, image_size)
    return sum(c.macs for c in costs)


def _stage_of(top_level_name: str) -> str:
    if top_level_name.startswith("layer"):
        return top_level_name.split("_")[0]
    if top_level_name == "fc":
        return "head"
    return "stem"


def summarize(model: ResNeXt, image_size: int = 224) -> list[dict]:
    """One row per stage (stem, layer1.., head): output shape, params, MACs."""
    costs, variables = _trace_layer_costs(model, image_size)
    rows: dict[str, dict] = {}
    for name, subtree in variables["params"].items():
        row = rows.setdefault(_stage_of(name), dict(params=0, macs=0,
                                                    output_shape=None))
        row["params"] += count_params(subtree)
    for cost in costs:
        row = rows.setdefault(_stage_of(cost.path[0]), dict(
            params=0, macs=0, output_shape=None))
        row["macs"] += cost.macs
        if "downsample" not in cost.path and "se" not in cost.path:
            # The last conv of the main path gives the stage's output shape
            # (the shortcut's and the attention's convs do not).
            row["output_shape"] = cost.output_shape[1:]
    if model.stem == "imagenet" and rows["stem"]["output_shape"]:
        # The stem ends with a 3x3/2 max-pool (padding 1) after its conv.
        h, w, c = rows["stem"]["output_shape"]
        rows["stem"]["output_shape"] = ((h - 1) // 2 + 1, (w - 1) // 2 + 1, c)
    order = ["stem"] + [f"layer{i + 1}" for i in range(len(model.stage_sizes))]
    order += ["head"] if "head" in rows else []
    return [dict(stage=name, **rows[name]) for name in order if name in rows]


def format_summary(name: str, model: ResNeXt, image_size: int) -> str:
    rows = summarize(model, image_size)
    total_params = sum(r["params"] for r in rows)
    total_macs = sum(r["macs"] for r in rows)
    lines = [f"{name}  (input {image_size}x{image_size}x3, "
             f"{model.num_classes} classes)",
             f"{'stage':<8}{'output (HWC)':>18}{'params':>16}{'GMACs':>10}"]
    for r in rows:
        shape = "x".join(map(str, r["output_shape"] or ()))
        lines.append(f"{r['stage']:<8}{shape:>18}{r['params']:>16,}"
                     f"{r['macs'] / 1e9:>10.3f}")
    lines.append(f"{'total':<8}{'':>18}{total_params:>16,}"
                 f"{total_macs / 1e9:>10.3f}")
    return "\n".join(lines)
