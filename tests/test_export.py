"""jax.export serialization, and reloading without the model code."""

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
from resnext_jax.inference import export
from resnext_jax.commands import export as export_command
from resnext_jax.inference import serving
from resnext_jax._files import umask_mode

SERVING_PY = pathlib.Path(serving.__file__)
SIZE = 64

# Runs in a fresh interpreter: loads serving.py by path (not as part of the
# package), runs two batch sizes, reports which modules were imported.
_RELOAD_SCRIPT = """
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("standalone", sys.argv[1])
serving = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serving)
model = serving.load(sys.argv[2])
images = np.load(sys.argv[3])
np.save(sys.argv[4], np.asarray(model(images[:1])))
np.save(sys.argv[5], np.asarray(model(images)))
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model()
    return model, random_variables(model, seed=5)


def _logits(model, variables, images):
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables,
                                                             images))


def test_reload_without_model_code_any_batch_size(tiny, tmp_path):
    model, variables = tiny
    path = tmp_path / "tiny.rxexport"
    meta = export.save_exported(path, model, variables, platforms="cpu,cuda",
                            image_size=SIZE, class_names=list("abcdefg"))
    assert meta["platforms"] == ["cpu", "cuda"]
    images = np.random.default_rng(0).normal(
        size=(3, SIZE, SIZE, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    out1, out3 = tmp_path / "out1.npy", tmp_path / "out3.npy"
    result = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, str(SERVING_PY), str(path),
         str(tmp_path / "images.npy"), str(out1), str(out3)],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    modules = json.loads(result.stdout.splitlines()[-1])
    assert "jax" in modules
    leaked = [m for m in modules if m.split(".")[0] in ("resnext_jax",
                                                        "flax")]
    assert not leaked
    expected = _logits(model, variables, images)
    logits1, logits3 = np.load(out1), np.load(out3)
    assert logits1.shape == (1, 7) and logits3.shape == (3, 7)
    np.testing.assert_allclose(logits1, expected[:1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits3, expected, atol=1e-4, rtol=0)


def test_batch_dimension_is_symbolic(tiny):
    model, variables = tiny
    exported, weights = export.export_model(model, variables, image_size=SIZE)
    images = exported.in_avals[-1]
    assert not isinstance(images.shape[0], int)  # symbolic
    assert images.shape[1:] == (SIZE, SIZE, 3)
    assert len(weights) == len(jax.tree.leaves(variables))
    assert exported.platforms == ("cpu",)


def test_serving_checks_image_shape_and_format(tiny, tmp_path):
    model, variables = tiny
    path = tmp_path / "tiny.rxexport"
    export.save_exported(path, model, variables, image_size=SIZE)
    loaded = serving.load(path)
    assert loaded.meta["image_size"] == SIZE
    assert loaded.meta["resize_size"] == round(SIZE * 256 / 224)
    assert loaded.class_names == []
    with pytest.raises(ValueError, match=r"\(N, 64, 64, 3\)"):
        loaded(np.zeros((1, 32, 32, 3), np.float32))
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.frombuffer(b'{"format": "x"}', np.uint8))
    with pytest.raises(ValueError, match="format 'x'"):
        serving.load(other)


@pytest.mark.parametrize("platforms,match", [
    ("gpu", "'cuda'"), ("cpu,metal", "'metal'"), ("", "at least one")])
def test_bad_platforms(platforms, match):
    with pytest.raises(ValueError, match=match):
        export.check_platforms(platforms)


def test_bad_arguments(tiny, tmp_path):
    model, variables = tiny
    with pytest.raises(ValueError, match="image_size"):
        export.export_model(model, variables, image_size=0)
    with pytest.raises(ValueError, match="num_classes=7"):
        export.save_exported(tmp_path / "x", model, variables, image_size=SIZE,
                         class_names=["a", "b"])


def test_export_command_then_serving_script(tiny, tmp_path, capsys):
    """The documented path: export from a weights file, serve it with
    resnext-serve on an image file."""
    model, variables = tiny
    weights = tmp_path / "tiny.safetensors"
    rx.weights.save_safetensors(variables, model, weights)
    out = tmp_path / "tiny.rxexport"
    export_command.main(["--model", "resnext50_32x4d", "--model-kwargs",
                 '{"stage_sizes": [1, 1, 1, 1], "cardinality": 4, '
                 '"base_width": 4}', "--weights", str(weights),
                 "--image-size", str(SIZE), str(out)])
    assert "7 classes" in capsys.readouterr().out
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(
        0, 256, (90, 70, 3), np.uint8)).save(image)
    result = subprocess.run(
        [sys.executable, "-m", "resnext_jax.commands.serve", str(out),
         str(image)],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0] == str(image) and len(lines) == 6
    probs = [float(line.split()[0]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    # Same top class as the model itself on the same preprocessing.
    pixels = serving.load_image(image, round(SIZE * 256 / 224), SIZE)
    expected = _logits(model, variables, pixels[None])[0]
    assert lines[1].split()[1] == f"class_{int(np.argmax(expected))}"


_TINY_ARGS = ["--model", "resnext50_32x4d", "--model-kwargs",
              '{"stage_sizes": [1, 1, 1, 1], "cardinality": 4, '
              '"base_width": 4}', "--image-size", str(SIZE)]


def test_export_never_overwrites_its_input_or_a_stranger(tiny, tmp_path,
                                                         capsys):
    model, variables = tiny
    weights = tmp_path / "w.safetensors"
    rx.weights.save_safetensors(variables, model, weights)
    original = weights.read_bytes()
    with pytest.raises(SystemExit) as refused:
        export_command.main([*_TINY_ARGS, "--weights", str(weights), str(weights)])
    assert refused.value.code == 2
    assert "is the --weights input" in capsys.readouterr().err
    assert weights.read_bytes() == original
    # A file that is not an export is not replaced; a directory is refused.
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    for out, message in [(other, "is not a resnext_jax export"),
                         (tmp_path, "is a directory")]:
        with pytest.raises(SystemExit, match=message):
            export_command.main([*_TINY_ARGS, "--weights", str(weights), str(out)])
    assert other.read_text() == "mine"
    # An earlier export is replaced whole, with the umask's permissions.
    out = tmp_path / "m.rxexport"
    export_command.main([*_TINY_ARGS, "--weights", str(weights), str(out)])
    export_command.main([*_TINY_ARGS, "--weights", str(weights), str(out)])
    assert export.is_export(out)
    assert out.stat().st_mode & 0o777 == umask_mode(0o666)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.rxexport", "notes.txt", "w.safetensors"]


def _grouped_convs(mlir_text: str, groups: int) -> int:
    return mlir_text.count(f"feature_group_count = {groups} ")


@pytest.mark.parametrize("platforms", [("cuda",), ("tpu",), ("cpu", "cuda")])
def test_plain_jax_export_keeps_native_grouped_convs_for_accelerators(
        platforms):
    """A user's own jax.export (not ours) from this CPU host gets the
    accelerator's lowering: all 16 grouped 3x3s of ResNeXt-50 stay native."""
    model = rx.create_model("resnext50_32x4d")
    variables = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1, 224, 224, 3))))
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    exported = jax.export.export(fn, platforms=platforms)(
        variables, jax.ShapeDtypeStruct((2, 224, 224, 3), np.float32))
    native = _grouped_convs(exported.mlir_module(), 32)
    if platforms == ("cpu", "cuda"):
        # Both branches are in the module; jax may stage a conv once per
        # platform inside the accelerator branch.
        assert native >= 16 and native % 16 == 0
    else:
        assert native == 16


def test_multi_platform_export_runs_the_cpu_lowering_on_cpu(tiny):
    model, variables = tiny
    exported, weights = export.export_model(
        model, variables, platforms=("cpu", "cuda"), image_size=SIZE)
    assert _grouped_convs(exported.mlir_module(), model.cardinality) > 0
    images = np.random.default_rng(1).normal(
        size=(2, SIZE, SIZE, 3)).astype(np.float32)
    call = jax.jit(exported.call)
    hlo = call.lower(weights, images).compile().as_text()
    assert "feature_group_count=4" not in hlo  # dense on CPU
    np.testing.assert_allclose(call(weights, images),
                               _logits(model, variables, images),
                               atol=1e-4, rtol=0)
