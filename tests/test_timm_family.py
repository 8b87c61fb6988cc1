"""timm's ResNeXt family: architectures, parameter counts and weights.

The comparisons with timm need torch and timm (the ``[torch]`` extra) and skip
themselves without them. Large timm models are built on torch's meta device:
their shapes, never their weights. Our models run with ``conv_impl="xla"``,
which compiles quickly on CPU; every lowering computes the same function
(tests/test_conv.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, randomize, randomize_batchnorm

import resnext_jax as rx

TIMM_NAMES = [
    "resnext50_32x4d", "resnext50d_32x4d", "resnext101_32x4d",
    "resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d",
    "resnext101_64x4d", "seresnext26d_32x4d", "seresnext26t_32x4d",
    "seresnext50_32x4d", "seresnext101_32x4d", "seresnext101_32x8d",
    "seresnext101_64x4d", "seresnext101d_32x8d", "ecaresnext26t_32x4d",
    "ecaresnext50t_32x4d",
]
# Every kind: plain; D (deep stem, average-pool shortcut); D with SE; T
# (tiered stem) with ECA.
PARITY_NAMES = ["resnext50_32x4d", "resnext50d_32x4d", "seresnext26d_32x4d",
                "ecaresnext26t_32x4d"]


@pytest.fixture(scope="module")
def timm():
    pytest.importorskip("torch")
    return pytest.importorskip("timm")


def _timm_on_meta(timm, name, **kwargs):
    import torch  # pylint: disable=import-outside-toplevel
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def _our_shapes(model):
    return jax.eval_shape(lambda: rx.init_variables(model, 0, 32))


# ---------------------------------------------------------------------------
# Without torch.

def test_every_timm_name_is_registered():
    assert set(TIMM_NAMES) <= set(rx.list_models())


@pytest.mark.parametrize("name, fields", [
    ("resnext50d_32x4d", dict(stem_type="deep", avg_down=True,
                              attn_layer=None)),
    ("seresnext26t_32x4d", dict(stem_type="deep_tiered", avg_down=True,
                                attn_layer="se", stage_sizes=(2, 2, 2, 2))),
    ("seresnext101_64x4d", dict(stem_type="", avg_down=False,
                                attn_layer="se", cardinality=64)),
    ("ecaresnext50t_32x4d", dict(stem_type="deep_tiered", avg_down=True,
                                 attn_layer="eca")),
])
def test_variants_are_fields_of_one_model(name, fields):
    config = rx.models.model_config(name)
    assert {k: config.get(k, getattr(rx.ResNeXt, k)) for k in fields} == fields
    assert type(rx.create_model(name)) is rx.ResNeXt


def test_names_shared_with_torchvision_keep_the_plain_architecture():
    for name in ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"):
        model = rx.create_model(name)
        assert (model.stem_type, model.avg_down, model.attn_layer) == (
            "", False, None)


@pytest.mark.parametrize("overrides, match", [
    (dict(stem_type="deeper"),
     (r"stem_type='deeper' is not a known stem type; choose one of "
      r"\('', 'deep', ")),
    (dict(stem="cifar", stage_sizes=(1, 1, 1), stem_type="deep"),
     (r"stem_type='deep' replaces the 'imagenet' stem's 7x7 conv, but "
      r"stem='cifar'")),
    (dict(attn_layer="cbam"),
     (r"attn_layer='cbam' is not a channel attention; choose one of "
      r"\(None, 'se', 'eca'")),
    (dict(avg_down="yes"), r"avg_down \(='yes'\) must be True or False"),
])
def test_bad_variant_fields_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        rx.ResNeXt(**overrides)


def test_block_rejects_unknown_attention():
    with pytest.raises(ValueError, match="attn_layer='SE'"):
        rx.Bottleneck(planes=64, cardinality=4, attn_layer="SE")


def _tiny(name, **overrides):
    config = dict(stage_sizes=(1, 1, 1, 1), cardinality=4, num_classes=7,
                  conv_impl="xla")
    config.update(overrides)
    return rx.create_model(name, **config)


@pytest.mark.parametrize("attn_layer", ["se", "eca"])
def test_forms_a_and_b_carry_the_attention(attn_layer):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 16))
    block_c = rx.Bottleneck(planes=8, cardinality=4, base_width=16, strides=2,
                            attn_layer=attn_layer, avg_down=True,
                            zero_init_residual=False,
                            layers=rx.layers.LayerFactory(conv_impl="xla"))
    variables = randomize(block_c.init(jax.random.PRNGKey(1), x), seed=5)
    assert "se" in variables["params"]
    y_c = block_c.apply(variables, x)
    for form in "AB":
        converted = rx.convert_block_form(variables, to=form)
        for a, b in zip(jax.tree.leaves(converted["params"]["se"]),
                        jax.tree.leaves(variables["params"]["se"])):
            np.testing.assert_array_equal(a, b)
        y = block_c.clone(form=form).apply(converted, x)
        np.testing.assert_allclose(y, y_c, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["seresnext26t_32x4d", "ecaresnext26t_32x4d",
                                  "resnext50d_32x4d"])
def test_timm_names_round_trip_through_safetensors(name, tmp_path):
    model = _tiny(name)
    variables = random_variables(model, seed=2)
    rx.weights.save_safetensors(variables, model, tmp_path / "w.safetensors")
    restored = rx.load_torch_state_dict(tmp_path / "w.safetensors", model)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)
    keys = set(rx.weights.read_state_dict(tmp_path / "w.safetensors"))
    stem = ({"conv1.0.weight", "conv1.1.running_var", "conv1.3.weight",
             "conv1.4.weight", "conv1.6.weight"} if model.stem_type else set())
    assert stem | {"layer2.0.downsample.1.weight",
                   "layer2.0.downsample.2.running_mean"} <= keys
    assert not any(k.startswith("layer2.0.downsample.0.") for k in keys)


def test_cpu_lowering_computes_the_same_variant():
    xla = _tiny("seresnext26t_32x4d")
    variables = random_variables(xla, seed=4)
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 40, 40, 3))
    expected = jax.jit(xla.apply)(variables, images)
    dense = xla.clone(conv_impl="dense")
    logits = jax.jit(dense.apply)(variables, images)
    np.testing.assert_allclose(logits, expected, rtol=0,
                               atol=1e-5 * float(jnp.abs(expected).max()))


def test_a_checkpoint_of_another_variant_names_the_fields_to_set():
    source = _tiny("seresnext26d_32x4d")
    state = rx.to_torch_state_dict(random_variables(source), source)
    with pytest.raises(rx.weights.StateDictMismatchError,
                       match=r"stem_type='deep' or 'deep_tiered', "
                             r"avg_down=True, attn_layer='se'"):
        rx.load_torch_state_dict(state, _tiny("resnext50_32x4d"))
    with pytest.raises(rx.weights.StateDictMismatchError, match=r"attn_layer='se'"):
        rx.load_torch_state_dict(state, _tiny("ecaresnext26t_32x4d",
                                              stem_type="deep"))


def test_count_macs_and_summary_of_a_deep_stem_attention_model():
    model = rx.create_model("seresnext26t_32x4d", conv_impl="xla")
    rows = rx.summarize(model, 224)
    assert [r["output_shape"] for r in rows[:5]] == [
        (56, 56, 64), (56, 56, 256), (28, 28, 512), (14, 14, 1024),
        (7, 7, 2048)]
    assert sum(r["params"] for r in rows) == 16_806_976
    assert sum(r["macs"] for r in rows) == rx.models.count_macs(model, 224)


# ---------------------------------------------------------------------------
# Against timm (needs torch and timm).

@pytest.mark.parametrize("name", TIMM_NAMES)
def test_param_counts_equal_timm(timm, name):
    net = _timm_on_meta(timm, name)
    expected = sum(p.numel() for p in net.parameters())
    model = rx.create_model(name, conv_impl="xla")
    assert rx.models.count_params(_our_shapes(model)) == expected


@pytest.mark.parametrize("name", ["resnext50d_32x4d", "seresnext26t_32x4d",
                                  "ecaresnext26t_32x4d"])
def test_macs_equal_torch_flop_counter(timm, name):
    import torch  # pylint: disable=import-outside-toplevel
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
    net = _timm_on_meta(timm, name).eval()
    with FlopCounterMode(display=False) as counter:
        net(torch.empty(1, 3, 224, 224, device="meta"))
    macs = counter.get_total_flops() // 2  # torch counts a multiply-add as 2
    assert rx.models.count_macs(rx.create_model(name, conv_impl="xla"), 224) == macs


def test_shared_names_have_torchvision_keys(timm):
    torchvision = pytest.importorskip("torchvision")
    import torch  # pylint: disable=import-outside-toplevel
    for name in ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"):
        with torch.device("meta"):
            tv_keys = set(getattr(torchvision.models, name)().state_dict())
        assert set(_timm_on_meta(timm, name).state_dict()) == tv_keys


@pytest.mark.parametrize("name", PARITY_NAMES)
def test_logits_equal_timm_through_safetensors(timm, name, tmp_path):
    import torch  # pylint: disable=import-outside-toplevel
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    # 72 pixels: odd feature maps (9 -> 5 -> 3) exercise the ceil-mode pool.
    size = 72
    torch.manual_seed(0)
    net = randomize_batchnorm(timm.create_model(name, pretrained=False,
                                                num_classes=10), torch, 1,
                              image_size=size)
    images = np.random.default_rng(3).normal(
        size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    timm_state = net.state_dict()
    # timm's .safetensors files hold the state dict under the same names.
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in timm_state.items()}, str(path))

    model = rx.create_model(name, num_classes=10, conv_impl="xla")
    variables = rx.load_torch_state_dict(path, model)
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    scale = float(np.abs(expected).max())
    error = float(np.abs(logits - expected).max())
    print(f"\n{name}: max |logit diff| {error:.3g}, max |logit| {scale:.3g}, "
          f"relative {error / scale:.2g}")
    assert error <= 1e-4 * scale

    back = rx.to_torch_state_dict(variables, model)
    assert {k: v.shape for k, v in back.items()} == {
        k: tuple(v.shape) for k, v in timm_state.items()}
    for key, tensor in timm_state.items():
        np.testing.assert_array_equal(back[key], tensor.numpy(), err_msg=key)
    net.load_state_dict({k: torch.tensor(v) for k, v in back.items()},
                        strict=True)


# ---------------------------------------------------------------------------
# Backbone features, as timm's features_only.

@pytest.mark.parametrize("name, output_stride", [
    ("resnext50_32x4d", 32), ("resnext50d_32x4d", 32),
    ("seresnext26d_32x4d", 32), ("resnext50_32x4d", 16),
    ("resnext50d_32x4d", 16), ("seresnext26d_32x4d", 8)])
def test_features_only_equal_timm(timm, name, output_stride):
    import torch  # pylint: disable=import-outside-toplevel
    size, out_indices = 64, (0, 1, 2, 3, 4)
    torch.manual_seed(0)
    net = randomize_batchnorm(timm.create_model(name, pretrained=False,
                                                num_classes=10), torch, 2,
                              image_size=size)
    features = timm.create_model(name, pretrained=False, features_only=True,
                                 out_indices=out_indices,
                                 output_stride=output_stride).eval()
    missing, _ = features.load_state_dict(net.state_dict(), strict=False)
    assert not missing
    images = np.random.default_rng(4).normal(
        size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = [m.numpy().transpose(0, 2, 3, 1) for m in features(
            torch.from_numpy(images.transpose(0, 3, 1, 2)))]

    model = rx.create_model(name, num_classes=10, conv_impl="xla",
                            features_only=True, out_indices=out_indices,
                            output_stride=output_stride)
    variables = rx.load_torch_state_dict(
        {k: v.numpy() for k, v in net.state_dict().items()},
        model.clone(features_only=False))
    maps = jax.jit(model.apply)(variables, images)
    assert [m.shape for m in maps] == [e.shape for e in expected]
    for index, (ours, theirs) in enumerate(zip(maps, expected)):
        scale = float(np.abs(theirs).max())
        error = float(np.abs(np.asarray(ours) - theirs).max())
        print(f"\n{name} stride {output_stride} map {index}: max |diff| "
              f"{error:.3g}, relative {error / scale:.2g}")
        assert error <= 1e-4 * scale
    info = features.feature_info
    assert [i["num_chs"] for i in model.feature_info()] == info.channels()
    assert [i["reduction"] for i in model.feature_info()] == info.reduction()


def test_features_stop_after_the_last_map_asked_for():
    model = rx.create_model("resnext50_32x4d", features_only=True,
                            out_indices=(1, 2))
    shapes = jax.eval_shape(lambda: rx.init_variables(model, 0, 64))
    assert sorted(shapes["params"]) == ["bn1", "conv1", "layer1_0",
                                        "layer1_1", "layer1_2", "layer2_0",
                                        "layer2_1", "layer2_2", "layer2_3"]
    maps = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3))),
                          shapes)
    assert [m.shape for m in maps] == [(1, 16, 16, 256), (1, 8, 8, 512)]
    with pytest.raises(ValueError, match=r"out_indices \(=\(2, 1\)\) must "
                       "list increasing"):
        rx.create_model("resnext50_32x4d", out_indices=(2, 1))
