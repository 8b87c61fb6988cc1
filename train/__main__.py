"""``python -m train --config configs/X.py --workdir DIR``.

With no arguments, trains ``configs/default.py`` in ``./workdir/default``.
Any config field can be overridden: ``--config.batch_size=64``.

Exit status: 0 when the run completes or stops at ``num_train_steps``; 143
after SIGTERM (preemption) and 130 after Ctrl-C, with a checkpoint saved:
run the same command to resume (a second Ctrl-C aborts at once, also 130);
2 with a one-line ``error:`` for a bad command line (an unknown config
field, a missing config file, a value of the wrong type); 1 with a
one-line ``error:`` for a bad config value, too many non-finite steps, a
workdir that is not usable, in use, of another run, or with no readable
checkpoint.

Run from the repository's root (``train/`` and ``configs/`` are not
installed). This file is the only place with process-wide effects: logging
verbosity, TensorFlow's devices, JAX's distributed runtime.
"""

import errno
import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
_DEFAULT_CONFIG = str(_CONFIGS / "default.py")
# Exit status of a bad command line (as argparse's).
_EXIT_USAGE = 2


def _fail(message: str, status: int = 1):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _unknown_field(error: Exception) -> str:
    """ml_collections' "no such key" error as one line with the fix."""
    text = str(error.args[0]) if error.args else str(error)
    text = text.replace("\\n", "\n").replace("\\'", "'")
    found = re.search(r"'([\w.]+)'", text)
    hint = re.search(r'Did you mean "([\w.]+)"', text)
    field = found.group(1) if found else text.strip()
    return (f"the config has no field {field!r}"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
            + f"; every field is listed in {_CONFIGS / 'base.py'}.")


try:
    # Parses the --config.<field> overrides of sys.argv right here.
    _CONFIG = config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG,
        "Training config file (configs/*.py).", lock_config=True)
except (AttributeError, KeyError) as _error:
    _fail(_unknown_field(_error), _EXIT_USAGE)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Directory for checkpoints, metrics and summary (default: "
    "workdir/<config name>). An existing one is resumed.")


def setup_process(config) -> None:
    """The process-wide effects of a run, before anything touches a device:
    TensorFlow (which only feeds data) kept off the accelerators, JAX's
    distributed runtime started when the config or environment asks, and
    JAX's persistent compilation cache on (a restarted run compiles nothing;
    RESNEXT_JAX_CACHE_DIR moves it or turns it off), and, on CPU, malloc set to reuse
    XLA:CPU's step buffers (RESNEXT_JAX_MALLOC=off leaves it alone)."""
    from resnext_jax.runtime import prepare_process  # pylint: disable=import-outside-toplevel
    from train import data, distributed  # pylint: disable=import-outside-toplevel

    prepare_process()
    if data.needs_tensorflow(config):
        data.hide_accelerators_from_tensorflow()
    distributed.initialize(config)


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag as one ``error:`` line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}; see python -m train --helpfull.", _EXIT_USAGE)
    except Exception as e:  # An override loads the config file: it failed.
        _config_file_error(e, _config_path(argv))


def _config_path(argv) -> str:
    """The ``--config`` of a command line (absl has not parsed it yet)."""
    path = _DEFAULT_CONFIG
    for i, arg in enumerate(argv):
        if arg.startswith(("--config=", "-config=")):
            path = arg.split("=", 1)[1]
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def _config_file_error(error: Exception, path: str):
    """A config file that is missing or failed to load, in one line."""
    if not pathlib.Path(path).is_file():
        _fail(f"--config {path}: no such file; the configs are in "
              f"{_CONFIGS} (e.g. --config configs/default.py).", _EXIT_USAGE)
    cause = error
    while cause.__cause__ or cause.__context__:
        cause = cause.__cause__ or cause.__context__
    _fail(f"--config {path} failed to load: {type(cause).__name__}: "
          f"{' '.join(str(cause).split())}", _EXIT_USAGE)


def _load_config():
    try:
        config = _CONFIG.value
        config.get("dataset")  # A file that failed to load raises here.
        return config
    except Exception as e:  # ml_collections: the file failed to load.
        _config_file_error(e, flags.FLAGS["config"].config_filename)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and TFDS log every file operation at INFO.
        logging.set_verbosity(logging.WARNING)
    # After flags: faster --help.
    from train.checkpoint import CheckpointError
    from train.config_validation import ConfigError
    from train.data import DataError
    from train.data.image_check import BadImageError
    from train.loop import train_and_evaluate
    from train.nonfinite import NonFiniteError
    from train.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
    from train.workdir import ConfigMismatchError, WorkdirError

    config = _load_config()
    setup_process(config)
    config_file = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or str(
        pathlib.Path("workdir") / pathlib.Path(config_file).stem)
    try:
        summary = train_and_evaluate(config, workdir)
    except KeyboardInterrupt:  # Before the first step, or a second Ctrl-C.
        _fail(f"interrupted (Ctrl-C): {workdir} keeps its last checkpoint; "
              "run the same command to resume.", EXIT_INTERRUPTED)
    except (ConfigError, BadImageError, DataError, FileNotFoundError,
            NonFiniteError, ConfigMismatchError, CheckpointError,
            WorkdirError) as e:
        _fail(str(e))
    except OSError as e:  # Metrics, run files: a full disk, in one line.
        if e.errno != errno.ENOSPC:
            raise
        _fail(f"no space left on {e.filename or workdir}; free space, then "
              "run the same command to resume.")
    if summary["preempted"]:
        sys.exit(EXIT_INTERRUPTED if summary.get("stop_signal") == "SIGINT"
                 else EXIT_PREEMPTED)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
