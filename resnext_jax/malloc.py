"""glibc malloc settings under which XLA:CPU reuses its memory across steps.

XLA:CPU allocates each executable's temporary buffer (2.6 GiB for a
ResNeXt-50 train step at batch 16) anew on every call. glibc serves blocks
that large with ``mmap`` and returns them to the kernel on ``free``, so every
step page-faults and zeroes all of that memory again: about 730,000 minor
page faults, a fifth of the step's time. Keeping freed memory in the process
(one arena, no ``mmap`` for large blocks, no trimming) removes them all:
the train step gets 20-35% faster. The price is memory: one arena that
never shrinks ends up holding two copies of that buffer (ResNeXt-50 at
batch 16: 6.4 GiB peak resident against 4.1 GiB), so it is a choice, and
``RESNEXT_JAX_MALLOC=off`` reverts it.

Entry points (the trainer, ``resnext-predict``, ``resnext-export``, the
benchmarks) call :func:`configure_malloc` before jax starts its threads;
importing the library changes nothing. ``RESNEXT_JAX_MALLOC=off`` leaves
malloc alone. The same settings, as environment variables for any process:
``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_VAR = "RESNEXT_JAX_MALLOC"

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_configured = False


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has no such mallopt.
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError):
        return None


def configure_malloc() -> bool:
    """Sets glibc's malloc to keep and reuse freed memory; True if it did.

    Call it before the first jax computation (jax's threads get their
    arenas when they first allocate). Does nothing, and returns False, off
    glibc or with ``RESNEXT_JAX_MALLOC=off``. Calling it twice is harmless.
    """
    global _configured
    if os.environ.get(ENV_VAR, "").lower() in ("off", "0", "none"):
        return False
    if _configured:
        return True
    libc = _libc()
    if libc is None:
        return False
    # -1 as the trim threshold is SIZE_MAX inside glibc: never trim.
    ok = (libc.mallopt(_M_ARENA_MAX, 1) == 1
          and libc.mallopt(_M_MMAP_MAX, 0) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1)
    _configured = ok
    return ok
