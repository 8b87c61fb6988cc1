"""Bad files and values given to the library's commands: one clear error, no
wrong answer, and no lost answers for the good inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_variables, tiny_model
from PIL import Image

import resnext_jax as rx
from resnext_jax.inference import export
from resnext_jax.inference import predict
from resnext_jax.commands import predict as predict_command
from resnext_jax.inference import serving
from resnext_jax.commands import summary
from resnext_jax.commands import to_safetensors

TINY_KWARGS = json.dumps(
    {"stage_sizes": [1, 1, 1, 1], "cardinality": 4, "base_width": 4,
     "num_classes": 7})
SIZES = ["--resize-size", "40", "--crop-size", "32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    model = tiny_model()
    variables = random_variables(model, seed=3)
    weights = root / "tiny.safetensors"
    rx.weights.save_safetensors(variables, model, weights)
    return model, variables, str(weights), root


def _grey_ramp(height=48, width=40):
    """An 8-bit grey image with every level, and the same as 16-bit."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width), np.uint8)
    return pixels, pixels.astype(np.uint16) * 257  # 0xAB -> 0xABAB


def test_16_bit_png_reads_as_its_8_bit_twin(tmp_path, tiny):
    pixels8, pixels16 = _grey_ramp()
    path8, path16 = tmp_path / "g8.png", tmp_path / "g16.png"
    Image.fromarray(pixels8).save(path8)
    Image.fromarray(pixels16).save(path16)
    with Image.open(path16) as image:
        assert image.mode.startswith("I")  # PIL's 16-bit grey
    a = serving.load_image(path8, 40, 32)
    b = serving.load_image(path16, 40, 32)
    np.testing.assert_array_equal(a, b)
    model, variables, _, _ = tiny
    results = predict.predict_files(
        model, variables, [str(path8), str(path16)],
        [f"c{i}" for i in range(7)],
        preprocessing=rx.Preprocessing(resize_size=40, crop_size=32))
    first, second = (r["predictions"] for r in results)
    assert [p["index"] for p in first] == [p["index"] for p in second]
    np.testing.assert_allclose([p["probability"] for p in first],
                               [p["probability"] for p in second], atol=1e-6)


def test_served_model_refuses_integer_pixels(tmp_path, tiny):
    model, variables, _, _ = tiny
    path = tmp_path / "tiny.rxexport"
    export.save_exported(path, model, variables, image_size=32)
    served = serving.load(path)
    pixels = np.full((1, 32, 32, 3), 200, np.uint8)
    with pytest.raises(ValueError, match=r"floating point .*uint8"):
        served(pixels)
    with pytest.raises(ValueError, match=r"floating point .*int64"):
        served(pixels.astype(np.int64).tolist())
    assert served(pixels.astype(np.float32) / 255).shape == (1, 7)


def test_predict_answers_the_good_images_and_names_the_bad(
        tmp_path, tiny, capsys):
    _, _, weights, _ = tiny
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    folder = tmp_path / "folder"
    folder.mkdir()
    missing = tmp_path / "missing.png"
    paths = [str(p) for p in (truncated, good, text, folder, missing)]
    with pytest.raises(SystemExit) as exit_info:
        predict_command.main(["--model", "resnext50_32x4d", "--model-kwargs",
                      TINY_KWARGS, "--weights", weights, "--json", *SIZES,
                      *paths])
    assert "4 of 5 image(s) could not be read" in str(exit_info.value)
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["image"] for r in results] == paths
    assert "predictions" in results[1] and len(results[1]["predictions"]) == 5
    errors = {r["image"]: r.get("error", "") for r in results}
    assert "cannot be read as an image" in errors[str(truncated)]
    assert "cannot be read as an image" in errors[str(text)]
    assert "directory" in errors[str(folder)]
    assert "no such file" in errors[str(missing)]
    for path in (truncated, text, folder, missing):
        assert str(path) in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_damaged_safetensors_names_the_file(tmp_path, tiny, damage):
    _, _, weights, _ = tiny
    path = tmp_path / "damaged.safetensors"
    data = open(weights, "rb").read()
    path.write_bytes(os.urandom(4096) if damage == "random"
                     else data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"damaged\.safetensors.*not a "
                       r"readable \.safetensors"):
        rx.weights.read_state_dict(path)
    with pytest.raises(SystemExit, match=r"^error: .*damaged\.safetensors"):
        predict_command.main(["--model", "resnext50_32x4d", "--model-kwargs",
                      TINY_KWARGS, "--weights", str(path), "x.png"])


@pytest.mark.parametrize("damage", ["truncated", "random", "foreign_npz",
                                    "pickled"])
