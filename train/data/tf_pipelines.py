"""tf.data pipelines: TFDS data sets (CIFAR, ImageNet, Imagenette) and image
folders, with the standard augmentations.

Eval images go through the library's preprocessing spec
(:class:`resnext_jax.Preprocessing`, PIL), the very function that predict,
export and serving apply, so that a trained model answers the same there.

Augmentation randomness is stateless, seeded by ``(seed, epoch, host)`` and
the example's index in the epoch, and the shuffle is seeded per epoch; so
the batches of any step can be rebuilt exactly, which is how a restarted run
resumes its data position (``train_batches(start_step)``).
"""

from __future__ import annotations

import io
import os
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from resnext_jax import Preprocessing

from train.config_validation import check_batch_fits, dataset_family
from train.data import augment, specs, tf_image_ops
from train.data.folders import BASE_IMAGE_EXTENSIONS, scan_folder
from train.data.source import (Batch, DataError, DataSource,
                               local_batch_size, num_eval_steps,
                               padded_eval_batches, seed_for)

# What tf.io.decode_image (training) and Pillow (eval, predict) both read;
# WebP where this TensorFlow decodes it. Other files are listed as skipped.
IMAGE_EXTENSIONS = BASE_IMAGE_EXTENSIONS + (
    (".webp",) if hasattr(tf.io, "decode_webp") else ())
AUTOTUNE = tf.data.AUTOTUNE


# ---------------------------------------------------------------------------
# Per example, float32 output, normalized: train augmentation, and the
# eval spec (the library's, through PIL).

# Decoding and EXIF orientation (train/data/tf_image_ops.py), by the names
# this module has always had.
_decode, upright = tf_image_ops.decode, tf_image_ops.upright


def _normalize(image, mean, std):
    """``(x / 255 - mean) / std`` per channel, in float32.

    With a static shape, ``mean`` and ``std`` are constants of the image's
    whole shape: TensorFlow's CPU kernels broadcast a 3-vector over an HWC
    image about 5x slower than they combine two equal shapes, and the
    values are the same bits either way."""
    image = tf.cast(image, tf.float32) / 255.0
    if image.shape.is_fully_defined():
        shape = image.shape.as_list()
        mean = np.broadcast_to(np.asarray(mean, np.float32), shape)
        std = np.broadcast_to(np.asarray(std, np.float32), shape)
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std,
                                                                 tf.float32)


def train_finish(mean, std, policy=None, erase: float = 0.0):
    """``finish(pixels, seed)``: what follows the crop and flip, in
    torchvision's order: the uint8 ``policy`` (TrivialAugment, RandAugment:
    :func:`train.data.augment.augment_fn`), normalization, then random
    erasing with probability ``erase``. Their seeds are folded from the
    example's, so the crop and flip draw what they drew without them."""
    def finish(image, seed):
        if policy is not None:
            image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)),
                            tf.uint8)
            image = policy(image, tf.random.experimental.stateless_fold_in(
                seed, _POLICY_STREAM))
        image = _normalize(image, mean, std)
        if erase:
            image = augment.random_erasing(
                image, tf.random.experimental.stateless_fold_in(
                    seed, _ERASE_STREAM), p=erase)
        return image
    return finish


def _policy(config):
    """``config.auto_augment``'s per-image policy, or None."""
    if not config.auto_augment:
        return None
    options = ({"magnitude": config.ra_magnitude}
               if config.auto_augment == "ra" else {})
    return augment.augment_fn(config.auto_augment, **options)


# Random streams of train_finish, folded into an example's seed.
_POLICY_STREAM, _ERASE_STREAM = 1, 2


