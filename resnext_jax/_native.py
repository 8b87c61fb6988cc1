"""Compiling a C++ file into a shared library on first use.

The library goes into the user's cache (``$RESNEXT_JAX_KERNEL_DIR``, else
``~/.cache/resnext_jax/kernels``), named by a hash of everything that went
into it (source, compiler, flags, and what the caller adds), so that an
upgrade of any of them builds a new one and a second process builds nothing.
A plain ``pip install resnext_jax`` ships sources only: users without a
compiler keep the portable code path.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Callable, Iterable

from resnext_jax._files import cache_path

# Where built libraries are kept.
CACHE_ENV = "RESNEXT_JAX_KERNEL_DIR"
COMPILE_TIMEOUT_S = 300


class BuildError(RuntimeError):
    """A library cannot be built here; the message says why."""


def find_compiler(what: str) -> str:
    """``$CXX``, else the system's ``c++``, ``g++`` or ``clang++``."""
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate:
            path = shutil.which(candidate)
            if path:
                return path
    raise BuildError(f"no C++ compiler found (set CXX, or install g++) to "
                     f"build {what}")


def cache_dir() -> pathlib.Path:
    """``$RESNEXT_JAX_KERNEL_DIR``, else ``$XDG_CACHE_HOME/resnext_jax/
    kernels`` (``~/.cache/resnext_jax/kernels``)."""
    return cache_path(CACHE_ENV, "kernels")


def _compiler_identity(compiler: str) -> str:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BuildError(
            f"the C++ compiler {compiler!r} does not run: {err}") from None
    return out.stdout.splitlines()[0] if out.stdout else compiler


def _compile(command: list[str], what: str) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"compiling {what} took over {COMPILE_TIMEOUT_S} "
                         "s") from None
    except OSError as err:
        raise BuildError(f"compiling {what} failed: {err}") from None
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines()
                  if "error" in line] or result.stderr.splitlines()
        raise BuildError(f"compiling {what} failed: "
                         + " | ".join(errors[:3])[:600])


def build(name: str, source: pathlib.Path,
          command: Callable[[str, str], list[str]], what: str,
          identity: Iterable[str] = ()) -> pathlib.Path:
    """The shared library ``<name>-<hash>.so`` built from ``source``,
    compiled now unless the cache has it.

    ``command(compiler, output)`` is the compile command; ``identity`` adds
    what else the build depends on (library versions); ``what`` names the
    library in errors. Raises `BuildError` with the reason.
    """
    compiler = find_compiler(what)
    digest = hashlib.sha256()
    for part in (source.read_bytes(), _compiler_identity(compiler).encode(),
                 " ".join(command(compiler, "out")).encode(),
                 *(str(p).encode() for p in identity)):
        digest.update(part)
        digest.update(b"\0")
    cache = cache_dir()
    target = cache / f"{name}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BuildError(
            f"cannot create the kernel cache {str(cache)!r}: {err}") from None
    try:
        import fcntl  # pylint: disable=import-outside-toplevel  (POSIX only)
    except ImportError:
        raise BuildError(f"building {what} needs a POSIX system") from None
    try:
        # One build at a time (test workers, several processes starting at
        # once); the others find the library when they get the lock.
        with open(cache / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                return target
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so.tmp")
            os.close(fd)
            try:
                _compile(command(compiler, tmp), what)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except OSError as err:
        raise BuildError(f"building {what} in {str(cache)!r} failed: "
                         f"{err}") from None
    return target
