"""scikit-learn's handwritten digits: 1,797 8x8 grey images, 10 classes,
shipped inside the package (offline), held in memory."""

from __future__ import annotations

from typing import Iterator

import ml_collections
import numpy as np
from resnext_jax import Preprocessing

from train.config_validation import ConfigError, check_batch_fits
from train.data.source import (Batch, DataSource, local_batch_size,
                               num_eval_steps, padded_eval_batches, seed_for)


def load_digits_arrays(test_fraction: float = 0.2, seed: int = 0):
    """Stratified train/test split of sklearn's digits as uint8-like floats.

    The split is fixed (``seed``), independent of the training seed, so the
    test set is the same for every run.
    """
    from sklearn.datasets import load_digits  # Only this source needs it.
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # [0, 1]
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed,
        stratify=labels)
    return (x_train, y_train), (x_test, y_test)


def create_digits_source(config: ml_collections.ConfigDict,
                         process_index: int, process_count: int
                         ) -> DataSource:
    """The digits, upscaled by pixel repetition to ``config.image_size``."""
    (x_train, y_train), (x_test, y_test) = load_digits_arrays()
    size = config.image_size
    if size % 8:  # Also refused by validate_config, before anything runs.
        raise ConfigError(f"config.image_size (={size}) must be a multiple "
                          "of 8 for the 8x8 digits (they are upscaled by "
                          "pixel repetition), e.g. 8, 16 or 32.")
    mean, std = float(x_train.mean()), float(x_train.std())

    def prepare(images):
        images = (images - mean) / std
        factor = size // 8
        images = images.repeat(factor, 1).repeat(factor, 2)
        return np.repeat(images[..., None], 3, axis=-1)

    train_images, test_images = prepare(x_train), prepare(x_test)
    global_batch = config.batch_size
    local = local_batch_size(global_batch, process_count, "batch_size")
    check_batch_fits(config, len(y_train), "'digits'")
    steps_per_epoch = len(y_train) // global_batch
    shift = max(1, size // 8)  # One source pixel.
    fill = float(train_images.min())  # The background, on every host.

    def train_batches(start_step: int) -> Iterator[Batch]:
        step = start_step
        while True:
            epoch, offset = divmod(step, steps_per_epoch)
            order = np.random.default_rng(
                seed_for(config.seed, epoch)).permutation(len(y_train))
            rows = order[offset * global_batch:(offset + 1) * global_batch]
            rows = rows[process_index * local:(process_index + 1) * local]
            images = train_images[rows]
            if config.augment:
                # Offsets drawn for the global batch, then sliced: any
                # number of processes sees the same augmented global batch.
                rng = np.random.default_rng(seed_for(config.seed, step))
                offsets = rng.integers(0, 2 * shift + 1, (2, global_batch))
                mine = offsets[:, process_index * local:
                               (process_index + 1) * local]
                images = random_shift(images, shift, *mine, fill=fill)
            yield {"image": images, "label": y_train[rows]}
            step += 1

    local_eval = local_batch_size(config.eval_batch_size, process_count,
                                  "eval_batch_size")
    n_eval_steps = num_eval_steps(len(y_test), config.eval_batch_size,
                                  process_count)

    def eval_batches() -> Iterator[Batch]:
        rows = np.array_split(np.arange(len(y_test)), process_count)[
            process_index]
        chunks = (rows[i:i + local_eval] for i in range(0, len(rows),
                                                         local_eval))
        return padded_eval_batches(
            ({"image": test_images[r], "label": y_test[r]} for r in chunks),
            local_eval, n_eval_steps)

    # For image files: grey 8x8 digits scaled to [0, 255], nearest-neighbour
    # upscaling (the pixel repetition above), the data's statistics.
    preprocessing = Preprocessing(resize_size=size, crop_size=size,
                                  interpolation="nearest", mean=(mean,) * 3,
                                  std=(std,) * 3)
    return DataSource(
        name="digits", class_names=[str(i) for i in range(10)],
        preprocessing=preprocessing,
        num_train_examples=len(y_train), num_eval_examples=len(y_test),
        steps_per_epoch=steps_per_epoch, num_eval_steps=n_eval_steps,
        train_batches=train_batches, eval_batches=eval_batches)


def random_shift(images: np.ndarray, shift: int, dy: np.ndarray,
                 dx: np.ndarray, fill: float) -> np.ndarray:
    """Translates image ``i`` by ``(dy[i] - shift, dx[i] - shift)`` pixels,
    ``dy, dx`` in ``[0, 2 * shift]``, padding with ``fill``."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)),
                    constant_values=fill)
    return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
                     for i in range(n)])
