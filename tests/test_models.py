"""Model structure, shapes, names, dtypes and registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnext_jax as rx
from conftest import tiny_model


def _logit_shape(model, size, batch=2):
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)

    def run(x):
        variables = model.init(jax.random.PRNGKey(0), x)
        return model.apply(variables, x)
    return jax.eval_shape(run, x).shape


@pytest.mark.parametrize("size", [224, 160, 256, 97, 33])
def test_imagenet_logit_shapes(size):
    model = rx.create_model("resnext50_32x4d", num_classes=11)
    assert _logit_shape(model, size) == (2, 11)


def test_stage_feature_maps_at_224():
    model = rx.create_model("resnext50_32x4d")
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)

    def run(x):
        variables = model.init(jax.random.PRNGKey(0), x)
        return model.apply(variables, x, return_features=True)
    feats = jax.eval_shape(run, x)
    assert feats["stem"].shape == (1, 56, 56, 64)
    assert [feats[f"layer{i}"].shape[1:] for i in range(1, 5)] == [
        (56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]
    assert feats["pooled"].shape == (1, 2048)
    assert feats["logits"].shape == (1, 1000)


@pytest.mark.parametrize("name", ["resnext29_8x64d", "resnext29_16x64d"])
def test_cifar_models_at_32(name):
    model = rx.create_model(name, num_classes=100)
    assert _logit_shape(model, 32) == (2, 100)


def test_headless_model_returns_pooled_features():
    model = rx.create_model("resnext50_32x4d", num_classes=0)
    assert _logit_shape(model, 64) == (2, 2048)


def test_real_forward_train_and_eval(images):
    model = tiny_model()
    variables = rx.init_variables(model, 0, 32)

    @jax.jit
    def both(variables, images):
        return model.apply(variables, images), model.apply(
            variables, images, train=True, mutable=["batch_stats"])

    logits, (logits_train, updates) = both(variables, images)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert logits_train.shape == (2, 7)
    # Running statistics move in train mode.
    before = variables["batch_stats"]["bn1"]["mean"]
    after = updates["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(before, after)


def test_layer_names_follow_torchvision():
    model = rx.create_model("resnext50_32x4d")
    shapes = jax.eval_shape(lambda: rx.init_variables(model, 0, 64))
    params = shapes["params"]
    expected_top = {"conv1", "bn1", "fc"} | {
        f"layer{i + 1}_{j}" for i, n in enumerate((3, 4, 6, 3))
        for j in range(n)}
    assert set(params) == expected_top
    block = params["layer1_0"]
    assert set(block) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                          "downsample"}
    assert set(block["downsample"]) == {"conv", "bn"}
    # Grouped 3x3 kernel is HWIO with I = width / groups, as nn.Conv.
    assert block["conv2"]["kernel"].shape == (3, 3, 4, 128)
    assert params["fc"]["kernel"].shape == (2048, 1000)
    # Only the first block of each stage projects its shortcut.
    for i, n in enumerate((3, 4, 6, 3)):
        assert "downsample" in params[f"layer{i + 1}_0"]
        for j in range(1, n):
            assert "downsample" not in params[f"layer{i + 1}_{j}"]
    # Convs that feed a BatchNorm carry no bias.
    convs = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
             if "conv" in jax.tree_util.keystr(p)]
    assert convs and all("bias" not in jax.tree_util.keystr(p) for p in convs)


def test_zero_init_residual():
    from conftest import small_cifar_model
    model = small_cifar_model()
    variables = rx.init_variables(model, 0, 8)
    block = variables["params"]["layer1_0"]
    assert float(jnp.abs(block["bn3"]["scale"]).max()) == 0.0
    assert float(block["bn2"]["scale"].min()) == 1.0
    off = rx.init_variables(small_cifar_model(zero_init_residual=False), 0, 8)
    assert float(off["params"]["layer1_0"]["bn3"]["scale"].min()) == 1.0


def test_bfloat16_runs_and_stays_close_to_float32(images):
    from conftest import randomize
    from conftest import random_variables
    model32 = tiny_model(zero_init_residual=False)
    model16 = tiny_model(zero_init_residual=False, dtype=jnp.bfloat16)
    variables = random_variables(model32, image_size=32)
    out32 = jax.jit(model32.apply)(variables, images)
    out16 = jax.jit(model16.apply)(variables, images)
    assert out16.dtype == jnp.float32  # classifier runs in float32
    # Parameters stay float32 under bfloat16 compute.
    init16 = jax.eval_shape(lambda: rx.init_variables(model16, 0, 32))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init16))
    scale = float(jnp.abs(out32).max())
    assert float(jnp.abs(out16 - out32).max()) < 0.05 * scale


def test_features_of_cifar_model(images):
    model = rx.ResNeXt(stage_sizes=(1, 1, 1), cardinality=2, base_width=4,
                       stem="cifar", num_classes=3)
    variables = rx.init_variables(model, 0, 32)
    feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(
        variables, images)
    assert feats["layer3"].shape == (2, 8, 8, 1024)
    assert feats["logits"].shape == (2, 3)


def test_list_and_create_all_models():
    names = rx.list_models()
    for required in ["resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x4d", "resnext101_32x8d",
                     "resnext101_64x4d", "resnext152_32x4d",
                     "resnext29_8x64d", "resnext29_16x64d",
                     "resnext50_1x64d", "resnext50_2x40d", "resnext50_4x24d",
                     "resnext50_8x14d"]:
        assert required in names
    for name in names:
        assert isinstance(rx.create_model(name), rx.ResNeXt)


def test_create_model_overrides():
    model = rx.create_model("resnext50_32x4d", num_classes=10,
                            dtype=jnp.bfloat16, block_form="B",
                            conv_impl="xla")
    assert (model.num_classes, model.dtype, model.block_form,
            model.conv_impl) == (10, jnp.bfloat16, "B", "xla")
    assert model.cardinality == 32 and model.base_width == 4
