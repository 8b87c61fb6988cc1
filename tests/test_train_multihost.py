"""Multi-process training: 2 processes x 2 CPU devices (gloo collectives)
train like 1 process x 4 devices on the same global batches."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from train.checkpoint import restore_for_inference
from train_helpers import REPO, run_python

_TRAIN = r"""
import sys
import train.__main__ as entry
from train import loop
from train_helpers import tiny_config
config = tiny_config(num_train_steps=3, **KWARGS)
entry.setup_process(config)  # Starts the distributed runtime.
summary = loop.train_and_evaluate(config, WORKDIR)
import jax
print("devices", jax.device_count(), "processes", jax.process_count(),
      "test_loss", summary["test_loss"])
"""


def _code(workdir, **kwargs):
    return _TRAIN.replace("WORKDIR", repr(str(workdir))).replace(
        "**KWARGS", ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or
        "")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _params(workdir):
    _, variables, _ = restore_for_inference(workdir, "latest")
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(variables)[0]}


@pytest.mark.slow  # About a minute: three interpreters compile the step.
def test_two_processes_equal_one_process_with_four_devices(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=2")
    address = f"localhost:{_free_port()}"
    children = [subprocess.Popen(
        [sys.executable, "-c", _code(tmp_path / "multi",
                                     coordinator_address=address,
                                     num_processes=2, process_id=i)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(2)]
    outs = []
    try:
        for child in children:
            outs.append(child.communicate(timeout=300)[0])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, out in zip(children, outs):
        assert child.returncode == 0, out[-4000:]
        assert "devices 4 processes 2" in out
    single = run_python(_code(tmp_path / "single"), devices=4)
    assert "devices 4 processes 1" in single
    # Process 0 alone writes the run files and metrics.
    assert (tmp_path / "multi" / "summary.json").is_file()
    multi, one = _params(tmp_path / "multi"), _params(tmp_path / "single")
    assert set(multi) == set(one)
    for key in one:
        np.testing.assert_allclose(multi[key], one[key], rtol=2e-4,
                                   atol=2e-5, err_msg=key)
    loss = lambda out: float(out.split("test_loss")[1].split()[0])
    assert loss(outs[0]) == pytest.approx(loss(single), rel=1e-4)
    assert loss(outs[0]) == loss(outs[1])
