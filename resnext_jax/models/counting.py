"""Parameter and multiply-add counts, with a per-stage table
(``resnext-summary``).

Multiply-adds (MACs) of convolutions and dense layers: what the paper and
torchvision publish as "FLOPs"/"GFLOPS". They come from the shapes each
layer sees in a shape-only trace: nothing is computed.

`analytic_params` and `analytic_macs` give the same two numbers in
closed form from the model's fields, without a trace, fast enough for
`match_width` to search over widths.

Command line: ``resnext-summary resnext50_32x4d``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnext_jax.models.blocks import (Bottleneck, bottleneck_width,
                                eca_kernel_size, make_divisible)
from resnext_jax.layers.conv import GroupedConv
from resnext_jax.models.registry import model_config
from resnext_jax.models.resnext import (DEEP_STEM_WIDTHS, STAGE_PLANES,
                                        STEM_FEATURES, ResNeXt)


def count_params(variables: Any) -> int:
    """Number of trainable parameters (the ``params`` collection).

    BatchNorm running statistics are buffers, not parameters, as in PyTorch.
    Accepts full variables or a bare params tree.
    """
    if isinstance(variables, dict) and "params" in variables:
        variables = variables["params"]
    return sum(math.prod(x.shape) for x in jax.tree.leaves(variables))


def _check_image_size(image_size: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(
            image_size, numbers.Integral) or image_size < 1:
        raise ValueError(
            f"image_size (={image_size!r}) must be a positive integer.")


@dataclasses.dataclass
class LayerCost:
    path: tuple[str, ...]
    kind: str
    output_shape: tuple[int, ...]
    macs: int


def _trace_layer_costs(model: ResNeXt, image_size: int,
                       batch_size: int = 1) -> tuple[list[LayerCost], Any]:
    """Shape-only trace that records the multiply-adds of every conv/dense."""
    _check_image_size(image_size)
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


def count_macs(model: ResNeXt, image_size: int = 224) -> int:
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


# ---------------------------------------------------------------------------
# Closed-form counts, and the width that matches a reference's complexity.

def _out_size(size: int, stride: int) -> int:
    # Every strided layer here (7x7 pad 3, 3x3 pad 1, 1x1 pad 0, the 3x3/2
    # max-pool pad 1, the ceil-mode 2x2 average pool) maps n to this.
    return (size - 1) // stride + 1


def _analytic_counts(model: ResNeXt, image_size: int) -> tuple[int, int]:
    """``(params, macs)`` of ``model`` from its fields, layer by layer as
    the model builds itself (see models.py and blocks.py); MACs follow
    `count_macs`'s convention (convolutions and the classifier only;
    BN, pooling and the gates are free). Block forms A, B and C have the
    same counts, as do ``avg_down`` and the dtypes."""
    if model.block_cls is not Bottleneck:
        # A custom block may compute anything; only a trace can count it.
        raise ValueError(
            f"closed-form counts know the stock Bottleneck, not block_cls="
            f"{model.block_cls!r}; use count_params and count_macs.")
    if model.features_only:
        raise ValueError("closed-form counts are of the whole classifier, "
                         "not a features_only backbone; use count_params "
                         "and count_macs.")
    params = macs = 0
    h = image_size
    # Stem; every BN has a scale and a bias.
    if model.stem == "imagenet":
        h = _out_size(h, 2)
        if model.stem_type:
            w0, w1 = DEEP_STEM_WIDTHS[model.stem_type]
            convs = ((3, w0), (w0, w1), (w1, STEM_FEATURES))
            params += 2 * w0 + 2 * w1
        else:
            convs = ()
            params += 49 * 3 * STEM_FEATURES
            macs += h * h * STEM_FEATURES * 49 * 3
        for cin, cout in convs:
            params += 9 * cin * cout
            macs += h * h * cout * 9 * cin
        h = _out_size(h, 2)  # max-pool
    else:
        params += 9 * 3 * STEM_FEATURES
        macs += h * h * STEM_FEATURES * 9 * 3
    params += 2 * STEM_FEATURES

    cin = STEM_FEATURES
    # The model's own strides: output_stride turns late strides into
    # dilation, which keeps the maps larger and costs no more per pixel.
    for i, (num_blocks, (stage_stride, _, _)) in enumerate(zip(
            model.stage_sizes, model.stage_plan())):
        planes = STAGE_PLANES[model.stem][i]
        width = (model.stage_widths[i] if model.stage_widths is not None else
                 bottleneck_width(planes, model.cardinality,
                                  model.base_width))
        group_in = width // model.cardinality
        out = planes * model.expansion
        for j in range(num_blocks):
            stride = stage_stride if j == 0 else 1
            ho = _out_size(h, stride)
            # conv1 (1x1), conv2 (grouped 3x3 with the stride), conv3 (1x1),
            # and bn1, bn2, bn3.
            params += (cin * width + 9 * width * group_in + width * out
                       + 4 * width + 2 * out)
            macs += (h * h * width * cin + ho * ho * width * 9 * group_in
                     + ho * ho * out * width)
            if stride != 1 or cin != out:  # projection shortcut + BN
                params += cin * out + 2 * out
                macs += ho * ho * out * cin
            if model.attn_layer == "se":  # two 1x1s with bias on 1x1 maps
                reduced = make_divisible(out / 16, 8)
                params += 2 * out * reduced + reduced + out
                macs += 2 * out * reduced
            elif model.attn_layer == "eca":  # one k-tap 1-D conv, no bias
                k = eca_kernel_size(out)
                params += k
                macs += out * k
            cin, h = out, ho
    if model.num_classes:
        params += cin * model.num_classes + model.num_classes
        macs += cin * model.num_classes
    return params, macs


def analytic_params(model: ResNeXt) -> int:
    """`count_params` of ``model``'s variables, in closed form."""
    return _analytic_counts(model, 1)[0]


