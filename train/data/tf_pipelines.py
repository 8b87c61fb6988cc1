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

import collections
import io
import os
import pathlib
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from resnext_jax import Preprocessing

from train.config_validation import (ConfigError, check_batch_fits,
                                     dataset_family)
from train.data.image_check import (BadImageError, display_path,
                                     exif_orientation, filter_images)
from train.data.source import (Batch, DataError, DataSource,
                               local_batch_size, num_eval_steps,
                               padded_eval_batches, seed_for)

# What tf.io.decode_image (training) and Pillow (eval, predict) both read;
# WebP where this TensorFlow decodes it. Other files are listed as skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif") + (
    (".webp",) if hasattr(tf.io, "decode_webp") else ())
AUTOTUNE = tf.data.AUTOTUNE


# ---------------------------------------------------------------------------
# Per example, float32 output, normalized: train augmentation, and the
# eval spec (the library's, through PIL).

def _decode(image: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (JPEG/PNG) or uint8 pixels -> uint8 HWC, 3 channels."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
    elif image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


def upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """HWC pixels turned as their EXIF ``orientation`` (1 to 8) says, as
    PIL's ``ImageOps.exif_transpose`` (which the eval spec applies): a
    portrait phone photo is stored sideways with a tag."""
    def transpose():
        return tf.transpose(image, [1, 0, 2])
    turned = tf.switch_case(tf.cast(orientation, tf.int32) - 1, [
        lambda: image,                                    # 1: upright
        lambda: tf.image.flip_left_right(image),          # 2
        lambda: tf.image.rot90(image, 2),                 # 3
        lambda: tf.image.flip_up_down(image),             # 4
        transpose,                                        # 5: transpose
        lambda: tf.image.rot90(image, 3),                 # 6
        lambda: tf.image.rot90(transpose(), 2),           # 7: transverse
        lambda: tf.image.rot90(image, 1),                 # 8
    ], default=lambda: image)
    turned.set_shape([None, None, image.shape[-1]])
    return turned


def _normalize(image, mean, std):
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean)) / tf.constant(std)


def cifar_train(image, seed, size, mean, std):
    """Pad 4 (scaled to ``size``), random ``size`` crop, random flip."""
    image = _decode(image)
    image = tf.cast(image, tf.float32)
    if image.shape[0] != size or image.shape[1] != size:
        image = tf.image.resize(image, [size, size], antialias=True)
    pad = max(1, round(4 * size / 32))
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_crop(image, [size, size, 3], crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return _normalize(image, mean, std)


def inception_train(image, seed, size, mean, std):
    """Random-resized crop (area 8-100%, aspect 3/4-4/3), resize, flip."""
    image = _decode(image)
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed,
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop)
    image = tf.image.resize(image, [size, size], method="bicubic")
    image = tf.clip_by_value(image, 0.0, 255.0)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return _normalize(image, mean, std)


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


def eval_preprocessing(kind: str, size: int) -> Preprocessing:
    """The eval spec of a preprocessing kind at ``size``: CIFAR's whole
    image, or ImageNet's center crop of 87.5%."""
    if kind == "cifar":
        return Preprocessing.cifar(size)
    return Preprocessing.imagenet(size)


def resolve_preprocess(config) -> str:
    if config.preprocess != "auto":
        return config.preprocess
    return "cifar" if dataset_family(config.dataset) in (
        "cifar10", "cifar100") else "imagenet"


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


# Split folder names (compared lower-cased). The eval split is the first
# of EVAL_SPLITS present: val before validation before test, as when only
# those three were known; Roboflow's and Kaggle's valid, and eval, dev and
# testing, slot in beside them.
TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("val", "valid", "validation", "eval", "dev", "test", "testing")
SPLIT_NAMES = TRAIN_SPLITS + EVAL_SPLITS
_LAYOUT_RULE = (
    "An image folder is either <data_dir>/<class>/<images> (split by "
    "config.folder_eval_fraction) or <data_dir>/train/<class>/<images> with "
    "<data_dir>/val/<class>/<images> (train/ may be named "
    f"{' or '.join(n + '/' for n in TRAIN_SPLITS[1:])}, val/ "
    f"{', '.join(n + '/' for n in EVAL_SPLITS[1:-1])} or "
    f"{EVAL_SPLITS[-1]}/, in any letter case); no class folder may be named "
    "like a split.")


def _hidden(name: str) -> bool:
    """Names starting with '.' (.ipynb_checkpoints, .DS_Store, .git) are
    tool files, never classes or images."""
    return name.startswith(".")


def _subfolders(root: pathlib.Path) -> list[pathlib.Path]:
    """``root``'s folders that are not hidden, sorted by name."""
    return sorted((p for p in root.iterdir()
                   if not _hidden(p.name) and p.is_dir()),
                  key=lambda p: p.name)


