"""Experiment configs: one ``get_config()`` file per experiment.

``configs/default.py`` trains offline on scikit-learn's handwritten digits.
"""

import pathlib

CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def config_path(name: str = "default") -> str:
    """Path of the named config file (``"default"`` -> ``.../default.py``)."""
    return str(CONFIG_DIR / f"{name.removesuffix('.py')}.py")
