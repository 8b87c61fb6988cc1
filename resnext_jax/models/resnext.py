"""ResNeXt with the ImageNet stem (ResNeXt-50/101/152, ResNet as C=1) and the
CIFAR stem (ResNeXt-29), plus the registry of named variants.

Layer names map one-to-one to torchvision's ``ResNet``: ``conv1``, ``bn1``,
``layer{i}_{j}`` (torchvision ``layer{i}.{j}``), ``fc``. timm's ResNeXt
variants (deep and tiered stems, average-pool shortcuts, SE and ECA attention)
are fields of the same model, named as in timm.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnext_jax.layers.conv import max_pool
from resnext_jax.layers.factory import LayerFactory
from resnext_jax.models.blocks import EXPANSION, Bottleneck
from resnext_jax.models.fields import (check_model_fields,
                                       integers_as_python_ints)

DEEP_STEM_WIDTHS = {"deep": (32, 32), "deep_tiered": (24, 32)}
# Paper Table 1 (ImageNet) and Sec. 5.3 / official code (CIFAR).
STAGE_PLANES = {"imagenet": (64, 128, 256, 512), "cifar": (64, 128, 256)}
STAGE_STRIDES = {"imagenet": (1, 2, 2, 2), "cifar": (1, 2, 2)}
STEM_FEATURES = 64


class DeepStem(nn.Module):
    """timm's deep stem before ``bn1``: 3x3/2 conv, BN, ReLU, 3x3 conv, BN,
    ReLU, 3x3 conv to ``features``. Names carry the index of the layer in
    timm's ``conv1`` ``nn.Sequential`` (``conv_0`` is ``conv1.0``, ``bn_1``
    is ``conv1.1``, ...; 2 and 5 are its ReLUs)."""

    widths: Sequence[int] = (32, 32)
    features: int = STEM_FEATURES
    layers: LayerFactory = LayerFactory()

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = self.layers.conv, self.layers.norm
        x = conv(self.widths[0], 3, 2, name="conv_0")(x)
        x = norm(train, "bn_1", activation="relu")(x)
        x = conv(self.widths[1], 3, name="conv_3")(x)
        x = norm(train, "bn_4", activation="relu")(x)
        return conv(self.features, 3, name="conv_6")(x)


class ResNeXt(nn.Module):
    """ResNeXt image classifier on NHWC float images.

    Call as ``model.apply(variables, images, train=False)``; in training pass
    ``train=True, mutable=["batch_stats"]``.

    Attributes:
      stage_sizes: blocks per stage: 4 entries for the ImageNet stem
        (ResNeXt-50: (3, 4, 6, 3)), 3 for the CIFAR stem ((3, 3, 3)).
      cardinality: ``C``, groups of the 3x3 (1 gives ResNet).
      base_width: ``d``, channels per group in the first stage.
      stage_widths: explicit widths of the grouped 3x3 per stage, overriding
        ``base_width``; each must be divisible by ``cardinality``.
      num_classes: classifier outputs; 0 drops the head and returns the
        pooled features.
      stem: "imagenet" (7x7/2 conv, 3x3/2 max-pool) or "cifar" (3x3 conv).
      stem_type: timm's variants of the ImageNet stem's convolution: "" (one
        7x7/2 conv), "deep" (3x3 convs 32, 32, 64 wide, the first with stride
        2) or "deep_tiered" (24, 32, 64).
      avg_down: projection shortcuts that average-pool 2x2 before a stride-1
        1x1 conv (ResNet-D) instead of striding the 1x1 conv.
      attn_layer: channel attention at the end of every block's residual
        branch: None, "se" (squeeze-and-excitation) or "eca" (efficient
        channel attention).
      block_form: "A", "B" or "C" (see `resnext_jax.models.blocks`).
      zero_init_residual: start each block's last BN scale at zero.
      conv_impl: grouped-convolution lowering (see `resnext_jax.layers.conv`).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); BN statistics are
        reduced in float32 and the classifier runs in float32.
      param_dtype: parameter dtype.
      axis_name: mapped axis over which BatchNorm averages its batch
        statistics (cross-replica BN in a data-parallel step).
      block_cls: the residual block (a class, or ``"module:ClassName"``),
        built once per block with the fields
        of `Bottleneck` (``planes``, ``strides``,
        ``cardinality``, ...); subclass it to change what a block computes
        (see the docs' no-shortcut ablation).
      expansion: block output channels per ``planes`` (4: 256 out of 64).
      drop_path_rate: stochastic depth of the last block, decayed linearly
        from 0 at the first (timm's rule); training mode only, with the
        ``"dropout"`` key of ``apply``.
      remat: "none", or "block" to recompute each block's activations in
        the backward pass (``nn.remat``): less memory, the same gradients.
      features_only: return the list of feature maps ``out_indices`` asks
        for instead of logits, and build nothing after the last (timm's
        ``features_only``); `feature_info` describes them.
      out_indices: the maps: 0 the stem (before the max-pool), 1-4 (1-3
        for CIFAR) the stages; None: all of them.
      output_stride: 32, or 16 or 8: the last stage (two last stages) dilate
        their 3x3s instead of striding, for dense prediction.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    cardinality: int = 32
    base_width: int = 4
    stage_widths: Sequence[int] | None = None
    num_classes: int = 1000
    stem: str = "imagenet"
    stem_type: str = ""
    avg_down: bool = False
    attn_layer: str | None = None
    block_form: str = "C"
    zero_init_residual: bool = True
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    axis_name: str | None = None
    block_cls: Any = Bottleneck
    expansion: int = EXPANSION
    drop_path_rate: float = 0.0
    remat: str = "none"
    features_only: bool = False
    out_indices: Sequence[int] | None = None
    output_stride: int = 32

    def __post_init__(self):
        if isinstance(self.block_cls, str):  # From a config or model.json.
            object.__setattr__(self, "block_cls",
                               import_block_cls(self.block_cls))
        for field, value in integers_as_python_ints(self).items():
            object.__setattr__(self, field, value)
        self.layers  # pylint: disable=pointless-statement  # Checks them.
        check_model_fields(self, STAGE_PLANES)
        super().__post_init__()

    @property
    def layers(self) -> LayerFactory:
        """How every convolution and BatchNorm is built: the precision,
        lowering and BN fields, checked when it is made."""
        return LayerFactory(self.conv_impl, self.dtype, self.param_dtype,
                            self.bn_momentum, self.bn_epsilon, self.axis_name)

    def _check_input(self, x):
        if not hasattr(x, "ndim") or x.ndim != 4:
            shape = getattr(x, "shape", None)
            raise ValueError(
                f"images must be a 4-D NHWC array (batch, height, width, 3); "
                f"got shape {shape}.")
        if x.shape[-1] != 3:
            hint = (" It looks like NCHW: transpose with "
                    "x.transpose(0, 2, 3, 1)." if x.shape[1] == 3 else "")
            raise ValueError(
                f"images must be NHWC with 3 channels last; got shape "
                f"{tuple(x.shape)} with {x.shape[-1]} channels.{hint}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"images must be floating point (normalized), got dtype "
                f"{x.dtype}; convert with x.astype(jnp.float32) and "
                "normalize first.")

    def feature_info(self) -> list[dict]:
        """timm's ``feature_info`` of the maps ``features_only`` returns:
        each one's ``index``, channels (``num_chs``), ``reduction`` (input
        pixels per map pixel) and ``module`` (timm's name), in order."""
        info = [{"index": 0, "num_chs": STEM_FEATURES,
                 "reduction": 2 if self.stem == "imagenet" else 1,
                 "module": "act1"}]
        for i, (planes, (_, _, reduction)) in enumerate(zip(
                STAGE_PLANES[self.stem], self.stage_plan())):
            info.append({"index": i + 1, "num_chs": planes * self.expansion,
                         "reduction": reduction, "module": f"layer{i + 1}"})
        return [info[i] for i in self._map_indices()]

    def _map_indices(self) -> tuple[int, ...]:
        """``out_indices``, or every map: the stem's and each stage's."""
        if self.out_indices is not None:
            return tuple(self.out_indices)
        return tuple(range(len(self.stage_sizes) + 1))

    def stage_plan(self) -> list[tuple[int, int, int]]:
        """``(stride, dilation, reduction)`` of each stage: past
        ``output_stride``, a stage's stride becomes dilation (timm's
        ``make_blocks``)."""
        reduction = 4 if self.stem == "imagenet" else 1
        dilation, plan = 1, []
        for stride in STAGE_STRIDES[self.stem]:
            if reduction * stride > self.output_stride:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            plan.append((stride, dilation, reduction))
        return plan

    def _stem(self, x, train):
        """``conv1`` (the 7x7/2, timm's deep stems, or CIFAR's 3x3) and
        ``bn1`` with its ReLU: timm's ``act1`` map, before the max-pool."""
        if self.stem_type:
            x = DeepStem(widths=DEEP_STEM_WIDTHS[self.stem_type],
                         layers=self.layers, name="conv1")(x, train)
        else:
            size, stride = (7, 2) if self.stem == "imagenet" else (3, 1)
            x = self.layers.conv(STEM_FEATURES, size, stride, name="conv1")(x)
        return self.layers.norm(train, "bn1", activation="relu")(x)

    def _blocks(self):
        """``(stage, name, is_last_of_stage, block)`` of every block, in
        order; ``block`` holds the stage's strides and widths and the
        block's drop-path rate."""
        block_cls = (nn.remat(self.block_cls, static_argnums=(2,))
                     if self.remat == "block" else self.block_cls)
        total, index, previous_dilation = sum(self.stage_sizes), 0, 1
        for i, (num_blocks, (stride, dilation, _)) in enumerate(zip(
                self.stage_sizes, self.stage_plan())):
            for j in range(num_blocks):
                yield i + 1, f"layer{i + 1}_{j}", j == num_blocks - 1, (
                    functools.partial(
                    block_cls, planes=STAGE_PLANES[self.stem][i],
                    expansion=self.expansion,
                    # timm's linear decay: 0 at the first block, the full
                    # rate at the last.
                    drop_path_rate=self.drop_path_rate * index / max(
                        total - 1, 1),
                    cardinality=self.cardinality, base_width=self.base_width,
                    width=(None if self.stage_widths is None
                           else self.stage_widths[i]),
                    strides=stride if j == 0 else 1,
                    # A dilated stage's first 3x3 keeps the dilation of the
                    # stage before (timm's first_dilation).
                    dilation=dilation, first_dilation=previous_dilation,
                    form=self.block_form,
                    zero_init_residual=self.zero_init_residual,
                    attn_layer=self.attn_layer, avg_down=self.avg_down,
                    layers=self.layers))
                index, previous_dilation = index + 1, dilation

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """Logits ``(N, num_classes)``. With ``features_only``, the list of
        maps ``out_indices`` asks for (0: the stem, 1-4: the stages),
        computing nothing after the last. With ``return_features``, a dict
        of the stem (after the max-pool) and per-stage maps, the pooled
        features and the logits."""
        self._check_input(x)
        wanted = set(self._map_indices()) if self.features_only else set()
        maps, features = [], {}
        x = self._stem(x.astype(self.dtype), train)
        if 0 in wanted:
            maps.append(x)
        if self.stem == "imagenet":
            x = max_pool(x, 3, 2, 1, impl=self.conv_impl)
        features["stem"] = x
        last_stage = max(wanted) if self.features_only else len(
            self.stage_sizes)
        for stage, name, last_of_stage, block in self._blocks():
            if stage > last_stage:
                break
            x = block(name=name)(x, train)
            features[f"layer{stage}"] = x
            if last_of_stage and stage in wanted:
                maps.append(x)
        if self.features_only:
            return maps
        # Pool and classify in float32: cheap, and keeps logits precise.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        features["pooled"] = x
        if self.num_classes:
            x = nn.Dense(self.num_classes, dtype=jnp.float32,
                         param_dtype=self.param_dtype, name="fc")(x)
            features["logits"] = x
        return features if return_features else x


def import_block_cls(spec: str) -> type:
    """The block class named ``"module:QualifiedName"`` (how bundles and
    configs name a custom ``block_cls``); the module must be importable."""
    module_name, _, qualname = spec.partition(":")
    try:
        if not (module_name and qualname):
            raise ImportError("expected 'module:QualifiedName'")
        value = importlib.import_module(module_name)
        for part in qualname.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"block_cls (={spec!r}) cannot be imported ({e}); name it as "
            "'module:ClassName' with the module on the Python path.") from None
    return value