def _class_folders(root: pathlib.Path) -> list[pathlib.Path]:
    """The class folders of ``root``; raises :class:`DataError` for names
    that are split names (a layout mistake) or not UTF-8 (class names go
    into the model bundle and onto the terminal)."""
    folders = _subfolders(root)
    splits = [p.name for p in folders if p.name.lower() in SPLIT_NAMES]
    if splits:
        nested = (" (a split folder inside a split folder: is the data nested "
                  "one level too deep?)" if root.name.lower() in SPLIT_NAMES
                  else "")
        raise DataError(
            f"{display_path(str(root))} has class folder(s) named like data "
            f"splits: {', '.join(map(repr, splits))}{nested}. "
            + _LAYOUT_RULE)
    for p in folders:
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"class folder {display_path(str(p))} has a name that is not "
                "valid UTF-8; rename it (the class names are the folder "
                "names).") from None
    return folders


def _folder_files(classes: list[pathlib.Path]):
    """Image files and labels of the class folders ``classes``, and
    ``(label, path)`` of the files of other types. Hidden files and folders
    are left out; a broken symbolic link with an image's extension is kept,
    to be reported with the unusable images. One walk per class: linear in
    the files."""
    files, labels, skipped = [], [], []
    for label, folder in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not _hidden(d)]
            for name in filenames:
                path = os.path.join(dirpath, name)
                broken_link = (os.path.islink(path)
                               and not os.path.exists(path))
                if _hidden(name) or not (os.path.isfile(path)
                                         or broken_link):
                    continue  # Sockets, pipes, devices.
                found.append(pathlib.Path(path))
        for path in sorted(found):  # Path order, as sorted(rglob()) was.
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(str(path))
                labels.append(label)
            else:
                skipped.append((label, str(path)))
    return files, labels, skipped


def _report_skipped(skipped: list[tuple[int, str]]) -> None:
    if not skipped:
        return
    shown = [f"  {display_path(path)}" for _, path in skipped[:20]]
    if len(skipped) > 20:
        shown.append(f"  ... and {len(skipped) - 20} more")
    message = (f"skipping {len(skipped)} file(s) of unsupported types "
               f"(supported: {' '.join(IMAGE_EXTENSIONS)}):\n"
               + "\n".join(shown))
    logging.warning(message)
    print(f"WARNING: {message}", flush=True)


def _check_every_class_trains(classes, found, skipped, train_l, eval_l):
    """Raises :class:`BadImageError` naming each class left with no
    training image, and why: a class nobody can learn is never trained."""
    trains, evals = collections.Counter(train_l), collections.Counter(eval_l)
    unsupported = collections.defaultdict(collections.Counter)
    for label, path in skipped:
        unsupported[label][pathlib.Path(path).suffix.lower() or
                           "no extension"] += 1
    problems = []
    for label, name in enumerate(classes):
        if trains[label]:
            continue
        why = []
        if unsupported[label]:
            types = ", ".join(f"{n} {ext}" for ext, n in
                              sorted(unsupported[label].items()))
            why.append(f"unsupported file types ({types})")
        unusable = found[label] - evals[label]  # Dropped as bad images.
        if unusable:
            why.append(f"{unusable} unusable image(s), listed above")
        if evals[label]:
            why.append(f"{evals[label]} image(s), all in the eval split")
        problems.append(f"class {name!r}: "
                        + ("; ".join(why) or "no files"))
    if problems:
        raise BadImageError(
            "no training image for " + " | ".join(problems)
            + f". Supported types: {' '.join(IMAGE_EXTENSIONS)}; convert "
            "or add images, or remove the class folder.")


def _split_folders(root: pathlib.Path):
    """``(train folder, eval folder)`` of a folder laid out by split, or
    None when ``root``'s folders are the classes."""
    folders = _subfolders(root)
    trains = [p for p in folders if p.name.lower() in TRAIN_SPLITS]
    evals = [p for p in folders if p.name.lower() in EVAL_SPLITS]
    if not trains or not evals:
        return None  # Split names among classes: _class_folders refuses.
    rank = min(EVAL_SPLITS.index(p.name.lower()) for p in evals)
    chosen = [p for p in evals if EVAL_SPLITS.index(p.name.lower()) == rank]
    for role, named in (("training", trains), ("eval", chosen)):
        if len(named) > 1:  # train/ and Training/, val/ and Val/: which?
            raise DataError(
                f"{display_path(str(root))} has {len(named)} {role} folders "
                f"({', '.join(repr(display_path(p.name)) for p in named)}); "
                "keep one. " + _LAYOUT_RULE)
    if len(evals) > 1:
        logging.info("image folder %s: %s is the eval split (%s unused)",
                     display_path(str(root)), chosen[0].name,
                     ", ".join(p.name for p in evals if p is not chosen[0]))
    return trains[0], chosen[0]


