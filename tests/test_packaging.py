"""What ``pip install resnext_jax`` brings: the library alone, light.

The wheel holds ``resnext_jax`` only (``train/`` and ``configs/`` run from
the checkout) and requires none of the training stack; the library's
commands run with the training stack unimportable.
"""

import email
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# The trainer's dependencies (and torch), none of which the library may
# need. (optax, orbax and absl come with flax itself; tqdm is the
# library's own, for download progress.)
TRAINING_STACK = ("tensorflow", "tensorflow_datasets", "sklearn",
                  "matplotlib", "tensorboardX", "ml_collections", "torch",
                  "torchvision", "timm", "grain")
TRAINING_DISTS = ("tensorflow", "tensorflow-cpu", "tensorflow-datasets",
                  "scikit-learn", "matplotlib", "tensorboardx",
                  "ml-collections", "torch", "torchvision", "timm", "grain")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ into the source tree, and
    # two test workers building the checkout at once would share it.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "resnext_jax", source / "resnext_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--no-build-isolation", "--quiet", "--wheel-dir", str(out),
         str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = list(out.glob("resnext_jax-*.whl"))
    assert len(wheels) == 1, wheels
    return zipfile.ZipFile(wheels[0])


def test_wheel_holds_the_library_only(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    packages = {t for t in tops if not t.endswith(".dist-info")}
    assert packages == {"resnext_jax"}
    assert "resnext_jax/data/imagenet_classes.txt" in wheel.namelist()
    # The oneDNN kernel's source, compiled on first use.
    assert "resnext_jax/layers/onednn/grouped_conv.cc" in wheel.namelist()


def test_wheel_requires_no_training_stack(wheel):
    meta_name = next(n for n in wheel.namelist()
                     if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(wheel.read(meta_name))
    import resnext_jax
    assert meta["Version"] == resnext_jax.__version__
    required = [r for r in meta.get_all("Requires-Dist")
                if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0]
             .split("<")[0].strip().lower() for r in required}
    assert {"jax", "flax", "flatbuffers", "numpy", "pillow",
            "safetensors"} <= names
    assert not names & set(TRAINING_DISTS), names
    # oneDNN comes with its extra only.
    assert not {n for n in names if n.startswith("onednn")}, names
    extras = set(meta.get_all("Provides-Extra"))
    assert {"train", "torch", "onednn", "dev"} <= extras
    scripts = next(n for n in wheel.namelist()
                   if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(scripts).decode()
    for command in ("resnext-predict", "resnext-export", "resnext-summary",
                    "resnext-to-safetensors"):
        assert command in text


# Run in an isolated interpreter (-I: no checkout, no PYTHONPATH on the
# path) from outside the repository, with the training stack made
# unimportable: weights -> predict -> export -> serving.
_LIGHT = r"""
import importlib.abc, json, subprocess, sys
BLOCKED = set(json.loads(sys.argv[1]))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
out = {}
for name in ("train", "configs"):
    try:
        __import__(name)
        out[name] = "imported"
    except ImportError:
        out[name] = "absent"
import numpy as np
from PIL import Image
import resnext_jax as rx
from resnext_jax.inference import export
from resnext_jax.commands import export as export_command
from resnext_jax.inference import predict
from resnext_jax.commands import predict as predict_command
from resnext_jax.inference import serving
model = rx.ResNeXt(stage_sizes=(1, 1, 1), stem="cifar", cardinality=2,
                   base_width=2, num_classes=3)
variables = rx.init_variables(model, 0, image_size=16)
rx.save_pretrained("bundle", model, variables, class_names=["a", "b", "c"],
                   preprocessing=rx.Preprocessing.cifar(16))
Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save("x.png")
predict_command.main(["--workdir", "bundle", "--json", "x.png"])
export_command.main(["--workdir", "bundle", "m.rxexport"])
loaded = serving.load("m.rxexport")
out["serving"] = serving.top_k(loaded(loaded.load_image("x.png")[None]))[1]\
    .tolist()
out["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


def test_library_runs_without_the_training_stack(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-I", "-c", _LIGHT, json.dumps(TRAINING_STACK)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["train"] == "absent" and out["configs"] == "absent"
    assert len(out["serving"][0]) == 3
    assert out["leaked"] == []
    assert '"predictions"' in result.stdout
