"""The commands keep compiled programs in jax's persistent cache."""

import os
import subprocess
import sys

import jax
from conftest import random_variables, tiny_model
from PIL import Image
import numpy as np

import resnext_jax as rx
from resnext_jax.runtime import compilation_cache

KWARGS = ('{"stage_sizes": [1, 1, 1, 1], "cardinality": 4, "base_width": 4, '
          '"num_classes": 7}')


def _cached_files(folder):
    return sorted(p for p in os.listdir(folder))


def test_predict_fills_the_cache_and_reuses_it(tmp_path):
    model = tiny_model()
    weights = tmp_path / "tiny.safetensors"
    rx.weights.save_safetensors(random_variables(model, seed=1), model, weights)
    image = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    cache = tmp_path / "cache"
    env = dict(os.environ, RESNEXT_JAX_CACHE_DIR=str(cache))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    command = [sys.executable, "-m", "resnext_jax.commands.predict", "--model",
               "resnext50_32x4d", "--model-kwargs", KWARGS, "--weights",
               str(weights), "--resize-size", "40", "--crop-size", "32",
               str(image)]
    first = subprocess.run(command, env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    entries = _cached_files(cache)
    assert entries  # the inference program, at least
    second = subprocess.run(command, env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout == first.stdout
    assert _cached_files(cache) == entries  # nothing new was compiled


def test_cache_setting_is_left_to_the_user(tmp_path, monkeypatch):
    # Other tests of this session may have set a cache: start from none.
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        _check_cache_settings(tmp_path, monkeypatch)
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def _check_cache_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_JAX_CACHE_DIR", "off")
    assert compilation_cache.enable_compilation_cache() is None
    monkeypatch.setenv("RESNEXT_JAX_CACHE_DIR", str(tmp_path / "c"))
    assert compilation_cache.default_cache_dir() == tmp_path / "c"
    # An unwritable place leaves the cache off instead of failing.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert compilation_cache.enable_compilation_cache(blocker / "sub") is None
    assert jax.config.jax_compilation_cache_dir in (None, "")
