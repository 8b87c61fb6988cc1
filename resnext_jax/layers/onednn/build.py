"""Builds the oneDNN kernel on first use, loads it and registers it with XLA.

The kernel (``grouped_conv.cc`` beside this file) is compiled with the
system's C++ compiler against the oneDNN that the ``resnext_jax[onednn]``
extra installs (the ``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp``
wheels: the library and its headers) and against jax's own XLA FFI headers.
The shared library goes into the user's cache, named by a hash of everything
that went into it (source, compiler, oneDNN, jax; see `resnext_jax._native`),
so an upgrade of any of them builds a new one and a second process builds
nothing.

Why not a prebuilt binary in the wheel: the kernel has to match the
installed jaxlib's FFI headers and the installed oneDNN, and ``pip install
resnext_jax`` alone must stay a pure-Python install that pulls neither.

Why this oneDNN build: the ``onednn`` wheel (2026.x) is oneDNN's SYCL
build: its CPU engine needs an OpenCL CPU runtime and brings about 2 GB of
Intel runtimes, and it threads with TBB. ``onednn-cpu-gomp`` is the plain
CPU build (one 55 MB library, threads by OpenMP, which the kernel keeps to
one thread per call: see ``grouped_conv.cc``). Another oneDNN (an OpenMP or
sequential CPU build) can be used through ``RESNEXT_JAX_ONEDNN_ROOT``.

Every failure (no oneDNN, no compiler, a compile error, a library that does
not load) raises `KernelUnavailable` with the reason; the caller falls back
to the portable lowering.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.metadata
import os
import pathlib
import sys
import threading

import jax

from resnext_jax import _native

SOURCE = pathlib.Path(__file__).with_name("grouped_conv.cc")
# The wheels the extra installs: the shared library, and the headers.
LIBRARY_DIST = "onednn-cpu-gomp"
HEADERS_DIST = "onednn-devel-cpu-gomp"
INSTALL_HINT = "pip install 'resnext_jax[onednn]'"
# A oneDNN installed otherwise: a prefix with include/oneapi/dnnl/dnnl.hpp
# and lib/libdnnl.so.
ROOT_ENV = "RESNEXT_JAX_ONEDNN_ROOT"
# "off" never builds nor loads the kernel (the portable lowering runs).
SWITCH_ENV = "RESNEXT_JAX_ONEDNN"
# Where built kernels are kept (default: ~/.cache/resnext_jax/kernels).
CACHE_ENV = _native.CACHE_ENV
# The FFI targets: XLA's name for each, and the symbol in the library.
TARGETS = {
    "resnext_onednn_conv_fwd": "ResnextOnednnConvFwd",
    "resnext_onednn_conv_bwd_data": "ResnextOnednnConvBwdData",
    "resnext_onednn_conv_bwd_weights": "ResnextOnednnConvBwdWeights",
}


class KernelUnavailable(RuntimeError):
    """The oneDNN kernel cannot be built or loaded here; the message says
    why."""


@dataclasses.dataclass(frozen=True)
class OneDnn:
    """Where a oneDNN installation's headers and library are."""
    include_dir: pathlib.Path
    lib_dir: pathlib.Path
    version: str


def _dist_file(dist: importlib.metadata.Distribution,
               suffix: str) -> pathlib.Path | None:
    """The installed file of ``dist`` whose resolved path ends with
    ``suffix`` (the wheels' data files are recorded as ``../../lib/...``
    relative to site-packages)."""
    name = suffix.rsplit("/", 1)[-1]
    for file in dist.files or ():
        if file.name != name:
            continue
        path = pathlib.Path(dist.locate_file(file)).resolve()
        if path.as_posix().endswith(suffix) and path.exists():
            return path
    return None


def find_onednn() -> OneDnn:
    """The oneDNN to build against: ``$RESNEXT_JAX_ONEDNN_ROOT``, else the
    wheels of the ``[onednn]`` extra."""
    root = os.environ.get(ROOT_ENV)
    if root:
        root = pathlib.Path(root).expanduser()
        include, lib = root / "include", root / "lib"
        if not (include / "oneapi" / "dnnl" / "dnnl.hpp").exists() or not (
                any(lib.glob("libdnnl.so*"))):
            raise KernelUnavailable(
                f"{ROOT_ENV}={str(root)!r} holds no oneDNN: it needs "
                "include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so")
        return OneDnn(include, lib, f"root:{root}")
    try:
        library = importlib.metadata.distribution(LIBRARY_DIST)
        headers = importlib.metadata.distribution(HEADERS_DIST)
    except importlib.metadata.PackageNotFoundError as missing:
        raise KernelUnavailable(
            f"oneDNN is not installed: no {missing.name}; {INSTALL_HINT}"
        ) from None
    hpp = _dist_file(headers, "include/oneapi/dnnl/dnnl.hpp")
    lib = _dist_file(library, "lib/libdnnl.so")
    if hpp is None or lib is None:
        raise KernelUnavailable(
            f"the {LIBRARY_DIST}/{HEADERS_DIST} installation is incomplete "
            "(no dnnl.hpp or libdnnl.so); reinstall it")
    return OneDnn(hpp.parents[2], lib.parent, library.version)


