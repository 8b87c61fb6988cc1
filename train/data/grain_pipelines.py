"""The Grain engine: image folders and TFDS data sets stored as ArrayRecord,
decoded and augmented with Pillow and numpy in worker processes.

It needs neither TensorFlow nor the GIL of the training process: each
worker (``config.data_workers``; one per CPU core this process may use by
default) builds whole batches. The train batches of step ``s`` are a pure
function of ``(config.seed, s)``: step ``s`` is epoch ``s // steps_per_epoch``,
whose order is a permutation seeded by ``(seed, epoch, host)``, and each
image's crop and flip are drawn from a generator seeded by that and the
image's position in the epoch. So ``train_batches(start_step)`` rebuilds
exactly what an uninterrupted run saw, whatever the number of workers.

Training crops as the tf.data engine does (an Inception crop with the
same distribution: ``sample_crop_box``), in Pillow: JPEGs are decoded at
1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) where the crop keeps at least
the output size, then only the crop's region is resampled (bicubic). Eval
runs the library's own :class:`resnext_jax.Preprocessing`: the inputs are
those of predict, export and serving by construction.
"""

from __future__ import annotations

import io
import math
import os
from typing import Iterator

import numpy as np

from train.config_validation import check_batch_fits, dataset_family
from train.data import folders, specs
from train.data.source import (Batch, DataError, DataSource,
                               local_batch_size, num_eval_steps,
                               padded_eval_batches, seed_for)

# What this engine decodes (Pillow), beside the formats both engines read.
IMAGE_EXTENSIONS = folders.BASE_IMAGE_EXTENSIONS + (".webp",)
# The Inception crop, as train/data/tf_image_ops.py.
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
CROP_MIN_COVERED = 0.1
# Steps of the train dataset: an index space, not work (built lazily).
_MAX_EPOCHS = 1_000_000


# ---------------------------------------------------------------------------
# Per image: numpy and Pillow.

def sample_crop_box(height: int, width: int, rng: np.random.Generator
                    ) -> tuple[int, int, int, int]:
    """``(top, left, rows, cols)`` of an Inception crop of a ``height`` x
    ``width`` image, drawn as ``tf.image.sample_distorted_bounding_box``
    draws it (area 8-100% sampled through the height, aspect 3/4-4/3, at
    least 10% of the image, 10 tries, else the whole image)."""
    for _ in range(CROP_ATTEMPTS):
        box = _random_crop(height, width, rng.uniform(*CROP_ASPECT), rng)
        if box is not None and box[2] * box[3] >= (
                CROP_MIN_COVERED * height * width):
            return box
    return 0, 0, height, width


def _random_crop(height, width, aspect, rng):
    """One try, as TensorFlow's ``GenerateRandomCrop``."""
    min_area = CROP_AREA[0] * width * height
    max_area = CROP_AREA[1] * width * height
    rows = round(math.sqrt(min_area / aspect))
    max_rows = round(math.sqrt(max_area / aspect))
    if round(max_rows * aspect) > width:
        max_rows = int((width + 0.5 - 1e-7) / aspect)
        if round(max_rows * aspect) > width:
            max_rows -= 1
    max_rows = min(max_rows, height)
    rows = min(rows, max_rows)
    if rows < max_rows:
        rows += int(rng.integers(0, max_rows - rows + 1))
    cols = round(rows * aspect)
    area = rows * cols
    if area < min_area:
        rows += 1
        cols = round(rows * aspect)
        area = rows * cols
    if area > max_area:
        rows -= 1
        cols = round(rows * aspect)
        area = rows * cols
    if (area < min_area or area > max_area or cols > width or rows > height
            or cols <= 0 or rows <= 0):
        return None
    top = int(rng.integers(0, height - rows)) if rows < height else 0
    left = int(rng.integers(0, width - cols)) if cols < width else 0
    return top, left, rows, cols


def stored_window(top, left, rows, cols, stored_height, stored_width,
                  orientation: int) -> tuple[int, int, int, int]:
    """The region of the stored image that EXIF ``orientation`` turns into
    the upright box ``(top, left, rows, cols)``: as
    ``tf_image_ops.stored_window``."""
    y, x, h, w, hs, ws = top, left, rows, cols, stored_height, stored_width
    return {
        2: (y, ws - x - w, h, w), 3: (hs - y - h, ws - x - w, h, w),
        4: (hs - y - h, x, h, w), 5: (x, y, w, h), 6: (hs - x - w, y, w, h),
        7: (hs - x - w, ws - y - h, w, h), 8: (x, ws - y - h, w, h),
    }.get(orientation, (y, x, h, w))


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """HWC pixels turned as EXIF ``orientation`` says (PIL's
    ``ImageOps.exif_transpose``)."""
    turn = {2: lambda p: p[:, ::-1], 3: lambda p: p[::-1, ::-1],
            4: lambda p: p[::-1], 5: lambda p: p.transpose(1, 0, 2),
            6: lambda p: np.rot90(p, 3), 7: lambda p: np.rot90(
                p.transpose(1, 0, 2), 2), 8: lambda p: np.rot90(p, 1)}
    return turn.get(orientation, lambda p: p)(pixels)


