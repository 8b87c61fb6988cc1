"""The predict command on images the tests write, and its preprocessing."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import random_variables, tiny_model
from PIL import Image

import resnext_jax as rx
from resnext_jax.inference import predict
from resnext_jax.weights import bundle
from resnext_jax.commands import predict as predict_command
from resnext_jax.inference import serving

TINY_KWARGS = json.dumps(
    {"stage_sizes": [1, 1, 1, 1], "cardinality": 4, "base_width": 4})
LABELS = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
# Small crops keep the test fast; the model pools globally.
SIZES = ["--resize-size", "40", "--crop-size", "32"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 7-class model saved as safetensors, a labels file, 3 images."""
    root = tmp_path_factory.mktemp("predict")
    model = tiny_model()
    variables = random_variables(model, seed=3)
    weights = root / "tiny.safetensors"
    rx.weights.save_safetensors(variables, model, weights)
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(0)
    images = []
    for i, (size, mode) in enumerate([((50, 40), "RGB"), ((30, 61), "L"),
                                      ((45, 45), "RGBA")]):
        pixels = rng.integers(0, 256, size[::-1] + (len(mode),), np.uint8)
        path = root / f"image{i}.png"
        image = Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels)
        assert image.mode == mode
        image.save(path)
        images.append(str(path))
    return model, variables, str(weights), str(labels), images


def _run(capsys, argv):
    predict_command.main(argv)
    return capsys.readouterr().out


def test_json_output_is_sorted_top_k_of_the_model(setup, capsys):
    model, variables, weights, labels, images = setup
    out = _run(capsys, ["--model", "resnext50_32x4d", "--model-kwargs",
                        TINY_KWARGS, "--weights", weights, "--labels", labels,
                        "--top-k", "3", "--batch-size", "2", "--json",
                        *SIZES, *images])
    results = json.loads(out)
    assert [r["image"] for r in results] == images
    batch = np.stack([serving.load_image(p, 40, 32) for p in images])
    probs = np.asarray(jax.nn.softmax(model.apply(variables, batch)))
    for result, expected in zip(results, probs):
        preds = result["predictions"]
        assert len(preds) == 3
        p = [x["probability"] for x in preds]
        assert p == sorted(p, reverse=True)
        assert 0 < sum(p) <= 1 + 1e-6
        assert [x["index"] for x in preds] == list(np.argsort(-expected)[:3])
        np.testing.assert_allclose(p, np.sort(expected)[::-1][:3], atol=1e-5)
        assert [x["label"] for x in preds] == [LABELS[x["index"]]
                                               for x in preds]


def test_text_output_and_batching_agree(setup, capsys):
    _, _, weights, labels, images = setup
    common = ["--model", "resnext50_32x4d", "--model-kwargs", TINY_KWARGS,
              "--weights", weights, "--labels", labels, *SIZES, *images]
    # 3 images in batches of 2 (last one padded) and in one batch of 3.
    batched = _run(capsys, common + ["--batch-size", "2"])
    whole = _run(capsys, common + ["--batch-size", "3"])
    assert batched == whole
    lines = batched.splitlines()
    assert len(lines) == 3 * (1 + 5)
    assert lines[0] == images[0]
    label_line = lines[1].split()
    assert float(label_line[0]) > 0 and label_line[1] in LABELS
    assert label_line[2].strip("()").isdigit()


def test_without_labels_names_are_generic(setup):
    model, variables, _, _, images = setup
    results = predict.predict_files(
        model, variables, images[:1], bundle.default_class_names(7),
        top_k=10, preprocessing=rx.Preprocessing(40, 32))
    preds = results[0]["predictions"]
    assert len(preds) == 7  # top_k is capped at the number of classes
    assert {p["label"] for p in preds} == {f"class_{i}" for i in range(7)}
    assert abs(sum(p["probability"] for p in preds) - 1) < 1e-5


def test_imagenet_class_names_ship_with_the_package():
    names = bundle.imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[999] == "toilet tissue"
    assert all(name and name == name.strip() for name in names)
    assert bundle.default_class_names(1000) == names


def test_argument_errors(setup):
    _, _, weights, _, images = setup
    with pytest.raises(SystemExit) as info:
        predict_command.main(["--model", "resnext50_32x4d", images[0]])
    assert "--weights" in str(info.value.code)
    with pytest.raises(SystemExit) as info:
        predict_command.main(["--model", "resnext50_32x4d", "--model-kwargs",
                      TINY_KWARGS, "--weights", weights, "--labels", __file__,
                      images[0]])
    assert "num_classes=7" in str(info.value.code)


