"""Weight conversion to and from torchvision/timm state dicts.

The parity tests need torch and torchvision and skip themselves without them.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (block_torch_import, random_variables, randomize_batchnorm,
                      tiny_model)

import resnext_jax as rx
from resnext_jax.weights import state_dict as convert
from resnext_jax.commands import to_safetensors


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model()
    return model, random_variables(model)


# ---------------------------------------------------------------------------
# Without torch.

def test_state_dict_names_and_layouts(tiny):
    model, variables = tiny
    state = rx.to_torch_state_dict(variables, model)
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(
        state["conv1.weight"],
        np.asarray(params["conv1"]["kernel"]).transpose(3, 2, 0, 1))
    # Grouped 3x3: torch (out, in/G, 3, 3); 4 groups of width 16 -> 4 in.
    assert state["layer1.0.conv2.weight"].shape == (16, 4, 3, 3)
    assert state["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    np.testing.assert_array_equal(
        state["layer2.0.downsample.1.running_var"],
        stats["layer2_0"]["downsample"]["bn"]["var"])
    np.testing.assert_array_equal(state["fc.weight"],
                                  np.asarray(params["fc"]["kernel"]).T)
    assert state["bn1.num_batches_tracked"].dtype == np.int64
    num_bn = sum(k.endswith("num_batches_tracked") for k in state)
    assert num_bn == 1 + 4 * 3 + 4  # stem, 3 per block, 4 downsamples
    # Every parameter and statistic appears exactly once.
    num_leaves = len(jax.tree.leaves(variables))
    assert len(state) == num_leaves + num_bn


def test_round_trip_through_safetensors_is_exact(tiny, tmp_path):
    model, variables = tiny
    path = tmp_path / "tiny.safetensors"
    rx.weights.save_safetensors(variables, model, path)
    restored = rx.load_torch_state_dict(str(path), model)
    _assert_trees_equal(restored, variables)
    # The file holds torch's layout and names, readable with numpy alone.
    state = rx.weights.read_state_dict(path)
    reference = rx.to_torch_state_dict(variables, model)
    assert set(state) == set(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(state[key], value)


def test_form_a_model_loads_and_saves_form_c_weights(tiny):
    model, variables = tiny
    state = rx.to_torch_state_dict(variables, model)
    model_a = model.clone(block_form="A")
    variables_a = rx.load_torch_state_dict(state, model_a)
    assert "branch_3" in variables_a["params"]["layer1_0"]
    _assert_trees_equal(variables_a,
                        rx.convert_block_form(variables, to="A"))
    back = rx.to_torch_state_dict(variables_a, model_a)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value)


def test_wrappers_prefixes_and_missing_counters_are_accepted(tiny):
    model, variables = tiny
    state = rx.to_torch_state_dict(variables, model,
                                   num_batches_tracked=False)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()},
               "epoch": 3}
    _assert_trees_equal(rx.load_torch_state_dict(wrapped, model), variables)


def test_errors_name_missing_unexpected_and_misshaped_keys(tiny):
    model, variables = tiny
    state = rx.to_torch_state_dict(variables, model)
    del state["layer3.0.bn2.running_mean"]
    state["layer9.0.conv1.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    state["layer1.0.conv2.weight"] = np.zeros((16, 16, 3, 3), np.float32)
    with pytest.raises(convert.StateDictMismatchError) as info:
        rx.load_torch_state_dict(state, model)
    error = info.value
    assert error.missing == ["layer3.0.bn2.running_mean"]
    assert error.unexpected == ["layer9.0.conv1.weight"]
    assert error.mismatched == {
        "layer1.0.conv2.weight": ((16, 16, 3, 3), (16, 4, 3, 3))}
    message = str(error)
    assert "missing key: layer3.0.bn2.running_mean" in message
    assert "unexpected key: layer9.0.conv1.weight" in message
    assert ("layer1.0.conv2.weight: checkpoint (16, 16, 3, 3), model "
            "expects (16, 4, 3, 3)") in message
    assert isinstance(error, ValueError)


def test_variables_of_another_model_are_rejected(tiny):
    model, variables = tiny
    with pytest.raises(convert.StateDictMismatchError, match="layer1_0"):
        rx.to_torch_state_dict(variables, model.clone(cardinality=2))


def test_head_keep_rejects_other_num_classes_with_a_hint(tiny):
    model, variables = tiny
    state = rx.to_torch_state_dict(variables, model)
    with pytest.raises(ValueError, match="head='reinit'") as info:
        rx.load_torch_state_dict(state, model.clone(num_classes=5))
    assert "fc.weight: checkpoint (7, 2048), model expects (5, 2048)" in str(
        info.value)


def test_head_reinit_and_drop(tiny):
    model, variables = tiny
    state = rx.to_torch_state_dict(variables, model)
    five = model.clone(num_classes=5)
    loaded = rx.load_torch_state_dict(state, five, head="reinit", rng=1)
    fc = loaded["params"].pop("fc")
    assert fc["kernel"].shape == (2048, 5) and fc["bias"].shape == (5,)
    assert float(jnp.std(fc["kernel"])) > 0
    backbone = {k: dict(v) for k, v in variables.items()}
    backbone["params"] = {k: v for k, v in variables["params"].items()
                          if k != "fc"}
    _assert_trees_equal(loaded, backbone)

    headless = model.clone(num_classes=0)
    dropped = rx.load_torch_state_dict(state, headless, head="drop")
    assert "fc" not in dropped["params"]
    features = jax.eval_shape(headless.apply, dropped,
                              jnp.zeros((1, 32, 32, 3)))
    assert features.shape == (1, 2048)
    with pytest.raises(ValueError, match="head='drop'"):
        rx.load_torch_state_dict(state, headless)


@pytest.mark.parametrize("head,num_classes,match", [
    ("replace", 7, "not a head mode"),
    ("drop", 7, "num_classes=7"),
    ("reinit", 0, "num_classes=0"),
])
def test_bad_head_arguments(tiny, head, num_classes, match):
    model, variables = tiny
    state = rx.to_torch_state_dict(variables, model)
    with pytest.raises(ValueError, match=match):
        rx.load_torch_state_dict(state, model.clone(num_classes=num_classes),
                                 head=head)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        rx.weights.read_state_dict(tmp_path / "nope.safetensors")
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown suffix"):
        rx.weights.read_state_dict(odd)


def test_pth_is_read_without_torch(tmp_path, monkeypatch):
    """torchvision's .pth files load where torch is not installed."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pth"
    saved = torch.nn.Conv2d(3, 4, 3).state_dict()
    torch.save(saved, path)
    block_torch_import(monkeypatch)
    state = rx.weights.read_state_dict(path)
    assert sorted(state) == sorted(saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(state[key], value.numpy())


def test_convert_command(tiny, tmp_path, capsys):
    model, variables = tiny
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    rx.weights.save_safetensors(variables, model, src)
    kwargs = '{"stage_sizes": [1, 1, 1, 1], "cardinality": 4, ' \
             '"base_width": 4}'
    to_safetensors.main(["--model", "resnext50_32x4d", "--model-kwargs", kwargs,
                  str(src), str(dst)])
    assert "7 classes" in capsys.readouterr().out
    _assert_trees_equal(rx.load_torch_state_dict(str(dst), model), variables)


# ---------------------------------------------------------------------------
# Parity with torchvision (needs torch and torchvision).

@pytest.fixture(scope="module")
def tv():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    return torch, torchvision


# The 50-layer models run the default lowering, what users run; the deep
# ones XLA's grouped convolution, which compiles about 10x faster on CPU (the
# lowerings are tested equal elsewhere): parity is about the weights.
@pytest.mark.parametrize("name, conv_impl", [
    ("resnet50", "auto"),
    ("resnext50_32x4d", "auto"),
    pytest.param("resnext101_32x8d", "xla", marks=pytest.mark.slow),
    pytest.param("resnext101_64x4d", "xla", marks=pytest.mark.slow),
])
def test_torchvision_parity(tv, name, conv_impl):
    torch, torchvision = tv
    start = time.perf_counter()
    torch.manual_seed(0)
    net = randomize_batchnorm(getattr(torchvision.models, name)(), torch, 1)
    images = torch.randn(2, 3, 224, 224,
                         generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = net(images).numpy()
    torch_state = net.state_dict()

    model = rx.create_model(name, conv_impl=conv_impl)
    variables = rx.load_torch_state_dict(torch_state, model)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, images.numpy().transpose(0, 2, 3, 1))
    max_diff = float(np.max(np.abs(np.asarray(logits) - expected)))
    print(f"\n{name}: max abs logit diff {max_diff:.3g} "
          f"(logits up to {np.abs(expected).max():.3g}), "
          f"{time.perf_counter() - start:.1f} s")
    assert max_diff < 1e-4

    back = rx.to_torch_state_dict(variables, model)
    assert set(back) == set(torch_state)
    for key, tensor in torch_state.items():
        np.testing.assert_array_equal(back[key], tensor.numpy(), err_msg=key)


def test_our_weights_load_into_torchvision(tv, tiny):
    """Strict load into a torchvision ResNet of the same shape; same logits."""
    torch, torchvision = tv
    from torchvision.models.resnet import Bottleneck, ResNet
    model, variables = tiny
    net = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=7, groups=4,
                 width_per_group=4).eval()
    state = rx.to_torch_state_dict(variables, model)
    net.load_state_dict({k: torch.tensor(v) for k, v in state.items()},
                        strict=True)
    images = np.random.default_rng(0).normal(
        size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    logits = model.apply(variables, images)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4,
                               rtol=0)


def test_timm_parity_both_ways(tv):
    """A timm ResNeXt (random weights and BN statistics) loads exactly and
    gives the same logits; our weights load back into it strictly."""
    torch, _ = tv
    timm_resnet = pytest.importorskip("timm.models.resnet")
    net = timm_resnet.ResNet(block=timm_resnet.Bottleneck, layers=[1, 1, 1, 1],
                             cardinality=4, base_width=4, num_classes=7)
    net = randomize_batchnorm(net, torch, 3)
    images = np.random.default_rng(1).normal(
        size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    model = rx.create_model("resnext50_32x4d", stage_sizes=(1, 1, 1, 1),
                            cardinality=4, base_width=4, num_classes=7)
    variables = rx.load_torch_state_dict(net.state_dict(), model)
    logits = model.apply(variables, images, train=False)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4,
                               rtol=0)
    state = rx.to_torch_state_dict(variables, model)
    net.load_state_dict({k: torch.tensor(v) for k, v in state.items()},
                        strict=True)
