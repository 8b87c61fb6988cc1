"""configure_malloc: freed large blocks stay in the process, so a buffer the
size of a train step's temporaries is not faulted in again on every step."""

import json
import os

from resnext_jax.runtime import malloc
from train_helpers import run_python

_FAULTS = r"""
import ctypes, json, resource
from resnext_jax.runtime import malloc
configured = malloc.configure_malloc() if MODE == "on" else False
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


_RELEASE = r"""
import ctypes, json, resource
from resnext_jax.runtime import malloc
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20

def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

assert malloc.configure_malloc()
step()
kept = malloc.resident_bytes()
below = malloc.release_if_near_limit(limit_bytes=4 * kept)
faults_kept = step()
message = malloc.release_if_near_limit(fraction=0.5, limit_bytes=kept)
released = malloc.resident_bytes()
print(json.dumps(dict(
    below=below, faults_kept=faults_kept, message=message, kept=kept,
    released=released, configured=malloc.is_configured(),
    faults_after=step(), again=malloc.release_if_near_limit(limit_bytes=1))))
"""


def test_release_near_limit_returns_kept_memory_and_restores_defaults():
    r = json.loads(run_python(_RELEASE).strip().splitlines()[-1])
    assert r["below"] is None and r["faults_kept"] < 100, r
    # Over the limit: the 256 MiB block kept after free goes back to the
    # system, and later large blocks are mmap-ed and faulted in again.
    assert "back to glibc's default malloc" in r["message"], r
    assert r["kept"] - r["released"] > 200 << 20, r
    assert r["configured"] is False and r["again"] is None, r
    assert r["faults_after"] > 30_000, r


def test_release_does_nothing_unless_configured():
    if malloc.is_configured():  # Another test of this process set it.
        malloc.restore_default_malloc()
    assert malloc.release_if_near_limit(limit_bytes=1) is None
    assert malloc.restore_default_malloc() is False


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_memory_limit_v1_v2_and_none(tmp_path):
    v2 = "0::/job\n"
    v1 = "4:memory:/job\n3:cpu,cpuacct:/job\n"
    assert malloc._cgroup_limit_bytes(tmp_path, v2 + v1) is None  # No files.
    _write(tmp_path / "job" / "memory.max", "max\n")
    _write(tmp_path / "memory" / "job" / "memory.limit_in_bytes",
           "9223372036854771712\n")
    assert malloc._cgroup_limit_bytes(tmp_path, v2 + v1) is None  # Unlimited.
    _write(tmp_path / "job" / "memory.max", "8589934592\n")
    assert malloc._cgroup_limit_bytes(tmp_path, v2) == 8 << 30
    _write(tmp_path / "memory" / "job" / "memory.limit_in_bytes",
           "4294967296\n")
    assert malloc._cgroup_limit_bytes(tmp_path, v2 + v1) == 4 << 30
    # v2 beside v1 is mounted at "unified"; a cgroup seen as "/" is the root.
    _write(tmp_path / "unified" / "memory.max", "1073741824\n")
    assert malloc._cgroup_limit_bytes(tmp_path, "0::/\n") == 1 << 30
    assert 0 < malloc.memory_limit_bytes() <= (
        os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


_TRAINER = r"""
import functools, json, sys, tempfile
from resnext_jax.runtime import malloc
from train import loop
from train_helpers import tiny_config
assert malloc.configure_malloc()
# A 1-byte limit: the first step is over it.
loop.release_if_near_limit = functools.partial(
    malloc.release_if_near_limit, limit_bytes=1)
summary = loop.train_and_evaluate(tiny_config(), tempfile.mkdtemp())
print("RESULT " + json.dumps(dict(configured=malloc.is_configured(),
                                  steps=summary["steps"])))
"""


def test_trainer_releases_kept_memory_near_the_limit():
    out = run_python(_TRAINER)
    assert out.count("back to glibc's default malloc") == 1, out
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result == dict(configured=False, steps=4), result