def test_damaged_export_is_one_clear_error(tmp_path, tiny, damage):
    model, variables, _, _ = tiny
    good = tmp_path / "good.rxexport"
    export.save_exported(good, model, variables, image_size=32)
    path = tmp_path / "bad.rxexport"
    if damage == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(5000))
    elif damage == "foreign_npz":
        with open(path, "wb") as f:
            np.savez(f, weights=np.zeros(3))
    else:
        with open(path, "wb") as f:
            np.savez(f, meta=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(ValueError) as info:
        serving.load(path)
    message = str(info.value)
    assert "bad.rxexport" in message and "not a readable" in message
    assert "pickle" not in message.lower()


def test_image_size_must_be_positive(capsys):
    model = rx.create_model("resnext50_32x4d")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"image_size \(=.*\) must be a "
                           "positive integer"):
            rx.models.count_macs(model, image_size=bad)
    with pytest.raises(ValueError, match="image_size"):
        rx.summarize(model, image_size=0)
    with pytest.raises(SystemExit):
        summary.main(["resnext50_32x4d", "--image-size", "0"])
    assert "--image-size (=0) must be a positive integer" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("field,value,rule", [
    ("dtype", "int8", "must be a floating type"),
    ("param_dtype", "int32", "must be a floating type"),
    ("dtype", "float9", "is not a dtype"),
    ("bn_epsilon", -1, "must be positive"),
    ("bn_epsilon", float("nan"), "must be a finite number"),
    ("bn_momentum", 1.5, r"must be in \[0, 1\]"),
])
def test_model_fields_that_cannot_be_right_are_refused(field, value, rule):
    with pytest.raises(ValueError, match=rf"{field} \(=.*\) {rule}"):
        rx.ResNeXt(**{field: value})


def test_predict_refuses_an_integer_dtype_in_one_line(tiny, capsys):
    _, _, weights, _ = tiny
    kwargs = json.dumps({**json.loads(TINY_KWARGS), "dtype": "int8"})
    with pytest.raises(SystemExit, match=r"^error: .*dtype \(=.*int8.*\) must "
                       "be a floating type"):
        predict_command.main(["--model", "resnext50_32x4d", "--model-kwargs", kwargs,
                      "--weights", weights, "x.png"])


def test_numpy_integers_are_integers():
    model = rx.ResNeXt(num_classes=np.int64(10), cardinality=np.int32(4),
                       stage_sizes=[np.int64(1)] * 4)
    assert model.num_classes == 10 and type(model.num_classes) is int
    assert model.stage_sizes == (1, 1, 1, 1)
    assert model == rx.ResNeXt(num_classes=10, cardinality=4,
                               stage_sizes=(1, 1, 1, 1))


def test_top_k_must_be_positive():
    logits = np.zeros((1, 10))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"k \(=.*\) must be a positive "
                           "integer"):
            serving.top_k(logits, bad)
    assert serving.top_k(logits, 20)[0].shape == (1, 10)
    assert serving.top_k(logits, np.int64(3))[0].shape == (1, 3)


def _sideways_photo(tmp_path, orientation):
    """A JPEG stored sideways with an EXIF orientation tag, and the same
    pixels turned upright, saved losslessly without a tag."""
    pixels = np.random.default_rng(orientation).integers(
        0, 256, (60, 90, 3), np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    tagged = tmp_path / f"o{orientation}.jpg"
    image.save(tagged, exif=exif, quality=95)
    turn = {3: Image.ROTATE_180, 6: Image.ROTATE_270, 8: Image.ROTATE_90}
    upright = tmp_path / f"o{orientation}_upright.png"
    with Image.open(tagged) as stored:
        stored.transpose(turn[orientation]).save(upright)
    return tagged, upright


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_wherever_a_file_is_loaded(
        tmp_path, tiny, orientation):
    tagged, upright = _sideways_photo(tmp_path, orientation)
    spec = rx.Preprocessing.imagenet(32)
    np.testing.assert_array_equal(spec.load_image(tagged),
                                  spec.load_image(upright))
    np.testing.assert_array_equal(serving.load_image(tagged, 40, 32),
                                  serving.load_image(upright, 40, 32))
    with Image.open(tagged) as image:  # An opened PIL image, as given.
        np.testing.assert_array_equal(spec(image), spec.load_image(upright))


def test_a_very_long_image_is_bounded_work(tmp_path):
    """A 1x20000 PNG resized to 256 high would be 5 million pixels wide
    (5.7 GB); only the center crop's source region is resized."""
    long = tmp_path / "long.png"
    Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (1, 20000), np.uint8)).save(long)
    # The peak resident memory of a fresh process (VmHWM; ru_maxrss would
    # include the parent's from before the exec).
    code = ("import re, sys; from resnext_jax.inference import serving; "
            "x = serving.load_image(sys.argv[1]); assert x.shape == "
            "(224, 224, 3), x.shape; print(re.search(r'VmHWM:\\s+(\\d+)', "
            "open('/proc/self/status').read()).group(1))")
    result = subprocess.run([sys.executable, "-c", code, str(long)],
                            capture_output=True, text=True, check=True)
    assert int(result.stdout) < 1024 * 1024, result.stdout  # KiB