def _check_class_count(where: pathlib.Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise DataError(
            f"{display_path(str(where))} holds {len(classes)} class "
            f"folder(s){' ' + repr(classes) if classes else ''}: "
            "classification needs at least 2 classes, one subfolder of "
            "images per class.")


def _folder_splits(config):
    """(class names, train files/labels, eval files/labels) of a folder.

    A ``train`` folder beside a ``val`` one (see TRAIN_SPLITS and
    EVAL_SPLITS for the other names) is used as given; otherwise each
    class is split by ``config.folder_eval_fraction`` with a fixed
    permutation. Layout mistakes are refused before any image is decoded.
    """
    root = pathlib.Path(config.data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"config.data_dir (={config.data_dir!r}) is not a directory; "
            "give a folder with one subfolder of images per class.")
    split = _split_folders(root)
    if split:
        train_dir, eval_dir = split
        class_dirs, eval_dirs = _class_folders(train_dir), _class_folders(
            eval_dir)
        classes = [p.name for p in class_dirs]
        eval_classes = [p.name for p in eval_dirs]
        if eval_classes != classes:
            only_train = sorted(set(classes) - set(eval_classes))
            only_eval = sorted(set(eval_classes) - set(classes))
            raise DataError(
                f"the training folder {display_path(str(train_dir))} and the "
                f"eval folder {display_path(str(eval_dir))} must hold the "
                "same class folders, but "
                + "; ".join(f"{names} only in {folder.name}/" for names, folder
                            in ((only_train, train_dir),
                                (only_eval, eval_dir)) if names)
                + ".")
        _check_class_count(train_dir, classes)
        train_f, train_l, skipped = _folder_files(class_dirs)
        eval_f, eval_l, eval_skipped = _folder_files(eval_dirs)
        skipped += eval_skipped
    else:
        class_dirs = _class_folders(root)
        classes = [p.name for p in class_dirs]
        _check_class_count(root, classes)
        files, labels, skipped = _folder_files(class_dirs)
        by_class = [[] for _ in classes]
        for file, label in zip(files, labels):
            by_class[label].append(file)
        train_f, train_l, eval_f, eval_l = [], [], [], []
        rng = np.random.default_rng(0)  # The split never depends on seed.
        for label, mine in enumerate(by_class):
            order = rng.permutation(len(mine))
            n_eval = max(1, int(round(len(mine) * config.folder_eval_fraction)))
            for rank, i in enumerate(order):
                target = (eval_f, eval_l) if rank < n_eval else (train_f,
                                                                 train_l)
                target[0].append(mine[i])
                target[1].append(label)
    _report_skipped(skipped)
    found = collections.Counter(train_l + eval_l)
    train_f, train_l = filter_images(train_f, train_l, config.bad_images)
    eval_f, eval_l = filter_images(eval_f, eval_l, config.bad_images)
    _check_every_class_trains(classes, found, skipped, train_l, eval_l)
    if not train_f or not eval_f:
        raise DataError(f"config.data_dir (={config.data_dir!r}) has no "
                        f"{'training' if not train_f else 'eval'} images "
                        f"with extensions {' '.join(IMAGE_EXTENSIONS)}.")
    return classes, (train_f, train_l), (eval_f, eval_l)


def _files_dataset(files, labels, process_index, process_count,
                   drop_remainder):
    n = len(files)
    if drop_remainder:  # Equal shards, so hosts step in lockstep.
        n -= n % process_count
    # Training decodes with TensorFlow, which ignores EXIF: the orientation
    # is read here (the header only) and applied after decoding. The eval
    # spec (PIL) applies it itself.
    ds = tf.data.Dataset.from_tensor_slices(
        {"path": files[:n], "label": np.asarray(labels[:n], np.int64),
         "orientation": np.asarray([exif_orientation(f) for f in files[:n]],
                                   np.int32)})
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

    kind = resolve_preprocess(config)
    if kind == "digits":  # Also refused by validate_config.
        raise ConfigError("config.preprocess (='digits') only applies to "
                          "config.dataset='digits'.")
    size = config.image_size
    if preprocessing is None:
        preprocessing = eval_preprocessing(kind, size)
    mean, std = preprocessing.mean, preprocessing.std
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
                image = ex["image"]
                if "orientation" in ex:  # Image folders (see _files_dataset).
                    image = upright(_decode(image), ex["orientation"])
                image = train_fn(image, seed, size, mean, std)
            else:
                image = eval_fn(ex["image"])
            return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

        ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE,
                    deterministic=True)
        ds = ds.batch(local, drop_remainder=True).take(steps_per_epoch - skip)
        return ds.prefetch(AUTOTUNE)

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
        ds = ds.batch(local_eval).prefetch(AUTOTUNE)
        return padded_eval_batches(ds.as_numpy_iterator(), local_eval,
                                   n_eval_steps)

    return DataSource(
        name=config.dataset, class_names=class_names,
        preprocessing=preprocessing, num_train_examples=n_train,
        num_eval_examples=n_eval, steps_per_epoch=steps_per_epoch,
        num_eval_steps=n_eval_steps, train_batches=train_batches,
        eval_batches=eval_batches)
