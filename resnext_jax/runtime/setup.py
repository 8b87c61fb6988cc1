"""What an entry point does to its process before the first jit."""

from __future__ import annotations

import importlib.util
import os

from resnext_jax.runtime.compilation_cache import enable_compilation_cache
from resnext_jax.runtime.malloc import configure_malloc

# Modules whose presence means jax will pick an accelerator by default.
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin",
                        "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def _platforms_setting() -> str:
    """``JAX_PLATFORMS``, or jax's ``jax_platforms`` option; "" if unset."""
    import jax  # pylint: disable=import-outside-toplevel
    return os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""


def backend_will_be_cpu() -> bool:
    """Whether jax's default backend will be the CPU, decided without
    starting a backend (which would start the threads that malloc settings
    must precede): the platforms setting when there is one, else whether a
    GPU or TPU plugin is installed."""
    platforms = _platforms_setting()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(importlib.util.find_spec(name) is not None
                   for name in _ACCELERATOR_PLUGINS)


def prepare_process(*, malloc: bool = True, compilation_cache: bool = True
                    ) -> None:
    """The settings every entry point applies: malloc set to reuse XLA:CPU's
    step buffers, only where the backend is the CPU (``RESNEXT_JAX_MALLOC=off``
    leaves it alone), and jax's persistent compilation cache on
    (``RESNEXT_JAX_CACHE_DIR`` moves it or turns it off)."""
    if malloc and backend_will_be_cpu():
        configure_malloc()
    if compilation_cache:
        enable_compilation_cache()