def cifar_train(image, seed, size, finish, orientation=None):
    """Pad 4 (scaled to ``size``), random ``size`` crop, random flip, then
    ``finish`` (:func:`train_finish`). ``orientation``: EXIF's, or None."""
    image = _decode(image)
    if orientation is not None:
        image = upright(image, orientation)
    image = tf.cast(image, tf.float32)
    if image.shape[0] != size or image.shape[1] != size:
        image = tf.image.resize(image, [size, size], antialias=True)
    pad = max(1, round(4 * size / 32))
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_crop(image, [size, size, 3], crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return finish(image, seed)


def inception_train(image, seed, size, finish, orientation=None):
    """Random-resized crop (area 8-100%, aspect 3/4-4/3), resize, flip, then
    ``finish`` (:func:`train_finish`). ``orientation``: EXIF's, or None.

    A JPEG is decoded cropped (:func:`tf_image_ops.decode_and_random_crop`):
    the same box and pixels as decoding it whole, for less work."""
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    image = tf_image_ops.decode_and_random_crop(image, crop_seed, orientation)
    image = tf.image.resize(image, [size, size], method="bicubic")
    image = tf.clip_by_value(image, 0.0, 255.0)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return finish(image, seed)


def spec_eval(preprocessing: Preprocessing):
    """Encoded bytes or uint8 pixels -> the spec's float32 input, computed
    by the library (PIL) inside the pipeline."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    def apply(image) -> np.ndarray:
        if isinstance(image, (bytes, np.bytes_)) or image.dtype == object:
            data = image if isinstance(image, bytes) else image.item()
            pil = Image.open(io.BytesIO(data))
        else:
            pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1
                                  else image)
        with pil:
            return preprocessing(pil)

    size = preprocessing.crop_size

    def fn(image):
        out = tf.numpy_function(apply, [image], tf.float32, stateful=False)
        out.set_shape([size, size, 3])
        return out
    return fn


# ---------------------------------------------------------------------------
# Sources: host-sharded datasets of {"image", "label"} plus class names.

def missing_data_message(name: str, data_dir: str, manual_dir: str) -> str:
    where = data_dir or os.environ.get(
        "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
    if dataset_family(name) == "imagenet2012":
        manual = manual_dir or os.path.join(where, "downloads", "manual")
        how = (
            "ImageNet cannot be downloaded automatically: download "
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
            f"https://image-net.org into {manual} (--config.manual_dir), then "
            "run once with --config.download=True so that TFDS prepares it.")
    else:
        how = (f"On a machine with network access run "
               f"`tfds build {name} --data_dir={where}` (or train once with "
               "--config.download=True), then copy that directory here.")
    return (f"TFDS data set {name!r} was not found in {where} "
            f"(--config.data_dir) and config.download is False. {how}")


def download_failed_message(name: str, data_dir: str, manual_dir: str,
                            error: Exception) -> str:
    """Why ``config.download=True`` failed, and what to do."""
    cause = f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
    if isinstance(error, ModuleNotFoundError):
        how = (f"TensorFlow Datasets needs the module {error.name!r} to "
               "download and prepare data sets: install the training "
               "dependencies (pip install -e '.[train]') or pip install "
               f"{error.name}.")
    elif dataset_family(name) == "imagenet2012":
        how = missing_data_message(name, data_dir, manual_dir).split(
            "config.download is False. ", 1)[1]
    else:
        where = data_dir or os.environ.get(
            "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
        how = ("Check this machine's network access, or run `tfds build "
               f"{name} --data_dir={where}` on one that has it and copy that "
               "directory here.")
    return (f"preparing TFDS data set {name!r} with config.download=True "
            f"failed ({cause}). {how}")


def _tfds_builder(config):
    data_dir = config.data_dir or None
    builder = tfds.builder(config.dataset, data_dir=data_dir)
    if config.download:
        download_config = tfds.download.DownloadConfig(
            manual_dir=config.manual_dir or None)
        try:
            builder.download_and_prepare(download_config=download_config)
        except Exception as error:  # Network, manual files: add guidance.
            raise DataError(download_failed_message(
                config.dataset, config.data_dir, config.manual_dir,
                error)) from error
    return builder


def _tfds_split(builder, config, split, process_index, process_count,
                drop_remainder):
    """One host's part of a TFDS split (images left encoded when they are)."""
    host_split = tfds.even_splits(split, n=process_count,
                                  drop_remainder=drop_remainder)[process_index]
    decoders = None
    if dataset_family(config.dataset) not in ("cifar10", "cifar100"):
        decoders = {"image": tfds.decode.SkipDecoding()}  # Decode after crop.
    try:
        full = builder.as_dataset(split=split, decoders=decoders)
        host = builder.as_dataset(split=host_split, decoders=decoders,
                                  shuffle_files=False)
    except AssertionError as error:  # TFDS's "could not find data".
        raise FileNotFoundError(missing_data_message(
            config.dataset, config.data_dir, config.manual_dir)) from error
    total = int(full.cardinality())
    host = host.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
    return host, total


def _folder_splits(config):
    """(class names, train files, eval files) of an image folder
    (train/data/folders.py), with the types this TensorFlow decodes."""
    split = scan_folder(config, IMAGE_EXTENSIONS)
    return split.class_names, split.train, split.eval


def _files_dataset(files, labels, orientations, process_index,
                   process_count, drop_remainder):
    n = len(files)
    if drop_remainder:  # Equal shards, so hosts step in lockstep.
        n -= n % process_count
    # Training decodes with TensorFlow, which ignores EXIF: the orientation
    # (read by the folder scan) is applied after decoding. The eval spec
    # (PIL) applies it itself.
    ds = tf.data.Dataset.from_tensor_slices(
        {"path": files[:n], "label": np.asarray(labels[:n], np.int64),
         "orientation": np.asarray(orientations[:n], np.int32)})
    ds = ds.shard(process_count, process_index)
    ds = ds.map(lambda ex: {"image": tf.io.read_file(ex["path"]),
                            "label": ex["label"],
                            "orientation": ex["orientation"]})
    return ds, len(files)


# ---------------------------------------------------------------------------

def create_tf_source(config: ml_collections.ConfigDict, process_index: int,
                     process_count: int,
                     preprocessing: Preprocessing | None = None
                     ) -> DataSource:
    """A :class:`DataSource` over TFDS or an image folder; ``preprocessing``
    replaces the eval spec (and so the normalization) of ``preprocess``."""
    family = dataset_family(config.dataset)
    if family == "folder":
        class_names, train, evaluation = _folder_splits(config)
        train_ds, n_train = _files_dataset(*train, process_index,
                                           process_count, True)
        eval_ds, n_eval = _files_dataset(*evaluation, process_index,
                                         process_count, False)
    else:
        builder = _tfds_builder(config)
        class_names = list(builder.info.features["label"].names)
        train_ds, n_train = _tfds_split(builder, config, config.train_split,
                                        process_index, process_count, True)
        eval_ds, n_eval = _tfds_split(builder, config, config.eval_split,
                                      process_index, process_count, False)
        if family in ("cifar10", "cifar100"):
            train_ds = train_ds.cache()  # 50,000 small images: keep decoded.
            eval_ds = eval_ds.cache()

    kind, preprocessing = specs.run_preprocessing(config, preprocessing)
    size = config.image_size
    finish = train_finish(preprocessing.mean, preprocessing.std,
                          _policy(config), config.random_erase)
    train_fn = cifar_train if kind == "cifar" else inception_train
    eval_fn = spec_eval(preprocessing)

    local = local_batch_size(config.batch_size, process_count, "batch_size")
    check_batch_fits(config, n_train, (
        f"the image folder {config.data_dir!r}" if family == "folder" else
        f"{config.dataset!r} (split {config.train_split!r})"), process_count)
    host_examples = n_train // process_count
    steps_per_epoch = host_examples // local

    def epoch_batches(epoch: int, skip: int) -> tf.data.Dataset:
        epoch_seed = seed_for(config.seed, epoch, process_index)
        ds = train_ds.shuffle(min(config.shuffle_buffer_size, host_examples),
                              seed=epoch_seed, reshuffle_each_iteration=False)
        ds = ds.enumerate().skip(skip * local)  # Skip before decoding.

        def preprocess(index, ex):
            seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
            if config.augment:
                # Image folders carry an EXIF orientation (_files_dataset).
                image = train_fn(ex["image"], seed, size, finish,
                                 orientation=ex.get("orientation"))
            else:
                image = eval_fn(ex["image"])
            return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

        ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE,
                    deterministic=True)
        ds = ds.batch(local, drop_remainder=True).take(steps_per_epoch - skip)
        return ds.prefetch(AUTOTUNE).with_options(
            tf_image_ops.pipeline_options())

    def train_batches(start_step: int) -> Iterator[Batch]:
        epoch, skip = divmod(start_step, steps_per_epoch)
        while True:
            yield from epoch_batches(epoch, skip).as_numpy_iterator()
            epoch, skip = epoch + 1, 0

    local_eval = local_batch_size(config.eval_batch_size, process_count,
                                  "eval_batch_size")
    n_eval_steps = num_eval_steps(n_eval, config.eval_batch_size,
                                  process_count)

    def eval_batches() -> Iterator[Batch]:
        ds = eval_ds.map(
            lambda ex: {"image": eval_fn(ex["image"]),
                        "label": tf.cast(ex["label"], tf.int32)},
            num_parallel_calls=AUTOTUNE)
        ds = ds.batch(local_eval).prefetch(AUTOTUNE).with_options(
            tf_image_ops.pipeline_options())
        return padded_eval_batches(ds.as_numpy_iterator(), local_eval,
                                   n_eval_steps)

    return DataSource(
        name=config.dataset, class_names=class_names,
        preprocessing=preprocessing, num_train_examples=n_train,
        num_eval_examples=n_eval, steps_per_epoch=steps_per_epoch,
        num_eval_steps=n_eval_steps, train_batches=train_batches,
        eval_batches=eval_batches)