def test_workdir_reads_the_model_bundle(setup, capsys, tmp_path):
    """--workdir loads <workdir>/model/ with the run's class names, image
    size and normalization."""
    model, variables, _, _, images = setup
    spec = rx.Preprocessing(resize_size=37, crop_size=32,
                            interpolation="bicubic", mean=(0.5, 0.4, 0.3),
                            std=(0.2, 0.25, 0.3))
    rx.save_pretrained(tmp_path / "run" / "model", model, variables,
                       class_names=LABELS, preprocessing=spec)
    out = _run(capsys, ["--workdir", str(tmp_path / "run"), "--json",
                        "--top-k", "2", images[0]])
    preds = json.loads(out)[0]["predictions"]
    image = spec.load_image(images[0])[None]
    assert image.shape == (1, 32, 32, 3)
    probs = np.asarray(jax.nn.softmax(model.apply(variables, image)))[0]
    assert [p["index"] for p in preds] == list(np.argsort(-probs)[:2])
    np.testing.assert_allclose([p["probability"] for p in preds],
                               np.sort(probs)[::-1][:2], atol=1e-5)
    assert [p["label"] for p in preds] == [LABELS[p["index"]] for p in preds]


def test_workdir_without_a_bundle_says_what_to_do(tmp_path, setup):
    _, _, _, _, images = setup
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as info:
        predict_command.main(["--workdir", str(tmp_path), images[0]])
    message = str(info.value.code)
    assert "without a model bundle" in message
    assert "python -m train.bundle" in message
    assert "\n" not in message


@pytest.mark.slow  # runs the training program for two steps
def test_workdir_from_a_real_training_run(tmp_path, capsys):
    workdir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/default.py",
         "--workdir", str(workdir), "--config.num_train_steps=2",
         "--config.checkpoint_every_steps=1", "--config.progress_bar=False"],
        check=True, cwd=pathlib.Path(__file__).resolve().parents[1])
    model, _, preprocessing, class_names = rx.load_pretrained(workdir)
    assert preprocessing.crop_size == 8
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    out = _run(capsys, ["--workdir", str(workdir), "--json", "--top-k", "3",
                        str(image)])  # 8x8 from the run's bundle
    preds = json.loads(out)[0]["predictions"]
    assert len(preds) == min(3, model.num_classes)
    assert all(p["label"] == class_names[p["index"]] for p in preds)


# ---------------------------------------------------------------------------
# Preprocessing equals torchvision's ImageNet eval transforms.

@pytest.mark.parametrize("size", [(300, 200), (199, 257), (256, 256),
                                  (224, 224), (500, 120)])
def test_preprocessing_matches_torchvision(size):
    pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    pixels = np.random.default_rng(1).integers(0, 256, size[::-1] + (3,),
                                               np.uint8)
    image = Image.fromarray(pixels)
    crop = transforms.Compose([transforms.Resize(256),
                               transforms.CenterCrop(224)])
    expected = np.asarray(crop(image))
    ours = serving.resize_and_crop(image)
    np.testing.assert_array_equal(ours, expected)
    tensor = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize(serving.IMAGENET_MEAN, serving.IMAGENET_STD),
    ])(Image.fromarray(expected))
    np.testing.assert_allclose(serving.normalize(ours),
                               tensor.numpy().transpose(1, 2, 0), atol=1e-6)


def test_resize_smaller_than_crop_is_rejected():
    with pytest.raises(ValueError, match="resize_size"):
        serving.resize_and_crop(Image.new("RGB", (10, 10)), 16, 32)


def test_serving_normalize_gives_the_formula_s_bits():
    """``serving.normalize`` spreads mean and std to the image's shape (and
    caches them per shape), for the broadcast formula's values bit for bit,
    on HWC and NHWC pixels."""
    from resnext_jax.inference import serving
    mean = np.float32(serving.IMAGENET_MEAN)
    std = np.float32(serving.IMAGENET_STD)
    rng = np.random.default_rng(0)
    for shape in [(9, 7, 3), (2, 9, 7, 3), (4, 4, 3), (9, 7, 3)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        want = (np.asarray(pixels, np.float32) / 255.0 - mean) / std
        got = serving.normalize(pixels)
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_array_equal(got, want)
