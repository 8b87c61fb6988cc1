"""Malloc settings: a buffer the size of a train step's temporaries is not
faulted in again in 4 KiB pages on every step (configure_malloc keeps it in
the process; restart_with_huge_pages has it come back in 2 MiB pages)."""

import json

import pytest

from resnext_jax import malloc
from train_helpers import run_python

_FAULTS = r"""
import ctypes, json, resource
import resnext_jax
if MODE == "huge":
    resnext_jax.restart_with_huge_pages()  # Re-executes this very program.
configured = resnext_jax.configure_malloc() if MODE != "off" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20  # Like XLA's temporary buffer of one executable.

def step():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # The step writes its buffer.
    libc.free(block)

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
import jax.numpy as jnp  # jax still works under these settings.
assert float(jnp.ones((512, 512)).sum()) == 512 * 512
print(json.dumps(dict(configured=configured, faults=faults,
                      huge=resnext_jax.malloc.huge_pages_in_effect())))
"""


def _faults(mode, env=None):
    # Started without the huge-pages tunable, whatever this process has.
    env = dict({"GLIBC_TUNABLES": ""}, **(env or {}))
    out = run_python(_FAULTS.replace("MODE", repr(mode)), env=env)
    return json.loads(out.strip().splitlines()[-1])


def test_freed_large_blocks_are_reused_not_faulted_in_again():
    on, off = _faults("on"), _faults("off")
    assert on["configured"] is True  # This machine runs glibc.
    # 256 MiB of fresh pages is 65,536 faults of 4 KiB, on every step.
    assert off["faults"] > 30_000, off
    assert on["faults"] < 100, on


def test_off_switch(monkeypatch):
    monkeypatch.setenv(malloc.ENV_VAR, "off")
    assert malloc.configure_malloc() is False


@pytest.mark.skipif(not malloc.huge_pages_available(),
                    reason="needs glibc >= 2.35 and THP mode always/madvise")
def test_restart_with_huge_pages_faults_in_2_mib_pages():
    huge = _faults("huge")
    assert huge["huge"] is True and huge["configured"] is True, huge
    # The block goes back to the kernel on free (no second copy kept), and
    # comes back as 128 pages of 2 MiB instead of 65,536 of 4 KiB.
    assert huge["faults"] < 2_000, huge


def test_restart_is_off_with_the_off_switch():
    off = _faults("huge", env={malloc.ENV_VAR: "off"})
    assert off["huge"] is False and off["configured"] is False, off
    assert off["faults"] > 30_000, off