class Normalize:
    """uint8 HWC -> float32 ``x * (1 / (255 std)) - mean / std``: the train
    crop's normalization (the eval spec has its own, `spec_input`)."""

    def __init__(self, mean, std):
        std = np.asarray(std, np.float32)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.offset = (-np.asarray(mean, np.float32) / std).astype(np.float32)
        # (shape, scale, offset) spread to the last image's shape.
        self._full = (None, None, None)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = pixels.astype(np.float32)
        # Against arrays of the image's own shape: numpy broadcasts a
        # 3-vector over the channel axis about 4x slower.
        shape, scale, offset = self._full
        if shape != out.shape:
            shape = out.shape
            scale, offset = (np.ascontiguousarray(np.broadcast_to(v, shape))
                             for v in (self.scale, self.offset))
            self._full = (shape, scale, offset)  # One assignment.
        out *= scale
        out += offset
        return out


def _open(image):
    """A PIL image of a path, encoded bytes or uint8 HWC pixels."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return Image.fromarray(image[..., 0] if image.ndim == 3
                               and image.shape[-1] == 1 else image)
    if isinstance(image, (bytes, np.bytes_)):
        return Image.open(io.BytesIO(bytes(image)))
    return Image.open(image)


def _to_rgb(pil):
    """RGB as the library's eval spec converts (16-bit images keep their
    top 8 bits rather than turning white)."""
    from resnext_jax.inference.serving import to_rgb  # pylint: disable=import-outside-toplevel
    return to_rgb(pil)


def inception_crop(image, orientation: int, rng: np.random.Generator,
                   size: int) -> np.ndarray:
    """An Inception crop of ``image`` (path, bytes or pixels), resized to
    ``size`` (bicubic) and flipped at random: uint8 ``(size, size, 3)``."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    with _open(image) as pil:
        stored_w, stored_h = pil.size
        turned = orientation >= 5
        top, left, rows, cols = sample_crop_box(
            stored_w if turned else stored_h,
            stored_h if turned else stored_w, rng)
        y, x, h, w = stored_window(top, left, rows, cols, stored_h, stored_w,
                                   orientation)
        scale = 1
        if pil.format == "JPEG":
            # Decode at the smallest DCT scale that keeps the crop at
            # least ``size`` pixels each way: less to decode, no upsampling.
            scale = next(s for s in (8, 4, 2, 1)
                         if s == 1 or min(h, w) // s >= size)
            if scale > 1:
                pil.draft("RGB", (stored_w // scale, stored_h // scale))
                # Stored pixel x is x / scale in the decoded image.
                scale = round(stored_w / pil.size[0])
        if pil.mode not in ("RGB", "L"):
            pil = _to_rgb(pil)  # Palette, alpha, 16 bits: as the eval spec.
        out = pil.resize((size, size), Image.BICUBIC, box=(
            x / scale, y / scale, (x + w) / scale, (y + h) / scale))
    if out.mode != "RGB":
        out = out.convert("RGB")
    pixels = upright(np.asarray(out), orientation)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return pixels


def cifar_crop(image, orientation: int, rng: np.random.Generator,
               size: int) -> np.ndarray:
    """Resized to ``size`` where it is not, padded by 4 (scaled to
    ``size``) with black, a random ``size`` crop, a random flip: uint8."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    with _open(image) as pil:
        pil = _to_rgb(pil)
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        pixels = upright(np.asarray(pil), orientation)
    pad = max(1, round(4 * size / 32))
    padded = np.zeros((size + 2 * pad, size + 2 * pad, 3), np.uint8)
    padded[pad:pad + pixels.shape[0], pad:pad + pixels.shape[1]] = pixels
    top, left = rng.integers(0, 2 * pad + 1, 2)
    pixels = padded[top:top + size, left:left + size]
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return pixels


def spec_input(preprocessing, image) -> np.ndarray:
    """The library's eval input of a path, encoded bytes or pixels."""
    if isinstance(image, (str, os.PathLike)):
        return preprocessing.load_image(image)
    with _open(image) as pil:
        return preprocessing(pil)


# ---------------------------------------------------------------------------
# Examples: one host's, by index.

class FolderExamples:
    """Image-folder files: ``(path, label, EXIF orientation)`` by index."""

    def __init__(self, files: folders.Files):
        self.paths = list(files.files)
        self.labels = np.asarray(files.labels, np.int32)
        self.orientations = list(files.orientations)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return (self.paths[index], int(self.labels[index]),
                self.orientations[index])


class TfdsExamples:
    """A TFDS ArrayRecord data source: ``(image, label, 1)`` by index."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        example = self.source[int(self.indices[index])]
        return example["image"], int(example["label"]), 1


def _host_indices(total: int, process_index: int, process_count: int,
                  drop_remainder: bool) -> np.ndarray:
    """This host's examples: every ``process_count``-th, as tf.data's
    ``shard``; equal counts on every host when ``drop_remainder``."""
    if drop_remainder:
        total -= total % process_count
    return np.arange(process_index, total, process_count)


class _Subset:
    def __init__(self, examples, indices):
        self.examples, self.indices = examples, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.examples[int(self.indices[index])]


# ---------------------------------------------------------------------------
# Batches, by step: what the workers compute.

class TrainBatches:
    """Random access to the train batches of one host: ``[step]``."""

    def __init__(self, examples, *, local: int, steps_per_epoch: int,
                 seed: int, process_index: int, size: int, kind: str,
                 augment: bool, preprocessing):
        self.examples, self.local = examples, local
        self.steps_per_epoch = steps_per_epoch
        self.seed, self.process_index = seed, process_index
        self.size, self.augment = size, augment
        self.crop = cifar_crop if kind == "cifar" else inception_crop
        self.preprocessing = preprocessing
        self.normalize = Normalize(preprocessing.mean, preprocessing.std)
        self._order = (None, None)  # (epoch, permutation), per worker.

    def __len__(self) -> int:
        return self.steps_per_epoch * _MAX_EPOCHS

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of this host's examples."""
        if self._order[0] != epoch:
            rng = np.random.default_rng(
                seed_for(self.seed, epoch, self.process_index))
            self._order = (epoch, rng.permutation(len(self.examples)))
        return self._order[1]

    def __getitem__(self, step: int) -> Batch:
        epoch, position = divmod(int(step), self.steps_per_epoch)
        epoch_seed = seed_for(self.seed, epoch, self.process_index)
        first = position * self.local
        chosen = self.order(epoch)[first:first + self.local]
        images = np.empty((self.local,) + self.image_shape, np.float32)
        labels = np.empty(self.local, np.int32)
        for j, index in enumerate(chosen):
            image, labels[j], orientation = self.examples[int(index)]
            if self.augment:
                rng = np.random.default_rng([epoch_seed, first + j])
                images[j] = self.normalize(
                    self.crop(image, orientation, rng, self.size))
            else:
                images[j] = spec_input(self.preprocessing, image)
        return {"image": images, "label": labels}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.size if self.augment else self.preprocessing.crop_size
        return (size, size, 3)


class EvalBatches:
    """Random access to one host's eval batches (the last may be short)."""

    def __init__(self, examples, *, local: int, preprocessing):
        self.examples, self.local = examples, local
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return -(-len(self.examples) // self.local)

    def __getitem__(self, index: int) -> Batch:
        indices = range(index * self.local,
                        min((index + 1) * self.local, len(self.examples)))
        size = self.preprocessing.crop_size
        images = np.empty((len(indices), size, size, 3), np.float32)
        labels = np.empty(len(indices), np.int32)
        for j, i in enumerate(indices):
            image, labels[j], _ = self.examples[i]
            images[j] = spec_input(self.preprocessing, image)
        return {"image": images, "label": labels}


def worker_count(config) -> int:
    """``config.data_workers``, or one per CPU core this process may use."""
    workers = config.get("data_workers", -1)
    if workers >= 0:
        return int(workers)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not Linux.
        return os.cpu_count() or 1


def iterate(batches, start: int, workers: int) -> Iterator[Batch]:
    """``batches[start:]`` in order, computed by ``workers`` processes
    (none: a background thread of this one). Every batch is one worker's,
    so what comes out does not depend on ``workers``."""
    import grain  # pylint: disable=import-outside-toplevel
    from absl import flags  # pylint: disable=import-outside-toplevel

    if not flags.FLAGS.is_parsed():
        # Grain reads its absl flags; outside an absl program (a library
        # call, a test) they are unparsed: their defaults are meant.
        flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.source(batches)[start:]
    # One batch at a time per worker: a worker's threads would only share
    # its core; the workers are the parallelism.
    ds = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=1, prefetch_buffer_size=1 if workers else 2))
    if workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=2))
    iterator = iter(ds)
    try:
        for batch in iterator:
            yield {k: np.asarray(v) for k, v in batch.items()}
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # Ends the workers now, not at garbage collection.


