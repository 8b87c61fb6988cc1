"""What the loop sees of a data set, and the batching every source shares.

Every source is a :class:`DataSource`: class names, sizes, the eval
preprocessing spec, and two batch iterators of host-local numpy arrays. The train iterator is a pure function
of ``(config.seed, step)``: ``train_batches(start_step)`` yields exactly the
batches an uninterrupted run would see from ``start_step`` on, which is how a
restarted run continues with the same data. Eval batches are padded to a
fixed count and carry a ``mask`` so that every example counts exactly once.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np
from resnext_jax import Preprocessing

Batch = dict[str, np.ndarray]


class DataError(RuntimeError):
    """A data set could not be found or prepared."""


@dataclasses.dataclass
class DataSource:
    """A data set as the training loop sees it (one host's view)."""
    name: str
    class_names: list[str]
    # How an image file becomes an eval input: what the eval batches hold,
    # and what predict, export and serving apply (it goes into the bundle).
    preprocessing: Preprocessing
    num_train_examples: int  # all hosts.
    num_eval_examples: int  # all hosts.
    steps_per_epoch: int
    num_eval_steps: int
    train_batches: Callable[[int], Iterator[Batch]]
    eval_batches: Callable[[], Iterator[Batch]]
    # The input engine that reads it ("tf", "grain"; "" for the digits):
    # the engines draw their random crops differently.
    engine: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.preprocessing.crop_size

    def info(self) -> dict:
        """What inference needs to preprocess images and name classes."""
        return {"dataset": self.name, "class_names": list(self.class_names),
                "image_size": self.image_size,
                "preprocessing": self.preprocessing.to_dict(),
                "num_train_examples": self.num_train_examples,
                "num_eval_examples": self.num_eval_examples,
                **({"data_engine": self.engine} if self.engine else {})}


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