def analytic_macs(model: ResNeXt, image_size: int = 224) -> int:
    """`count_macs` of ``model`` at ``image_size``, in closed form."""
    _check_image_size(image_size)
    return _analytic_counts(model, image_size)[1]


MATCH_BY = ("params", "macs")


def match_width(cardinality: int, like: str = "resnet50", by: str = "params",
                *, image_size: int | None = None) -> int:
    """The width ``d`` (``base_width``) that gives cardinality ``cardinality``
    the complexity of the registry model ``like``.

    The candidate is ``like`` with only ``cardinality`` and ``base_width``
    changed (same depth, stem, attention, classes, ...); ``by`` is "params"
    (trainable parameters) or "macs" (multiply-adds at ``image_size``,
    default the model's own: 224, or 32 for the CIFAR stem). Counts are in
    closed form, so the search takes about half a millisecond.

    Against ResNet-50 by parameters this is the paper's Table 2: C = 1, 2,
    4, 8, 32 give d = 64, 40, 24, 14, 4. By multiply-adds at 224 they give
    d = 64, 40, 24, 13, 4: against ResNet-50's 4.09 G, C = 8 costs 3.95 G
    with d = 13 and 4.27 G with d = 14 (the paper's 14 matches parameters,
    25.6M against 25.6M, not multiply-adds).

    Every ``d >= 1`` is a valid width: the 3x3 of a stage with ``n`` planes
    is ``floor(n * d / 64) * C`` wide (`bottleneck_width`), a positive multiple of ``C`` since ``n >= 64``.
    Complexity grows with ``d``, so the answer is one of the two widths that
    bracket the reference; on a tie the smaller width wins, the one that
    stays within the reference's budget.
    """
    if isinstance(cardinality, bool) or not isinstance(
            cardinality, numbers.Integral) or cardinality < 1:
        raise ValueError(
            f"cardinality (={cardinality!r}) must be a positive integer: "
            "the number of groups of the 3x3 convolution.")
    if not isinstance(like, str):
        raise ValueError(
            f"like (={like!r}) must be a model name (see list_models()).")
    config = model_config(like)  # unknown names: "Did you mean ..." error
    if by not in MATCH_BY:
        raise ValueError(
            f"by={by!r} is not a complexity measure; choose one of "
            f"{MATCH_BY} (trainable parameters or multiply-adds).")
    reference = ResNeXt(**config)
    if image_size is None:
        image_size = 32 if reference.stem == "cifar" else 224
    _check_image_size(image_size)
    index = MATCH_BY.index(by)

    def cost(d: int) -> int:
        # stage_widths would override base_width; no registry model sets it.
        model = reference.clone(cardinality=int(cardinality), base_width=d,
                                stage_widths=None)
        return _analytic_counts(model, image_size)[index]

    target = _analytic_counts(reference, image_size)[index]
    # Smallest d whose cost reaches the target: double, then bisect. Cost
    # grows at least linearly in d (the 1x1 convolutions), so this ends.
    lo, hi = 1, 1
    while cost(hi) < target:
        lo, hi = hi + 1, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [d for d in (hi - 1, hi) if d >= 1]  # smaller first
    return min(candidates, key=lambda d: abs(cost(d) - target))
