"""``python -m train --config configs/X.py --workdir DIR``.

With no arguments, trains ``configs/default.py`` in ``./workdir/default``.
Any config field can be overridden: ``--config.batch_size=64``.
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

import configs

# configs.__path__ works for an installed package and for a source checkout.
_DEFAULT_CONFIG = str(pathlib.Path(list(configs.__path__)[0]) / "default.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG,
    "Training config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Directory for checkpoints, metrics and summary (default: "
    "workdir/<config name>). An existing one is resumed.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and TFDS log every file operation at INFO.
        logging.set_verbosity(logging.WARNING)
    from train.loop import train_and_evaluate  # After flags: faster --help.

    config_file = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or str(
        pathlib.Path("workdir") / pathlib.Path(config_file).stem)
    train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
