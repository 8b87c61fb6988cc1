"""The model bundle, load_pretrained and the preprocessing spec."""

import json
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables, small_cifar_model, tiny_model
from PIL import Image

import resnext_jax as rx
from resnext_jax.weights import bundle
from resnext_jax.inference import export
from resnext_jax.inference import serving

LABELS = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_same(a, b):
    a, b = _flat(a), _flat(b)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("make,overrides", [
    (tiny_model, {}),
    (tiny_model, {"block_form": "A", "dtype": jnp.bfloat16}),
    (small_cifar_model, {"stage_widths": (8, 16, 32)}),
])
def test_bundle_round_trip_is_exact(tmp_path, make, overrides):
    model = make(**overrides)
    variables = random_variables(model, seed=1)
    spec = rx.Preprocessing.cifar(16, interpolation="bicubic")
    rx.save_pretrained(tmp_path / "b", model, variables, class_names=LABELS,
                       preprocessing=spec, model_name="custom",
                       extra={"step": 3})
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "model.json", "weights.safetensors"]
    loaded = rx.load_pretrained(tmp_path / "b")
    assert isinstance(loaded, rx.weights.Pretrained)
    assert loaded.model == model.clone(axis_name=None)
    assert loaded.preprocessing == spec
    assert loaded.class_names == LABELS
    _assert_same(loaded.variables, variables)
    config = json.loads((tmp_path / "b" / "model.json").read_text())
    assert config["format"] == bundle.FORMAT
    assert config["extra"] == {"step": 3}


def test_weights_names_are_torchvision_names(tmp_path):
    model = tiny_model()
    variables = random_variables(model, seed=2)
    rx.save_pretrained(tmp_path, model, variables)
    from safetensors.numpy import load_file
    saved = load_file(str(tmp_path / bundle.WEIGHTS_FILE))
    expected = rx.to_torch_state_dict(variables, model)
    assert set(saved) == set(expected)
    assert "layer1.0.conv2.weight" in saved and "fc.weight" in saved


def test_workdir_resolves_to_its_model_folder(tmp_path):
    model = tiny_model()
    variables = random_variables(model)
    rx.save_pretrained(tmp_path / "model", model, variables)
    (tmp_path / "config.json").write_text("{}")
    model2, variables2, spec, names = rx.load_pretrained(tmp_path)
    assert model2 == model and spec == rx.Preprocessing()
    assert names == [f"class_{i}" for i in range(7)]
    _assert_same(variables2, variables)
    # Overrides of how the model runs.
    assert rx.load_pretrained(tmp_path, conv_impl="xla").model.conv_impl \
        == "xla"


def test_saving_again_replaces_the_bundle_whole(tmp_path):
    model = tiny_model()
    rx.save_pretrained(tmp_path / "model", model, random_variables(model, 16, 1))
    second = random_variables(model, 16, 2)
    rx.save_pretrained(tmp_path / "model", model, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    _assert_same(rx.load_pretrained(tmp_path / "model").variables, second)


def test_saving_never_deletes_what_it_did_not_write(tmp_path):
    model = tiny_model()
    variables = random_variables(model, 16, 1)
    # A training workdir, which load_pretrained accepts as a source.
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FileExistsError, match=r"is not empty and is not a "
                       r"model bundle \(it holds checkpoints, config.json"):
        rx.save_pretrained(tmp_path, model, variables)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="is a file"):
        rx.save_pretrained(tmp_path / "notes.txt", model, variables)
    # A bundle's own files are replaced; what else is in it stays.
    rx.save_pretrained(tmp_path / "b", model, variables)
    (tmp_path / "b" / "README.md").write_text("card")
    second = random_variables(model, 16, 2)
    rx.save_pretrained(tmp_path / "b", model, second)
    assert (tmp_path / "b" / "README.md").read_text() == "card"
    _assert_same(rx.load_pretrained(tmp_path / "b").variables, second)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")
            ] == []


def test_bundle_permissions_follow_the_umask(tmp_path):
    model = tiny_model()
    old = os.umask(0o022)
    try:
        rx.save_pretrained(tmp_path / "b", model, random_variables(model))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o755
    for name in ("model.json", "weights.safetensors"):
        assert stat.S_IMODE((tmp_path / "b" / name).stat().st_mode) == 0o644


