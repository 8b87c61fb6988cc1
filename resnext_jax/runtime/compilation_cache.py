"""JAX's persistent compilation cache, on by default for this package's
commands, so that a second run of the same program compiles nothing.

Entry points (``resnext-predict``, ``resnext-export``, the benchmarks, the
trainer) call `enable_compilation_cache` before their first jit;
importing the library changes no jax setting.
"""

from __future__ import annotations

import os
import pathlib

import jax

from resnext_jax._files import cache_path

# Where the cache lives unless the user says otherwise.
ENV_VAR = "RESNEXT_JAX_CACHE_DIR"


def default_cache_dir() -> pathlib.Path:
    """``$RESNEXT_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/resnext_jax/xla``
    (``~/.cache/resnext_jax/xla``)."""
    return cache_path(ENV_VAR, "xla")


def enable_compilation_cache(path: str | os.PathLike | None = None
                             ) -> pathlib.Path | None:
    """Turns on jax's persistent compilation cache; returns its folder.

    A cache folder the user already gave jax (``JAX_COMPILATION_CACHE_DIR``
    or ``jax.config``) is kept. ``path=""`` or ``RESNEXT_JAX_CACHE_DIR=off``
    leaves the cache off. An unwritable folder leaves it off too: a cache is
    never a reason for a command to fail.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return pathlib.Path(current)
    if path is None:
        if os.environ.get(ENV_VAR, "").lower() in ("off", "0", "none"):
            return None
        path = default_cache_dir()
    if not str(path):
        return None
    path = pathlib.Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every program that took a moment to compile (jax's default is
    # 1 s, which leaves the many small programs of a command uncached).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return path
