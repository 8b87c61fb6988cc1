"""Which input-pipeline engine reads a config's data: tf.data or Grain.

``config.data_engine``: "tf", "grain", or "auto" (the default): the first
of :data:`AUTO_ORDER` that is installed and can run the config. Imports
neither engine: a machine without TensorFlow trains from an image folder
with Grain, and the process never loads TensorFlow.
"""

from __future__ import annotations

import importlib.util

from train.config_validation import DATA_ENGINES as ENGINES
from train.config_validation import ConfigError, dataset_family
from train.data.source import DataError

# "auto"'s preference where both are installed, by kind of data set. Set
# by measurement (benchmarks/bench_input.py, docs/performance.md): the
# faster per CPU core on the train pipeline of an image folder of JPEGs.
# TFDS data sets are usually prepared as TFRecord, which only tf.data reads.
AUTO_ORDER = {"folder": ("tf", "grain"), "tfds": ("tf", "grain")}
# What each engine needs importable.
_MODULES = {"tf": ("tensorflow", "tensorflow_datasets"), "grain": ("grain",)}
_INSTALL = {"tf": "pip install -e '.[train]' (tensorflow-cpu and "
                  "tensorflow-datasets)",
            "grain": "pip install grain"}
# Config fields only the tf.data engine applies, with their "off" values.
TF_ONLY_FIELDS = {"auto_augment": "", "random_erase": 0.0}


def installed(engine: str, family: str = "folder") -> bool:
    """Whether ``engine``'s modules can be imported (Grain reads TFDS data
    sets through tensorflow_datasets too). Nothing is imported."""
    modules = _MODULES[engine]
    if engine == "grain" and family != "folder":
        modules += ("tensorflow_datasets",)
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return False
        except (ImportError, ValueError):  # A blocked or broken module.
            return False
    return True


def _kind(config) -> str:
    return "folder" if dataset_family(config.dataset) == "folder" else "tfds"


def tf_only_settings(config) -> list[str]:
    """``"field=value"`` of each set field that only tf.data applies."""
    return [f"config.{field}={config[field]!r}"
            for field, off in TF_ONLY_FIELDS.items()
            if field in config and config[field] != off]


def resolve_engine(config) -> str:
    """"tf" or "grain" for an image data set, "digits" for the digits (in
    memory, neither). Raises :class:`ConfigError` for an engine that cannot
    run the config, :class:`DataError` for one that is not installed."""
    family = dataset_family(config.dataset)
    if family == "digits":
        return "digits"
    wanted = config.get("data_engine", "auto")
    if wanted not in ENGINES:
        raise ConfigError(f"config.data_engine (={wanted!r}) must be one of "
                          f"{ENGINES}.")
    if wanted == "grain" and tf_only_settings(config):
        raise ConfigError(
            f"config.data_engine (='grain') does not apply "
            f"{', '.join(tf_only_settings(config))}: only the tf.data "
            "engine does; set config.data_engine='tf' or 'auto', or turn "
            "them off.")
    if wanted != "auto":
        if not installed(wanted, family):
            raise DataError(
                f"config.data_engine (={wanted!r}) needs "
                f"{' and '.join(_MODULES[wanted])}, which this Python cannot "
                f"import: {_INSTALL[wanted]}, or set config.data_engine="
                "'auto' to use the engine that is installed.")
        return wanted
    for engine in AUTO_ORDER[_kind(config)]:
        if engine == "grain" and tf_only_settings(config):
            continue
        if installed(engine, family):
            return engine
    if tf_only_settings(config) and installed("grain", family):
        raise DataError(
            f"{', '.join(tf_only_settings(config))} need(s) the tf.data "
            f"engine, which is not installed: {_INSTALL['tf']}.")
    raise DataError(
        f"no input pipeline for config.dataset (={config.dataset!r}) is "
        f"installed: {_INSTALL['tf']}, or {_INSTALL['grain']}"
        + (" (image folders)." if family == "folder" else
           " with tensorflow-datasets."))