def test_weights_file_with_a_model_name(tmp_path):
    model = tiny_model()
    variables = random_variables(model)
    rx.weights.save_safetensors(variables, model, tmp_path / "w.safetensors")
    kwargs = dict(stage_sizes=(1, 1, 1, 1), cardinality=4, base_width=4)
    loaded = rx.load_pretrained(tmp_path / "w.safetensors",
                                "resnext50_32x4d", **kwargs)
    assert loaded.model.num_classes == 7  # read from fc.weight.
    assert loaded.preprocessing == rx.Preprocessing()
    _assert_same(loaded.variables, variables)
    with pytest.raises(ValueError, match="give the model's name"):
        rx.load_pretrained(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="holds no model bundle"):
        rx.load_pretrained(tmp_path)


def test_weights_file_of_a_timm_model_gets_timms_preprocessing(tmp_path):
    # timm evaluates seresnext101_32x8d bicubic with crop_pct 0.95.
    kwargs = dict(stage_sizes=(1, 1, 1, 1), cardinality=4, base_width=4,
                  num_classes=7)
    model = rx.create_model("seresnext101_32x8d", **kwargs)
    variables = random_variables(model)
    rx.weights.save_safetensors(variables, model, tmp_path / "w.safetensors")
    loaded = rx.load_pretrained(tmp_path / "w.safetensors",
                                "seresnext101_32x8d", **kwargs)
    assert loaded.preprocessing == rx.Preprocessing(
        resize_size=236, crop_size=224, interpolation="bicubic")
    _assert_same(loaded.variables, variables)


def test_old_workdir_error_is_one_line_with_the_fix(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        rx.load_pretrained(tmp_path)
    assert "python -m train.bundle" in str(error.value)
    assert "\n" not in str(error.value)


# --- The preprocessing spec. ---

def test_spec_round_trips_through_json():
    spec = rx.Preprocessing.imagenet(160, interpolation="bicubic")
    assert (spec.resize_size, spec.crop_size) == (183, 160)
    assert rx.Preprocessing.from_dict(json.loads(json.dumps(
        spec.to_dict()))) == spec
    assert spec.with_crop_size(224).resize_size == 256
    with pytest.raises(ValueError, match="unknown preprocessing field"):
        rx.Preprocessing.from_dict({"size": 3})


@pytest.mark.parametrize("kwargs,match", [
    ({"resize_size": 16, "crop_size": 32}, "resize_size"),
    ({"crop_size": 0}, "crop_size"),
    ({"interpolation": "lanczos"}, "interpolation"),
    ({"mean": (0.5, 0.5)}, "mean"),
    ({"std": (0.5, 0.0, 0.5)}, "std"),
    ({"resize": "longer"}, "resize"),
])
def test_bad_spec_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rx.Preprocessing(**kwargs)


def test_non_rgb_images_become_rgb(tmp_path):
    spec = rx.Preprocessing(resize_size=12, crop_size=10)
    grey = np.random.default_rng(0).integers(0, 256, (15, 12), np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    pixels = spec.pixels(Image.open(tmp_path / "grey.png"))
    assert pixels.shape == (10, 10, 3)
    assert (pixels[..., 0] == pixels[..., 2]).all()
    rgba = np.concatenate([np.stack([grey] * 3, -1),
                           np.full((15, 12, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(
        spec.load_image(tmp_path / "rgba.png"),
        spec.load_image(tmp_path / "grey.png"))  # alpha dropped.


def test_export_records_the_spec_and_serving_applies_it(tmp_path):
    model = tiny_model()
    variables = random_variables(model, seed=4)
    spec = rx.Preprocessing(resize_size=40, crop_size=32,
                            interpolation="bicubic", mean=(0.4, 0.5, 0.6),
                            std=(0.3, 0.2, 0.1))
    export.save_exported(tmp_path / "m.rxexport", model, variables,
                         preprocessing=spec, class_names=LABELS)
    loaded = serving.load(tmp_path / "m.rxexport")
    assert loaded.meta["image_size"] == 32
    assert rx.Preprocessing.from_dict(loaded.preprocessing) == spec
    Image.fromarray(np.random.default_rng(3).integers(
        0, 256, (50, 70, 3), np.uint8)).save(tmp_path / "x.png")
    np.testing.assert_array_equal(loaded.load_image(tmp_path / "x.png"),
                                  spec.load_image(tmp_path / "x.png"))