@pytest.mark.parametrize("interpolation", serving.INTERPOLATIONS)
def test_cropping_before_resizing_gives_the_same_pixels(monkeypatch,
                                                        interpolation):
    image = Image.fromarray(np.random.default_rng(1).integers(
        0, 256, (30, 700, 3), np.uint8))
    whole = serving.resize_and_crop(image, 64, 56, interpolation)
    monkeypatch.setattr(serving, "MAX_RESIZED_PIXELS", 1)
    cropped_first = serving.resize_and_crop(image, 64, 56, interpolation)
    # PIL rounds the filter weights at the region's edges a little
    # differently: a level or two on a few pixels.
    difference = np.abs(whole.astype(int) - cropped_first)
    assert difference.max() <= 2 and np.mean(difference > 0) < 0.01


def test_serving_command_errors_are_one_line(tmp_path, tiny):
    model, variables, _, _ = tiny
    good = tmp_path / "m.rxexport"
    export.save_exported(good, model, variables, image_size=32)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    truncated = tmp_path / "t.rxexport"
    truncated.write_bytes(good.read_bytes()[:1000])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "resnext_jax.commands.serve", *map(
            str, args)], capture_output=True, text=True, cwd=tmp_path)

    for export_file, message in [(tmp_path / "missing.rxexport",
                                  "does not exist"),
                                 (truncated, "not a readable")]:
        result = serve(export_file, image)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and message in (
            result.stderr)
    result = serve(good, image, tmp_path / "missing.png", text)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.splitlines()[0] == str(image)  # Still answered.
    assert f"error: {tmp_path / 'missing.png'}: cannot be read" in (
        result.stderr)
    assert f"error: {text}: cannot be read" in result.stderr
    assert "2 of 3 image(s) could not be read" in result.stderr


@pytest.mark.parametrize("option", ["--top-k", "--batch-size"])
def test_predict_counts_must_be_positive(tiny, option, capsys):
    _, _, weights, _ = tiny
    with pytest.raises(SystemExit) as error:
        predict_command.main(["--model", "resnext50_32x4d", "--model-kwargs",
                      TINY_KWARGS, "--weights", weights, option, "0",
                      "x.png"])
    assert error.value.code == 2
    assert f"{option} (=0) must be at least 1" in capsys.readouterr().err


def test_labels_file_that_is_not_utf8_is_named(tiny, tmp_path):
    _, _, weights, _ = tiny
    labels = tmp_path / "labels.txt"
    labels.write_bytes("caf\xe9\n".encode("latin-1") * 7)
    with pytest.raises(SystemExit, match=r"^error: labels file .*labels\.txt"
                       r"' is not UTF-8 text \(byte 0xe9"):
        predict_command.main(["--model", "resnext50_32x4d", "--model-kwargs",
                      TINY_KWARGS, "--weights", weights, "--labels",
                      str(labels), "x.png"])


def test_output_piped_into_head_is_not_a_traceback():
    """``resnext-summary --list | head -1``: the reader leaves early (here
    before the first line is written)."""
    code = ("import sys; sys.argv = ['resnext-summary', '--list']; "
            "from resnext_jax.commands import summary; sys.exit(summary.main())")
    child = subprocess.Popen([sys.executable, "-c", code],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    child.stdout.close()
    errors = child.stderr.read()
    child.wait(timeout=120)
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, (
        errors)
    assert child.returncode == 141


@pytest.mark.parametrize("kind", ["whole_model", "truncated"])
def test_unreadable_torch_file_is_named_in_one_line(tmp_path, kind, capsys):
    torch = pytest.importorskip("torch")
    path = tmp_path / "bad.pth"
    if kind == "whole_model":
        torch.save(torch.nn.Linear(2, 3), path)  # Not a state dict.
        message = (r"refusing to unpickle the global torch\.nn\.modules\."
                   r"linear\.Linear.* model\.state_dict\(\)")
    else:
        torch.save(torch.nn.Linear(2, 3).state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
        message = "truncated .* download or save it again"
    with pytest.raises(ValueError, match=rf"bad\.pth.*{message}"):
        rx.weights.read_state_dict(path)
    with pytest.raises(SystemExit, match=rf"^error: .*bad\.pth.*{message}"):
        to_safetensors.main(["--model", "resnext50_32x4d", str(path),
                             str(tmp_path / "out.safetensors")])
    with pytest.raises(SystemExit, match=rf"^error: .*bad\.pth.*{message}"):
        predict_command.main(["--model", "resnext50_32x4d", "--weights", str(path),
                      "x.png"])
    assert not (tmp_path / "out.safetensors").exists()


def test_to_safetensors_never_overwrites_its_input(tiny, tmp_path, capsys):
    _, _, weights, _ = tiny
    original = open(weights, "rb").read()
    with pytest.raises(SystemExit):
        to_safetensors.main(["--model", "resnext50_32x4d", "--model-kwargs",
                             TINY_KWARGS, weights, weights])
    assert "is the input src" in capsys.readouterr().err
    assert open(weights, "rb").read() == original
