"""Input pipelines: the embedded digits, TFDS data sets and image folders.

``create_data_source(config)`` gives the :class:`DataSource` a config names,
read by the engine ``config.data_engine`` resolves to (train/data/engines.py):
tf.data or Grain. Each engine's modules are imported only when it is used:
with Grain, the process never loads TensorFlow.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np
from resnext_jax import Preprocessing

from train.config_validation import dataset_family
from train.data.digits import create_digits_source
from train.data.engines import resolve_engine
from train.data.source import Batch, DataError, DataSource

__all__ = ("Batch", "DataError", "DataSource", "create_data_source",
           "hide_accelerators_from_tensorflow", "inject_nonfinite",
           "needs_tensorflow", "resolve_engine")


def needs_tensorflow(config: ml_collections.ConfigDict) -> bool:
    """Whether the config's data come through tf.data."""
    if dataset_family(config.dataset) == "digits":
        return False
    try:
        return resolve_engine(config) == "tf"
    except (ValueError, DataError):
        return False  # Reported, with the fix, when the source is built.


def hide_accelerators_from_tensorflow() -> None:
    """TensorFlow only feeds data: keep it off the GPUs, which JAX owns.

    A process-wide effect, for the entry point (before JAX allocates)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.set_visible_devices([], "GPU")


def create_data_source(config: ml_collections.ConfigDict,
                       process_index: int | None = None,
                       process_count: int | None = None, *,
                       preprocessing: Preprocessing | None = None
                       ) -> DataSource:
    """The data set named by ``config.dataset``, sharded for this host.

    ``preprocessing`` (a pretrained source's, at ``config.image_size``)
    replaces the eval spec and normalization of image data sets; the digits
    keep their own (8x8 arrays, not image files)."""
    process_index = (jax.process_index() if process_index is None
                     else process_index)
    process_count = (jax.process_count() if process_count is None
                     else process_count)
    engine = resolve_engine(config)
    if engine == "digits":
        return create_digits_source(config, process_index, process_count)
    # pylint: disable=import-outside-toplevel
    if engine == "grain":
        from train.data import grain_pipelines
        source = grain_pipelines.create_grain_source(
            config, process_index, process_count, preprocessing)
    else:
        from train.data import tf_pipelines
        source = tf_pipelines.create_tf_source(config, process_index,
                                               process_count, preprocessing)
    source.engine = engine
    return source


def inject_nonfinite(batches: Iterator[Batch], start_step: int,
                     bad_steps) -> Iterator[Batch]:
    """Replaces the images of the batches of steps ``bad_steps`` (1-based,
    as logged) with NaNs: how tests exercise the non-finite guard."""
    bad_steps = set(int(s) for s in bad_steps)
    for step, batch in enumerate(batches, start_step + 1):
        if step in bad_steps:
            batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        yield batch
