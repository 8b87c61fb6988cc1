"""Helpers shared by the training-program tests."""

import os
import pathlib
import subprocess
import sys

from configs.default import get_config

REPO = pathlib.Path(__file__).resolve().parent.parent



def tiny_config(**overrides):
    """The default (digits) config shrunk to a 1-1-1 ResNeXt with 4 groups,
    8x8 images and a few steps: compiles and runs in seconds."""
    config = get_config()
    config.model_kwargs.cardinality = 4
    config.model_kwargs.base_width = 2
    config.image_size = 8
    config.batch_size = 16
    config.eval_batch_size = 64
    config.num_train_steps = 4
    config.warmup_epochs = 0.0
    return short_run(config, **overrides)


def short_run(config, **overrides):
    """``config`` logging every step, with no periodic eval or checkpoint
    and no progress bar (a test's few steps), then ``overrides``."""
    config.log_every_steps = 1
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.progress_bar = False
    for key, value in overrides.items():
        config[key] = value
    return config


def run_python(code: str, devices: int = 1, timeout: int = 300):
    """Runs ``code`` in a fresh interpreter with ``devices`` CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result.stdout
