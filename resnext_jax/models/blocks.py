"""The ResNeXt bottleneck in the paper's three equivalent forms (Fig. 3).

* Form A: ``C`` branches 1x1 -> 3x3 -> 1x1, outputs summed.
* Form B: ``C`` branches 1x1 -> 3x3, outputs concatenated, one shared 1x1.
* Form C: 1x1 -> grouped 3x3 (``C`` groups) -> 1x1. The fast form.

BatchNorm acts per channel, so a BN over the concatenation of the branches
equals one BN per branch over its own channels: forms A, B and C compute the
same function when their weights are sliced from one another (see
`resnext_jax.weights.block_forms`). The third BN acts on the aggregated sum, as
in the paper's implementation ("BN right after the convolutions", Sec. 4).

Layer names follow torchvision's ``Bottleneck`` (``conv1``, ``bn1``, ...,
``downsample``); branches of forms A and B are ``branch_0`` ... ``branch_{C-1}``.
timm's options are fields: channel attention after ``bn3`` (``se``: squeeze-
and-excitation or efficient channel attention) and the average-pool
``downsample`` of ResNet-D. Both sit outside the grouped convolution, so every
form carries them unchanged.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnext_jax.layers.factory import LayerFactory
from resnext_jax.models.fields import (check_attn_layer, check_block_form,
                                       check_drop_path_rate)

EXPANSION = 4  # output channels = 4 * planes (paper Table 1)

# torch's default Conv1d init, uniform(+-1/sqrt(fan_in)), which timm leaves
# on the ECA convolution (its init only touches Conv2d).
_torch_default_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3, "fan_in", "uniform")


def drop_path(x, rate: float, rng):
    """Stochastic depth (Huang et al. 2016) as timm's ``drop_path``: each
    sample's residual branch is zeroed with probability ``rate``, the kept
    ones scaled by ``1 / (1 - rate)`` so the expectation is unchanged."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


def dropout_rng(module: nn.Module):
    """The module's ``"dropout"`` key, or an error saying how to pass one."""
    if not module.has_rng("dropout"):
        raise ValueError(
            "drop_path_rate > 0 in training needs a 'dropout' key: "
            "model.apply(variables, x, train=True, mutable=['batch_stats'], "
            "rngs={'dropout': key}).")
    return module.make_rng("dropout")


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's ``make_divisible(v, divisor, round_limit=0.)``: ``value`` rounded
    to the nearest multiple of ``divisor``, at least ``divisor``."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA's adaptive kernel size: the odd number nearest above
    ``|log2(C) + beta| / gamma``, at least 3 (Wang et al. 2020, Eq. 12;
    computed as timm's ``EcaModule`` does)."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


def bottleneck_width(planes: int, cardinality: int, base_width: int) -> int:
    """Width of the grouped 3x3: ``floor(planes * base_width / 64) * C``.

    This is torchvision's and timm's arithmetic; for 32x4d it gives 128, 256,
    512, 1024 in the four stages (paper Table 1).
    """
    return int(planes * (base_width / 64.0)) * cardinality


class Branch(nn.Module):
    """One path of forms A and B: 1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU
    [-> 1x1 to ``out_features``, form A only]."""

    width: int = 4
    strides: int = 1
    out_features: int | None = None  # set for form A
    dilation: int = 1
    layers: LayerFactory = LayerFactory()

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = self.layers.conv, self.layers.norm
        y = conv(self.width, 1, name="conv1")(x)
        y = norm(train, "bn1", activation="relu")(y)
        y = conv(self.width, 3, self.strides, dilation=self.dilation,
                 name="conv2")(y)
        y = norm(train, "bn2", activation="relu")(y)
        if self.out_features is not None:
            y = conv(self.out_features, 1, name="conv3")(y)
        return y


class Downsample(nn.Module):
    """Projection shortcut (paper option B): 1x1 conv with stride, then BN.

    With ``avg_down`` (ResNet-D, He et al. 2019, "Bag of Tricks", Sec. 4.2)
    the stride moves to a 2x2 average pool before a stride-1 1x1 conv, so the
    shortcut sees every input pixel: timm's ``downsample_avg``, pooling with
    ``ceil_mode=True, count_include_pad=False``. In a dilated stage (stride
    1, ``dilation`` above 1) timm pools 2x2 at stride 1 with "same" zero
    padding (its ``AvgPool2dSame``).
    """

    features: int = 256
    strides: int = 1
    avg_down: bool = False
    dilation: int = 1
    layers: LayerFactory = LayerFactory()

    @nn.compact
    def __call__(self, x, train: bool = False):
        strides = self.strides
        if self.avg_down and strides != 1:
            x = _avg_pool_ceil(x, strides)
            strides = 1
        elif self.avg_down and self.dilation > 1:
            x = nn.avg_pool(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))),
                            (2, 2), strides=(1, 1), padding="VALID")
        x = self.layers.conv(self.features, 1, strides, name="conv")(x)
        return self.layers.norm(train, "bn")(x)


