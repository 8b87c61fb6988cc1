"""Input pipelines: what the loop sees of a data set, and the embedded digits.

Every source is a :class:`DataSource`: class names, sizes, and two batch
iterators of host-local numpy arrays. The train iterator is a pure function
of ``(config.seed, step)``: ``train_batches(start_step)`` yields exactly the
batches an uninterrupted run would see from ``start_step`` on, which is how a
restarted run continues with the same data. Eval batches are padded to a
fixed count and carry a ``mask`` so that every example counts exactly once.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np

from train import steps
from train.config_validation import dataset_family

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class DataSource:
    """A data set as the training loop sees it (one host's view)."""
    name: str
    class_names: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train_examples: int  # all hosts.
    num_eval_examples: int  # all hosts.
    steps_per_epoch: int
    num_eval_steps: int
    train_batches: Callable[[int], Iterator[Batch]]
    eval_batches: Callable[[], Iterator[Batch]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def info(self) -> dict:
        """What inference needs to preprocess images and name classes."""
        return {"dataset": self.name, "class_names": list(self.class_names),
                "image_size": self.image_size, "mean": list(self.mean),
                "std": list(self.std),
                "num_train_examples": self.num_train_examples,
                "num_eval_examples": self.num_eval_examples}


def local_batch_size(batch_size: int, process_count: int, field: str) -> int:
    if batch_size % process_count:
        raise ValueError(
            f"config.{field} (={batch_size}) must be divisible by the number "
            f"of processes ({process_count}).")
    return batch_size // process_count


def seed_for(*keys: int) -> int:
    """A 31-bit seed derived from integer keys (seed, epoch, process)."""
    return int(np.random.SeedSequence([int(k) for k in keys])
               .generate_state(1)[0] >> 1)


def num_eval_steps(num_examples: int, eval_batch_size: int,
                   process_count: int) -> int:
    """Eval batches per host: enough for the largest host shard."""
    per_host = -(-num_examples // process_count)
    local = eval_batch_size // process_count
    return max(1, -(-per_host // local))


def padded_eval_batches(batches: Iterator[Batch], local_batch: int,
                        num_batches: int) -> Iterator[Batch]:
    """Pads (with mask 0) to ``num_batches`` full batches of ``local_batch``.

    All hosts then run the same number of eval steps of the same shape.
    """
    template = None
    count = 0
    for batch in batches:
        n = len(batch["label"])
        template = batch
        padded = {
            "image": _pad(batch["image"], local_batch),
            "label": _pad(batch["label"].astype(np.int32), local_batch),
            "mask": _pad(np.ones(n, np.float32), local_batch)}
        yield padded
        count += 1
    if template is None and count < num_batches:
        raise ValueError("the eval split is empty.")
    while count < num_batches:
        yield {"image": np.zeros((local_batch,) + template["image"].shape[1:],
                                 np.float32),
               "label": np.zeros(local_batch, np.int32),
               "mask": np.zeros(local_batch, np.float32)}
        count += 1


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    if len(x) == size:
        return x
    pad = [(0, size - len(x))] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, pad)


# ---------------------------------------------------------------------------
# scikit-learn digits: 1,797 8x8 grey images, 10 classes, in memory.

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


def _digits_source(config, process_index, process_count) -> DataSource:
    (x_train, y_train), (x_test, y_test) = load_digits_arrays()
    size = config.image_size
    if size % 8:
        raise ValueError(f"config.image_size (={size}) must be a multiple of "
                         "8 for the 8x8 digits (images are upscaled by "
                         "pixel repetition).")
    mean, std = float(x_train.mean()), float(x_train.std())

    def prepare(images):
        images = (images - mean) / std
        factor = size // 8
        images = images.repeat(factor, 1).repeat(factor, 2)
        return np.repeat(images[..., None], 3, axis=-1)

    train_images, test_images = prepare(x_train), prepare(x_test)
    global_batch = config.batch_size
    local = local_batch_size(global_batch, process_count, "batch_size")
    steps_per_epoch = len(y_train) // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"config.batch_size (={global_batch}) is larger than "
                         f"the {len(y_train)} digits training images.")
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

    return DataSource(
        name="digits", class_names=[str(i) for i in range(10)],
        image_size=size, mean=(mean,) * 3, std=(std,) * 3,
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


# ---------------------------------------------------------------------------

def create_data_source(config: ml_collections.ConfigDict,
                       process_index: int | None = None,
                       process_count: int | None = None) -> DataSource:
    """The data set named by ``config.dataset``, sharded for this host."""
    process_index = (jax.process_index() if process_index is None
                     else process_index)
    process_count = (jax.process_count() if process_count is None
                     else process_count)
    if dataset_family(config.dataset) == "digits":
        return _digits_source(config, process_index, process_count)
    from train import tf_data  # TensorFlow is imported only when needed.
    return tf_data.create_tf_source(config, process_index, process_count)


def inject_nonfinite(batches: Iterator[Batch], start_step: int,
                     bad_steps) -> Iterator[Batch]:
    """Replaces the images of the batches of steps ``bad_steps`` (1-based,
    as logged) with NaNs: how tests exercise the non-finite guard."""
    bad_steps = set(int(s) for s in bad_steps)
    for step, batch in enumerate(batches, start_step + 1):
        if step in bad_steps:
            batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        yield batch


def to_global_batch(batch: Batch, mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global array split over the ``data`` axis."""
    sharding = steps.batch_sharding(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, value)
            for key, value in batch.items()}


def prefetch_to_mesh(batches: Iterator[Batch], mesh,
                     size: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Keeps ``size`` batches in flight to the devices (transfers are async)."""
    queue = collections.deque()
    for batch in batches:
        queue.append(to_global_batch(batch, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
