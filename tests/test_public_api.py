"""The public surface: a small top-level API, subpackages that show the
architecture, and process-wide settings kept to the entry points."""

import ast
import subprocess
import sys

import pytest

import resnext_jax as rx
from resnext_jax.runtime import setup


def test_the_top_level_names_are_few_and_all_exist():
    assert 12 <= len(rx.__all__) <= 16
    for name in rx.__all__:
        assert getattr(rx, name) is not None, name
    # What `import resnext_jax` shows, in a fresh interpreter.
    code = ("import resnext_jax as rx; "
            "print(' '.join(n for n in dir(rx) if not n.startswith('_')))")
    public = set(subprocess.run([sys.executable, "-c", code], check=True,
                                capture_output=True, text=True).stdout.split())
    assert public == set(rx.__all__) | {"inference", "layers", "models",
                                        "weights"}


def test_the_library_imports_no_command_and_no_process_setting():
    code = ("import sys, resnext_jax, resnext_jax.nnx; "
            "import resnext_jax.inference.serving; "
            "print('\\n'.join(sorted(sys.modules)))")
    modules = subprocess.run([sys.executable, "-c", code], check=True,
                             capture_output=True, text=True).stdout.split()
    ours = [m for m in modules if m.startswith("resnext_jax")]
    assert "resnext_jax.weights.pretrained" in ours
    assert not [m for m in ours if m.startswith(("resnext_jax.commands",
                                                 "resnext_jax.runtime"))]


def test_the_serving_runtime_imports_nothing_from_the_library():
    tree = ast.parse(open(rx.inference.serving.__file__,
                          encoding="utf-8").read())
    imported = [alias.name for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)]
    assert "numpy" in imported
    assert not [m for m in imported if m and m.startswith("resnext_jax")]


@pytest.mark.parametrize("platforms, cpu", [("cpu", True), ("cuda", False),
                                            ("tpu,cpu", False),
                                            ("CPU", True)])
def test_malloc_settings_apply_only_where_the_backend_is_the_cpu(
        monkeypatch, platforms, cpu):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    calls = []
    monkeypatch.setattr(setup, "configure_malloc", lambda: calls.append(1))
    monkeypatch.setattr(setup, "enable_compilation_cache", lambda: None)
    assert setup.backend_will_be_cpu() is cpu
    setup.prepare_process()
    assert calls == ([1] if cpu else [])


def test_without_platforms_an_installed_accelerator_plugin_decides(
        monkeypatch):
    monkeypatch.setattr(setup, "_platforms_setting", lambda: "")
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: (
        object() if name == "jax_cuda12_plugin" else real_find_spec(name)))
    assert setup.backend_will_be_cpu() is False
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    plugins = [n for n in setup._ACCELERATOR_PLUGINS
               if real_find_spec(n) is not None]
    assert setup.backend_will_be_cpu() is not bool(plugins)
