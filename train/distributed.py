"""Starting JAX's distributed runtime for a multi-process (multi-host) run.

Must run before anything touches a device. One process per host (TPU pod)
or per GPU/host (GPU cluster); every process runs the same program.
"""

from __future__ import annotations

import os

import jax
import ml_collections


def settings(config: ml_collections.ConfigDict) -> dict | None:
    """``jax.distributed.initialize`` arguments from config, then environment;
    None for a single-process run."""
    address = config.coordinator_address or os.environ.get(
        "JAX_COORDINATOR_ADDRESS", "")
    num = config.num_processes
    if num < 0 and os.environ.get("JAX_NUM_PROCESSES"):
        num = int(os.environ["JAX_NUM_PROCESSES"])
    pid = config.process_id
    if pid < 0 and os.environ.get("JAX_PROCESS_ID"):
        pid = int(os.environ["JAX_PROCESS_ID"])
    if address or num > 0:
        if not (address and num > 0 and 0 <= pid < num):
            raise ValueError(
                "a multi-process run needs config.coordinator_address "
                f"(={address!r}), config.num_processes (={num}) and "
                f"config.process_id (={pid}, must be in [0, num_processes)),"
                " or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                "JAX_PROCESS_ID.")
        return {"coordinator_address": address, "num_processes": num,
                "process_id": pid}
    if config.multihost:
        return {}  # JAX detects TPU pods, SLURM and Open MPI itself.
    return None


def initialize(config: ml_collections.ConfigDict) -> None:
    """Starts the runtime if ``config``/environment ask for it (once).

    A process-wide effect: the entry point calls it, before anything touches
    a device.
    """
    kwargs = settings(config)
    if kwargs is None or jax.distributed.is_initialized():
        return
    # CPU processes need a collectives backend to talk to each other; GPU
    # and TPU runs ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def check_initialized(config: ml_collections.ConfigDict) -> None:
    """Raises ``RuntimeError`` when the config asks for a multi-process run
    that was not started (a run would otherwise train alone, silently)."""
    if settings(config) is not None and not jax.distributed.is_initialized():
        raise RuntimeError(
            "the config (or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/"
            "JAX_PROCESS_ID) asks for a multi-process run, but JAX's "
            "distributed runtime is not started: call "
            "train.distributed.initialize(config) first (python -m train "
            "does).")
