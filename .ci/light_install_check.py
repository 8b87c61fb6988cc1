"""Checks a virtual environment made by a plain ``pip install .``.

Run with that environment's interpreter, isolated (``-I``) and outside the
checkout: the library's commands work, the training stack is not
installed, and ``train``/``configs`` are not importable.
"""

import importlib.metadata
import importlib.util
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

import resnext_jax as rx
from resnext_jax import _native
from resnext_jax.inference import resample

# tqdm is not listed: the library downloads weights with a progress bar.
ABSENT = ("train", "configs", "tensorflow", "tensorflow_datasets", "sklearn",
          "matplotlib", "tensorboardX", "ml_collections", "torch")
present = [m for m in ABSENT if importlib.util.find_spec(m) is not None]
assert not present, f"installed without extras: {present}"
# Nor oneDNN (the [onednn] extra): conv_impl="onednn" still runs, on the
# portable lowering, and says why in one line.
for dist in ("onednn-cpu-gomp", "onednn-devel-cpu-gomp", "onednn"):
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        continue
    raise AssertionError(f"installed without extras: {dist}")
assert "not installed" in rx.layers.onednn.unavailable_reason()
# The eval spec's native resize needs no extra: its source ships with the
# package and is built with the system's compiler.
try:
    _native.find_compiler("the native resize")
except _native.BuildError:
    pass  # No compiler: Pillow resizes, as the library says.
else:
    assert resample.unavailable_reason() is None, \
        resample.unavailable_reason()

bin_dir = pathlib.Path(sys.executable).parent
with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    model = rx.ResNeXt(stage_sizes=(1, 1, 1), stem="cifar", cardinality=2,
                       base_width=2, num_classes=3)
    variables = rx.init_variables(model, 0, image_size=16)
    images = np.ones((1, 16, 16, 3), np.float32)
    np.testing.assert_allclose(
        model.clone(conv_impl="onednn").apply(variables, images, train=False),
        model.apply(variables, images, train=False), atol=1e-5)
    rx.save_pretrained(tmp / "bundle", model, variables,
                       class_names=["a", "b", "c"],
                       preprocessing=rx.Preprocessing.cifar(16))
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp / "x.png")
    for command in (
            ["resnext-predict", "--workdir", "bundle", "--json", "x.png"],
            ["resnext-export", "--workdir", "bundle", "m.rxexport"],
            ["resnext-serve", "m.rxexport", "x.png"],
            ["resnext-summary", "resnext29_32x4d"]):
        subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=tmp,
                       check=True, stdout=subprocess.DEVNULL)
print(f"light install: resnext_jax {rx.__version__} predict, export, serve "
      "and summary work; no training stack, no train/configs.")