def find_compiler() -> str:
    """``$CXX``, else the system's ``c++``, ``g++`` or ``clang++``."""
    try:
        return _native.find_compiler("the oneDNN kernel")
    except _native.BuildError as err:
        raise KernelUnavailable(str(err)) from None


def kernel_cache_dir() -> pathlib.Path:
    """Where built kernels are kept (see `resnext_jax._native.cache_dir`)."""
    return _native.cache_dir()


def _command(onednn: OneDnn, compiler: str, output: str) -> list[str]:
    return [
        compiler, "-O2", "-std=c++17", "-shared", "-fPIC",
        f"-I{jax.ffi.include_dir()}", f"-I{onednn.include_dir}",
        str(SOURCE), "-o", output,
        f"-L{onednn.lib_dir}", "-ldnnl",
        # Found at load time without LD_LIBRARY_PATH. An RPATH rather than a
        # RUNPATH, so that it also finds libdnnl's own dependencies there.
        f"-Wl,-rpath,{onednn.lib_dir}", "-Wl,--disable-new-dtags",
    ]


def build() -> pathlib.Path:
    """The kernel's shared library, compiled now unless the cache has it."""
    onednn = find_onednn()
    try:
        return _native.build("resnext_onednn_conv", SOURCE,
                             functools.partial(_command, onednn),
                             "the oneDNN kernel",
                             identity=(onednn, jax.__version__))
    except _native.BuildError as err:
        raise KernelUnavailable(str(err)) from None


class Kernel:
    """The loaded library: its FFI targets are registered with XLA:CPU, and
    `probe` asks oneDNN whether it can run a convolution."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        try:
            self._lib = ctypes.CDLL(str(path))
        except OSError as err:
            raise KernelUnavailable(
                f"the oneDNN kernel {path.name} does not load: {err}"
            ) from None
        self._probe = self._lib.resnext_onednn_probe
        self._probe.restype = ctypes.c_int
        self._probe.argtypes = [ctypes.c_int, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_int64),
                                ctypes.c_char_p, ctypes.c_int64]
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(
                name, jax.ffi.pycapsule(getattr(self._lib, symbol)),
                platform="cpu")

    @functools.lru_cache(maxsize=None)
    def probe(self, kind: int, bfloat16: bool,
              dims: tuple[int, ...]) -> tuple[bool, str]:
        """``(True, oneDNN's implementation)`` if oneDNN makes primitive
        ``kind`` (0 forward, 1 input gradient, 2 kernel gradient) for the
        convolution ``dims`` (see ``resnext_onednn_probe``), else ``(False,
        why not)``."""
        message = ctypes.create_string_buffer(1024)
        status = self._probe(kind, int(bfloat16),
                             (ctypes.c_int64 * len(dims))(*dims), message,
                             len(message))
        return status == 0, message.value.decode(errors="replace")


_lock = threading.Lock()
_kernel: Kernel | None = None
_failure: str | None = None


def load() -> Kernel:
    """The kernel, built and loaded on the first call of the process.

    Raises `KernelUnavailable` (the same reason on every later call) where it
    cannot be had: ``RESNEXT_JAX_ONEDNN=off``, not Linux, no oneDNN, no
    compiler, a failed build or load.
    """
    global _kernel, _failure
    with _lock:
        if _kernel is None and _failure is None:
            try:
                if os.environ.get(SWITCH_ENV, "").lower() in ("off", "0"):
                    raise KernelUnavailable(f"{SWITCH_ENV}=off")
                if not sys.platform.startswith("linux"):
                    raise KernelUnavailable(
                        f"the kernel is built for Linux only, not "
                        f"{sys.platform}")
                _kernel = Kernel(build())
            except KernelUnavailable as err:
                _failure = str(err)
        if _kernel is None:
            raise KernelUnavailable(_failure)
        return _kernel


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used here (building it if needed), or
    ``None`` where it can."""
    try:
        load()
    except KernelUnavailable as err:
        return str(err)
    return None