# ---------------------------------------------------------------------------

def _tfds_examples(config, split: str, process_index: int,
                   process_count: int, drop_remainder: bool):
    """One host's examples of a TFDS split stored as ArrayRecord, and the
    split's size and class names."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    family = dataset_family(config.dataset)
    decoders = (None if family in ("cifar10", "cifar100")
                else {"image": tfds.decode.SkipDecoding()})
    try:
        builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
        if config.download:
            builder.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(
                    manual_dir=config.manual_dir or None))
        source = builder.as_data_source(split=split, decoders=decoders)
    except (AssertionError, FileNotFoundError, ValueError) as error:
        # TFDS's "could not find data", or data never prepared.
        raise FileNotFoundError(
            f"TFDS data set {config.dataset!r} (split {split!r}) was not found "
            f"in {config.data_dir or 'the TFDS data dir'} (--config.data_dir)"
            ". Prepare it as ArrayRecord (tfds build "
            f"{config.dataset} --file_format=array_record), or set "
            "config.data_engine='tf'.") from error
    except NotImplementedError as error:
        raise DataError(
            f"config.data_engine='grain' reads TFDS data sets stored as "
            f"ArrayRecord; {config.dataset!r} in "
            f"{config.data_dir or 'the TFDS data dir'} is not ({error}). Set "
            "config.data_engine='tf', or prepare it again with tfds build "
            f"{config.dataset} --file_format=array_record.") from error
    names = list(builder.info.features["label"].names)
    indices = _host_indices(len(source), process_index, process_count,
                            drop_remainder)
    return TfdsExamples(source, indices), len(source), names


def create_grain_source(config, process_index: int, process_count: int,
                        preprocessing=None) -> DataSource:
    """A :class:`DataSource` over an image folder or a TFDS ArrayRecord data
    set, read by Grain; ``preprocessing`` replaces the eval spec (and so
    the normalization) of ``preprocess``."""
    family = dataset_family(config.dataset)
    if family == "folder":
        split = folders.scan_folder(config, IMAGE_EXTENSIONS)
        class_names = split.class_names
        all_train = FolderExamples(split.train)
        all_eval = FolderExamples(split.eval)
        n_train, n_eval = len(all_train), len(all_eval)
        train = _Subset(all_train, _host_indices(
            n_train, process_index, process_count, True))
        evaluation = _Subset(all_eval, _host_indices(
            n_eval, process_index, process_count, False))
    else:
        train, n_train, class_names = _tfds_examples(
            config, config.train_split, process_index, process_count, True)
        evaluation, n_eval, _ = _tfds_examples(
            config, config.eval_split, process_index, process_count, False)

    kind, preprocessing = specs.run_preprocessing(config, preprocessing)
    local = local_batch_size(config.batch_size, process_count, "batch_size")
    check_batch_fits(config, n_train, (
        f"the image folder {config.data_dir!r}" if family == "folder" else
        f"{config.dataset!r} (split {config.train_split!r})"), process_count)
    steps_per_epoch = (n_train // process_count) // local
    workers = worker_count(config)
    train_steps = TrainBatches(
        train, local=local, steps_per_epoch=steps_per_epoch,
        seed=config.seed, process_index=process_index,
        size=config.image_size, kind=kind, augment=config.augment,
        preprocessing=preprocessing)

    local_eval = local_batch_size(config.eval_batch_size, process_count,
                                  "eval_batch_size")
    n_eval_steps = num_eval_steps(n_eval, config.eval_batch_size,
                                  process_count)
    eval_steps = EvalBatches(evaluation, local=local_eval,
                             preprocessing=preprocessing)

    def train_batches(start_step: int) -> Iterator[Batch]:
        return iterate(train_steps, start_step, workers)

    def eval_batches() -> Iterator[Batch]:
        # Few batches: fewer workers than batches (each starts a process).
        return padded_eval_batches(
            iterate(eval_steps, 0, min(workers, len(eval_steps))),
            local_eval, n_eval_steps)

    return DataSource(
        name=config.dataset, class_names=class_names,
        preprocessing=preprocessing, num_train_examples=n_train,
        num_eval_examples=n_eval, steps_per_epoch=steps_per_epoch,
        num_eval_steps=n_eval_steps, train_batches=train_batches,
        eval_batches=eval_batches)
