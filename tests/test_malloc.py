"""configure_malloc: freed large blocks stay in the process, so a buffer the
size of a train step's temporaries is not faulted in again on every step."""

import json

from resnext_jax import malloc
from train_helpers import run_python

_FAULTS = r"""
import ctypes, json, resource
import resnext_jax
configured = resnext_jax.configure_malloc() if MODE == "on" else False
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
print(json.dumps(dict(configured=configured, faults=faults)))
"""


def _faults(mode):
    out = run_python(_FAULTS.replace("MODE", repr(mode)))
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
