"""``python -m train --config configs/X.py --workdir DIR``.

With no arguments, trains ``configs/default.py`` in ``./workdir/default``.
Any config field can be overridden: ``--config.batch_size=64``.

Exit status: 0 when the run completes or stops at ``num_train_steps``; 143
after SIGTERM (preemption), with a checkpoint saved: run the same command to
resume; 1 with a one-line error for too many non-finite steps, a workdir of
another model/data set, or a workdir with no readable checkpoint.

Run from the repository's root (``train/`` and ``configs/`` are not
installed). This file is the only place with process-wide effects: logging
verbosity, TensorFlow's devices, JAX's distributed runtime.
"""

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent.parent /
                      "configs" / "default.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG,
    "Training config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Directory for checkpoints, metrics and summary (default: "
    "workdir/<config name>). An existing one is resumed.")


def setup_process(config) -> None:
    """The process-wide effects of a run, before anything touches a device:
    TensorFlow (which only feeds data) kept off the accelerators, and JAX's
    distributed runtime started when the config or environment asks."""
    from train import data, distributed  # pylint: disable=import-outside-toplevel

    if data.needs_tensorflow(config):
        data.hide_accelerators_from_tensorflow()
    distributed.initialize(config)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and TFDS log every file operation at INFO.
        logging.set_verbosity(logging.WARNING)
    # After flags: faster --help.
    from train.checkpoint import CheckpointError
    from train.loop import train_and_evaluate
    from train.nonfinite import NonFiniteError
    from train.preemption import EXIT_PREEMPTED
    from train.workdir import ConfigMismatchError

    config = _CONFIG.value
    setup_process(config)
    config_file = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or str(
        pathlib.Path("workdir") / pathlib.Path(config_file).stem)
    try:
        summary = train_and_evaluate(config, workdir)
    except (NonFiniteError, ConfigMismatchError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    if summary["preempted"]:
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    app.run(main)
