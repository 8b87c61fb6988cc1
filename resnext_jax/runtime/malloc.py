"""glibc malloc settings under which XLA:CPU reuses its memory across steps.

XLA:CPU allocates each executable's temporary buffer (2.6 GiB for a
ResNeXt-50 train step at batch 16) anew on every call. glibc serves blocks
that large with ``mmap`` and returns them to the kernel on ``free``, so every
step page-faults and zeroes all of that memory again: about 730,000 minor
page faults, a fifth of the step's time. Keeping freed memory in the process
(one arena, no ``mmap`` for large blocks, no trimming) removes them all:
the train step gets 20-35% faster. The price is memory: one arena that
never shrinks usually ends up holding two copies of that buffer (ResNeXt-50
at batch 16: 6.4 GiB peak resident against 4.1 GiB), sometimes three.
XLA:CPU frees a step's buffer on its worker thread just after it signals
the step's outputs, so the next step, started by those outputs, allocates
its buffer before the last one is back; and a small allocation that lands
in the freed buffer's hole leaves it too small for the next step. So it is
a choice: ``RESNEXT_JAX_MALLOC=off`` reverts it, and
`release_if_near_limit` (the trainer calls it after every step)
reverts it by itself before the memory kept for speed can get the process
killed.

Entry points (the trainer, ``resnext-predict``, ``resnext-export``, the
benchmarks) call `configure_malloc` before jax starts its threads;
importing the library changes nothing. ``RESNEXT_JAX_MALLOC=off`` leaves
malloc alone. The same settings, as environment variables for any process:
``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import pathlib
import sys

ENV_VAR = "RESNEXT_JAX_MALLOC"

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# glibc's defaults for the two settings configure_malloc changes and
# restore_default_malloc puts back (mallopt(3)).
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024

# release_if_near_limit's default: the share of the memory the process may
# use (the machine's, or its cgroup's) above which kept memory is released.
MEMORY_FRACTION = 0.8
# Where the cgroup hierarchies are mounted.
_CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")

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


def is_configured() -> bool:
    """True while `configure_malloc`'s settings are in effect."""
    return _configured


def restore_default_malloc() -> bool:
    """Puts glibc's defaults back for large blocks (``mmap``, trimming) and
    hands the free memory the process kept back to the system; True if
    `configure_malloc` had been in effect. The single arena stays:
    glibc cannot undo it, and it costs no memory."""
    global _configured
    if not _configured:
        return False
    libc = _libc()
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)
    _configured = False
    return True


def resident_bytes() -> int:
    """The process's resident memory now (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cgroup_limit_bytes(root: pathlib.Path, cgroups: str) -> int | None:
    """The lowest memory limit among this process's cgroups (``cgroups`` is
    the text of ``/proc/self/cgroup``; v2's ``memory.max``, v1's
    ``memory.limit_in_bytes``, under the hierarchy mounted at ``root``);
    None if there is none."""
    files = []
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if not controllers:  # cgroup v2, alone or beside v1 ("unified").
            files += [root / path / "memory.max",
                      root / "unified" / path / "memory.max"]
        elif "memory" in controllers.split(","):
            files.append(root / "memory" / path / "memory.limit_in_bytes")
    limits = []
    for file in files:
        try:
            text = file.read_text().strip()
        except OSError:
            continue
        # v2 writes "no limit" as "max", v1 as a number near 2**63.
        if text.isdigit() and int(text) < 2**60:
            limits.append(int(text))
    return min(limits, default=None)


def memory_limit_bytes() -> int:
    """The memory this process may use: the machine's, or its container's
    (cgroup) limit where that is lower."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        cgroups = pathlib.Path("/proc/self/cgroup").read_text()
    except OSError:
        return physical
    cgroup = _cgroup_limit_bytes(_CGROUP_ROOT, cgroups)
    return min(physical, cgroup) if cgroup else physical


@functools.lru_cache(maxsize=1)
def _process_limit_bytes() -> int:
    # Read once: release_if_near_limit runs after every step.
    return memory_limit_bytes()


def release_if_near_limit(fraction: float = MEMORY_FRACTION,
                          limit_bytes: int | None = None) -> str | None:
    """Under `configure_malloc`, once the process's resident memory
    passes ``fraction`` of ``limit_bytes`` (default
    `memory_limit_bytes`), goes back to glibc's defaults
    (`restore_default_malloc`), so that freed memory kept for speed
    never pushes the process out of memory. Returns a line saying so when
    it did, else None. Cheap (one read of ``/proc/self/statm``): call it
    after every step.
    """
    if not _configured:
        return None
    if limit_bytes is None:
        limit_bytes = _process_limit_bytes()
    resident = resident_bytes()
    if resident <= fraction * limit_bytes:
        return None
    restore_default_malloc()
    return (f"malloc: resident memory {resident / 2**30:.1f} GiB is over "
            f"{fraction:.0%} of the {limit_bytes / 2**30:.1f} GiB this "
            f"process may use; back to glibc's default malloc, which returns "
            f"freed memory (now {resident_bytes() / 2**30:.1f} GiB resident; "
            f"slower steps on CPU). RESNEXT_JAX_MALLOC=off starts there.")
