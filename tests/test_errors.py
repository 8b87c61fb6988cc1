"""Bad arguments raise ValueError naming the value and the rule."""

import jax.numpy as jnp
import pytest

import resnext_jax as rx
from conftest import tiny_model


def test_unknown_model_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"unknown model name 'resnext50_32x4'\. "
                       r".*Did you mean 'resnext50_32x4d'"):
        rx.create_model("resnext50_32x4")


def test_unknown_override():
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['classes'\]"):
        rx.create_model("resnet50", classes=10)


def test_unknown_block_form():
    with pytest.raises(ValueError, match=r"block_form='D' .* \('A', 'B', 'C'\)"):
        rx.create_model("resnext50_32x4d", block_form="D")


def test_unknown_conv_impl():
    with pytest.raises(ValueError, match=r"conv_impl='fast' .*lowering"):
        rx.create_model("resnext50_32x4d", conv_impl="fast")


def test_wrong_number_of_stage_sizes():
    with pytest.raises(ValueError, match=r"stage_sizes=\(3, 4, 6\) has 3 "
                       r"entries, but the 'imagenet' stem has 4 stages"):
        rx.ResNeXt(stage_sizes=(3, 4, 6))
    with pytest.raises(ValueError, match=r"'cifar' stem has 3 stages"):
        rx.ResNeXt(stage_sizes=(3, 3, 3, 3), stem="cifar")


def test_non_positive_stage_size():
    with pytest.raises(ValueError, match=r"positive integer, got 0"):
        rx.ResNeXt(stage_sizes=(3, 0, 6, 3))


def test_width_not_divisible_by_cardinality():
    with pytest.raises(ValueError, match=r"stage width 100 .* positive "
                       r"multiple of cardinality \(=32\)"):
        rx.ResNeXt(stage_widths=(100, 256, 512, 1024))
    with pytest.raises(ValueError, match=r"bottleneck width \(=10\) must be a "
                       r"positive multiple of cardinality \(=3\)"):
        rx.Bottleneck(planes=64, cardinality=3, width=10)


def test_bad_cardinality_and_classes():
    with pytest.raises(ValueError, match=r"cardinality \(=0\) must be a "
                       r"positive integer"):
        rx.ResNeXt(cardinality=0)
    with pytest.raises(ValueError, match=r"num_classes \(=-1\)"):
        rx.create_model("resnet50", num_classes=-1)


def test_unknown_stem():
    with pytest.raises(ValueError, match=r"stem='mnist' is not a known stem"):
        rx.ResNeXt(stem="mnist")


@pytest.mark.parametrize("shape, message", [
    ((2, 3, 32, 32), r"got shape \(2, 3, 32, 32\) with 32 channels\. "
                     r"It looks like NCHW"),
    ((2, 32, 32, 1), r"NHWC with 3 channels last; got shape \(2, 32, 32, 1\)"),
    ((32, 32, 3), r"4-D NHWC array .* got shape \(32, 32, 3\)"),
])
def test_bad_input_shape(shape, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.init({"params": jnp.zeros((2,), jnp.uint32)},
                   jnp.zeros(shape, jnp.float32))


def test_integer_images_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"floating point .* got dtype uint8"):
        model.init({"params": jnp.zeros((2,), jnp.uint32)},
                   jnp.zeros((1, 32, 32, 3), jnp.uint8))


def test_grouped_conv_channels_not_divisible():
    conv = rx.layers.GroupedConv(features=64, feature_group_count=3)
    with pytest.raises(ValueError, match=r"input channels \(=64\) and features "
                       r"\(=64\) must both be divisible by feature_group_count "
                       r"\(=3\)"):
        conv.init({"params": jnp.zeros((2,), jnp.uint32)},
                  jnp.zeros((1, 8, 8, 64)))


def test_convert_to_unknown_form():
    with pytest.raises(ValueError, match=r"block_form='E'"):
        rx.convert_block_form({"params": {}}, to="E")