def _avg_pool_ceil(x, stride):
    """torch's ``AvgPool2d(2, stride, ceil_mode=True,
    count_include_pad=False)``: windows running off the bottom/right edge
    average only the pixels they cover."""
    h, w = x.shape[1:3]
    pad_h = (-(h - 2) % stride) if h > 2 else 2 - h
    pad_w = (-(w - 2) % stride) if w > 2 else 2 - w
    return nn.avg_pool(x, (2, 2), strides=(stride, stride),
                       padding=((0, pad_h), (0, pad_w)),
                       count_include_pad=False)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018, https://arxiv.org/abs/1709.01507)
    as timm's ``SEModule``: global mean, 1x1 conv to ``C/16`` channels (rounded
    to a multiple of 8) with bias, ReLU, 1x1 conv back with bias, sigmoid gate.
    Layer names ``fc1``, ``fc2`` are timm's."""

    layers: LayerFactory = LayerFactory()

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        reduced = make_divisible(channels / 16, 8)
        s = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32)
        s = self.layers.conv(reduced, 1, use_bias=True, name="fc1")(
            s.astype(x.dtype))
        s = self.layers.conv(channels, 1, use_bias=True, name="fc2")(
            nn.relu(s))
        return x * nn.sigmoid(s)


class EfficientChannelAttention(nn.Module):
    """Efficient channel attention (Wang et al. 2020,
    https://arxiv.org/abs/1910.03151) as timm's ``EcaModule``: global mean,
    a 1-D convolution across channels (kernel from `eca_kernel_size`, no
    bias), sigmoid gate. The layer name ``conv`` is timm's."""

    layers: LayerFactory = LayerFactory()

    @nn.compact
    def __call__(self, x):
        n, channels = x.shape[0], x.shape[-1]
        k = eca_kernel_size(channels)
        s = jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(x.dtype)
        # Channels as a length-C sequence of one feature: kernel (k, 1, 1).
        s = nn.Conv(1, (k,), padding=(((k - 1) // 2, (k - 1) // 2),),
                    use_bias=False, dtype=self.layers.dtype,
                    param_dtype=self.layers.param_dtype,
                    kernel_init=_torch_default_kernel_init,
                    name="conv")(s.reshape(n, channels, 1))
        return x * nn.sigmoid(s).reshape(n, 1, 1, channels)


class Bottleneck(nn.Module):
    """ResNeXt bottleneck block; the stride sits on the 3x3 (as torchvision).

    Attributes:
      planes: ``n`` of the paper's stage (64, 128, 256, 512); the block
        outputs ``4 * planes`` channels.
      cardinality: ``C``, the number of groups / branches.
      base_width: ``d`` at ``planes=64``; the 3x3 is
        ``bottleneck_width(planes, C, d)`` wide.
      width: explicit width of the 3x3, overriding ``base_width``.
      form: "A", "B" or "C".
      zero_init_residual: start the block's last BN scale at zero, so the
        block begins as the identity (Goyal et al., 2017).
      attn_layer: channel attention on the residual branch after ``bn3``,
        before the shortcut is added (timm's placement): None, "se" or "eca".
      avg_down: average-pool projection shortcut (ResNet-D; see
        `Downsample`).
      layers: how convolutions and BatchNorms are built (precision,
        lowering, BN constants): `LayerFactory`.
    """

    planes: int = 64
    strides: int = 1
    cardinality: int = 1
    base_width: int = 64
    width: int | None = None
    form: str = "C"
    zero_init_residual: bool = True
    attn_layer: str | None = None
    avg_down: bool = False
    expansion: int = EXPANSION
    drop_path_rate: float = 0.0
    dilation: int = 1
    first_dilation: int | None = None
    layers: LayerFactory = LayerFactory()

    def __post_init__(self):
        check_block_form(self.form)
        check_drop_path_rate(self.drop_path_rate)
        check_attn_layer(self.attn_layer)
        if not isinstance(self.avg_down, bool):
            raise ValueError(
                f"avg_down (={self.avg_down!r}) must be True or False.")
        for field in ("planes", "cardinality", "base_width", "expansion"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{field} (={value!r}) must be a positive integer.")
        width = self.group_conv_width
        if width < self.cardinality or width % self.cardinality:
            raise ValueError(
                f"bottleneck width (={width}) must be a positive multiple of "
                f"cardinality (={self.cardinality}): each of the "
                f"{self.cardinality} groups needs the same whole number of "
                "channels.")
        super().__post_init__()

    @property
    def group_conv_width(self) -> int:
        if self.width is not None:
            return self.width
        return bottleneck_width(self.planes, self.cardinality, self.base_width)

    @property
    def out_features(self) -> int:
        return self.planes * self.expansion

    def residual(self, x, train: bool):
        """The residual function up to ``conv3`` (``bn3`` follows in
        ``__call__``), in the block's form."""
        width, out_features = self.group_conv_width, self.out_features
        dilation = self.first_dilation or self.dilation
        conv, norm = self.layers.conv, self.layers.norm
        if self.form == "C":
            y = conv(width, 1, name="conv1")(x)
            y = norm(train, "bn1", activation="relu")(y)
            y = conv(width, 3, self.strides, groups=self.cardinality,
                     dilation=dilation, name="conv2")(y)
            y = norm(train, "bn2", activation="relu")(y)
            return conv(out_features, 1, name="conv3")(y)
        branch = functools.partial(
            Branch, width=width // self.cardinality, strides=self.strides,
            out_features=out_features if self.form == "A" else None,
            dilation=dilation, layers=self.layers)
        outs = [branch(name=f"branch_{i}")(x, train)
                for i in range(self.cardinality)]
        if self.form == "A":
            return functools.reduce(jnp.add, outs)
        return conv(out_features, 1, name="conv3")(
            jnp.concatenate(outs, axis=-1))

    def shortcut(self, x, train: bool):
        """The identity, or a projection where the shape changes; None
        for a block without a shortcut (override it, e.g. for the paper's
        Table 5 ablation)."""
        if self.strides == 1 and x.shape[-1] == self.out_features:
            return x
        return Downsample(features=self.out_features, strides=self.strides,
                          avg_down=self.avg_down, dilation=self.dilation,
                          layers=self.layers, name="downsample")(x, train)

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = self.residual(x, train)
        shortcut = self.shortcut(x, train)
        drop = train and self.drop_path_rate > 0
        fused = self.attn_layer is None and not drop and shortcut is not None
        bn3 = self.layers.norm(train, "bn3",
                               zero_scale=self.zero_init_residual,
                               activation="relu" if fused else None)
        if fused:
            # relu(bn3(y) + shortcut) in one fused op.
            return bn3(y, residual=shortcut)
        y = bn3(y)
        # timm names the attention module "se" whatever its kind.
        if self.attn_layer == "se":
            y = SqueezeExcite(layers=self.layers, name="se")(y)
        elif self.attn_layer == "eca":
            y = EfficientChannelAttention(layers=self.layers, name="se")(y)
        if drop:
            y = drop_path(y, self.drop_path_rate, dropout_rng(self))
        return nn.relu(y if shortcut is None else y + shortcut)
