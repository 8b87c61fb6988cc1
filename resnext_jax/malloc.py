"""glibc malloc settings under which XLA:CPU's step buffers are cheap.

XLA:CPU allocates each executable's temporary buffer (2.6 GiB for a
ResNeXt-50 train step at batch 16) anew on every call. glibc serves blocks
that large with ``mmap`` and returns them to the kernel on ``free``, so every
step page-faults and zeroes all of that memory again in 4 KiB pages: about
750,000 minor page faults, a fifth of the step's time.

Two remedies, best first:

* Transparent huge pages for malloc's memory (glibc's tunable
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc 2.35 or newer, with the
  kernel's THP mode ``always`` or ``madvise``): the buffer still goes back
  to the kernel after each step, but comes back in 2 MiB pages, about 2,300
  faults a step. Measured as fast as the second remedy, with one copy of
  the buffer resident (ResNeXt-50 at batch 16: 4.4 GiB peak). A tunable is
  read only when a process starts, so :func:`restart_with_huge_pages`
  re-executes the command with it set.
* Otherwise, :func:`configure_malloc` keeps freed memory in the process (one
  arena, no ``mmap`` for large blocks, no trimming): no faults at all, but
  an arena that never shrinks can end up holding two copies of the buffer
  (6.4-6.9 GiB peak).

Entry points (``python -m train``, ``resnext-predict``, ``resnext-export``,
the benchmarks) call both before jax starts its threads: the restart when
run as a command, then :func:`configure_malloc`, which leaves malloc alone
when huge pages are in effect. Importing the library changes nothing.
``RESNEXT_JAX_MALLOC=off`` turns both off. The same settings, as
environment variables for any process: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``,
or ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_VAR = "RESNEXT_JAX_MALLOC"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"

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


def _turned_off() -> bool:
    return os.environ.get(ENV_VAR, "").lower() in ("off", "0", "none")


def huge_pages_in_effect() -> bool:
    """Whether this process was started with malloc asking for
    transparent huge pages."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return HUGE_PAGES_TUNABLE in tunables.split(":")


def huge_pages_available() -> bool:
    """Whether malloc can ask for transparent huge pages here: glibc 2.35
    or newer, and the kernel's THP mode ``always`` or ``madvise``."""
    libc = _libc()
    if libc is None:
        return False
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    version = libc.gnu_get_libc_version().decode()
    try:
        if tuple(int(part) for part in version.split(".")[:2]) < (2, 35):
            return False
        with open(_THP_MODE_FILE, encoding="ascii") as f:
            mode = f.read()
    except (OSError, ValueError):
        return False
    return "[always]" in mode or "[madvise]" in mode


def restart_with_huge_pages() -> None:
    """Re-executes this command with malloc asking for transparent huge
    pages, when it can and has not yet; otherwise returns.

    For a program's entry point, run as a command, before it does any
    work: the process is replaced (same PID, arguments, environment and
    open files) and starts over. Does nothing with
    ``RESNEXT_JAX_MALLOC=off``, when huge pages are unavailable or already
    in effect, or when Python does not know its command line.
    """
    argv = getattr(sys, "orig_argv", None)
    if (_turned_off() or huge_pages_in_effect() or not argv
            or not huge_pages_available()):
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(
        t for t in (env.get("GLIBC_TUNABLES"), HUGE_PAGES_TUNABLE) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def configure_malloc() -> bool:
    """Sets glibc's malloc so that XLA:CPU's step buffers are cheap; True
    if they are (huge pages in effect, or these settings applied).

    Without huge pages, malloc keeps and reuses freed memory. Call it before
    the first jax computation (jax's threads get their arenas when they
    first allocate). Does nothing, and returns False, off glibc or with
    ``RESNEXT_JAX_MALLOC=off``. Calling it twice is harmless.
    """
    global _configured
    if _turned_off():
        return False
    if huge_pages_in_effect() and huge_pages_available():
        return True  # Freed buffers go back to the kernel; faults are few.
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
