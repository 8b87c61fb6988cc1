"""Checks a training config before anything is built or compiled."""

from __future__ import annotations

import math
import numbers

import ml_collections

import resnext_jax

from train.optim import OPTIMIZERS

DATASETS = ("digits", "cifar10", "cifar100", "imagenet2012", "imagenette",
            "folder")
PREPROCESS = ("auto", "digits", "cifar", "imagenet")
SCHEDULES = ("cosine", "step")
DTYPES = ("float32", "bfloat16")
BAD_IMAGES = ("skip", "fail")
DATA_ENGINES = ("auto", "tf", "grain")  # train/data/engines.py
HEADS = ("auto", "keep", "reinit")
TRAINABLE = ("all", "head")
AUTO_AUGMENT = ("", "ta_wide", "ra")


def dataset_family(name: str) -> str:
    """``"imagenette/160px"`` -> ``"imagenette"``."""
    return str(name).split("/", 1)[0].split(":", 1)[0]


class ConfigError(ValueError):
    """A config field has a value the trainer cannot use."""


def _fail(field, value, rule):
    raise ConfigError(f"config.{field} (={value!r}) {rule}")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(config, field):
    value = config[field]
    if not _is_int(value) or value < 1:
        _fail(field, value, "must be a positive integer.")


def _number(config, field, low=None, high=None, low_open=False,
            high_open=False):
    value = config[field]
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        _fail(field, value, "must be a number.")
    # NaN passes every comparison below; inf makes the schedule NaN.
    if not math.isfinite(value):
        _fail(field, value, "must be a finite number.")
    if low is not None and (value < low or (low_open and value == low)):
        _fail(field, value, f"must be {'>' if low_open else '>='} {low}.")
    if high is not None and (value > high or (high_open and value == high)):
        _fail(field, value, f"must be {'<' if high_open else '<='} {high}.")


def _choice(config, field, choices):
    if config[field] not in choices:
        _fail(field, config[field], f"must be one of {choices}.")


def _nonfinite_fields(config, prefix=""):
    """``(name, value)`` of every NaN or infinite float, nested ones too."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from _nonfinite_fields(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            if any(isinstance(v, float) and not math.isfinite(v)
                   for v in value):
                yield name, tuple(value)
        elif isinstance(value, float) and not math.isfinite(value):
            yield name, value


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: int | None = None,
                    num_processes: int = 1) -> None:
    """Raises ``ValueError`` naming the first bad field of ``config``.

    With ``num_devices`` also checks that the batches split evenly over the
    devices (and over the gradient-accumulation micro-batches), and with
    ``num_processes`` over the processes (hosts).
    """
    for field, value in _nonfinite_fields(config):
        _fail(field, value, "must be a finite number.")
    if config.model != "custom" and config.model not in (
            resnext_jax.list_models()):
        _fail("model", config.model,
              "must be 'custom' or a registered model: "
              f"{', '.join(resnext_jax.list_models())}.")
    if "num_classes" in config.model_kwargs:
        _fail("model_kwargs.num_classes", config.model_kwargs.num_classes,
              "is set by the data set; remove it.")
    _choice(config, "compute_dtype", DTYPES)
    _check_model(config)
    # Whether the source exists and fits is checked where it is read
    # (train/init_from.py): a resumed run never reads it.
    if not isinstance(config.init_from, str):
        _fail("init_from", config.init_from,
              "must be a path (a string), or '' to train from scratch.")
    _choice(config, "head", HEADS)
    _choice(config, "trainable", TRAINABLE)
    if dataset_family(config.dataset) not in DATASETS:
        _fail("dataset", config.dataset, f"must be one of {DATASETS} "
              "(imagenette may carry a TFDS config, e.g. 'imagenette/160px').")
    if config.dataset == "folder" and not config.data_dir:
        _fail("data_dir", config.data_dir,
              "must name the image folder (one subfolder per class) when "
              "config.dataset='folder'.")
    _choice(config, "preprocess", PREPROCESS)
    if config.preprocess == "digits" and dataset_family(
            config.dataset) != "digits":
        _fail("preprocess", config.preprocess,
              "only applies to config.dataset='digits'.")
    _positive_int(config, "image_size")
    if dataset_family(config.dataset) == "digits" and config.image_size % 8:
        # The 8x8 digits are upscaled by repeating each pixel.
        _fail("image_size", config.image_size,
              "must be a multiple of 8 for the 8x8 digits (they are "
              "upscaled by pixel repetition), e.g. 8, 16 or 32.")
    _positive_int(config, "shuffle_buffer_size")
    _choice(config, "bad_images", BAD_IMAGES)
    _choice(config, "data_engine", DATA_ENGINES)
    if not _is_int(config.data_workers) or config.data_workers < -1:
        _fail("data_workers", config.data_workers,
              "must be -1 (one worker process per CPU core), 0 (none) or a "
              "positive number of worker processes.")
    _number(config, "folder_eval_fraction", 0, 1, low_open=True,
            high_open=True)
    _check_resolution(config)
    _check_augmentation(config)

    for field in ("batch_size", "eval_batch_size", "base_batch_size",
                  "grad_accum_steps", "log_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints"):
        _positive_int(config, field)
    if not _is_int(config.num_train_steps) or config.num_train_steps == 0 \
            or config.num_train_steps < -1:
        _fail("num_train_steps", config.num_train_steps,
              "must be a positive integer, or -1 to train num_epochs.")
    if config.num_train_steps == -1:
        _number(config, "num_epochs", 0, low_open=True)
    if not _is_int(config.eval_every_steps) or config.eval_every_steps == 0 \
            or config.eval_every_steps < -1:
        _fail("eval_every_steps", config.eval_every_steps,
              "must be a positive integer, or -1 for once per epoch.")
    _number(config, "base_learning_rate", 0)
    _choice(config, "lr_schedule", SCHEDULES)
    _number(config, "warmup_epochs", 0)
    for epoch in config.lr_decay_epochs:
        if (not isinstance(epoch, numbers.Real) or not math.isfinite(epoch)
                or epoch <= 0):
            _fail("lr_decay_epochs", tuple(config.lr_decay_epochs),
                  "must hold positive epoch numbers.")
    if list(config.lr_decay_epochs) != sorted(config.lr_decay_epochs):
        _fail("lr_decay_epochs", tuple(config.lr_decay_epochs),
              "must be increasing.")
    _number(config, "lr_decay_factor", 0, 1, low_open=True)
    _choice(config, "optimizer", OPTIMIZERS)
    _number(config, "momentum", 0, 1, high_open=True)
    _number(config, "adam_b1", 0, 1, high_open=True)
    _number(config, "adam_b2", 0, 1, high_open=True)
    _number(config, "adam_eps", 0, low_open=True)
    _number(config, "weight_decay", 0)
    _number(config, "label_smoothing", 0, 1, high_open=True)
    _number(config, "lamb_max_grad_norm", 0)
    _check_ema(config)
    _positive_int(config, "max_consecutive_nonfinite")
    for step in config.inject_nonfinite_steps:
        if not _is_int(step) or step < 1:
            _fail("inject_nonfinite_steps",
                  tuple(config.inject_nonfinite_steps),
                  "must hold positive step numbers.")
    _number(config, "seed", 0)
    if not _is_int(config.seed):
        _fail("seed", config.seed, "must be a non-negative integer.")

    if config.batch_size % config.grad_accum_steps:
        _fail("batch_size", config.batch_size,
              f"must be divisible by config.grad_accum_steps "
              f"(={config.grad_accum_steps}).")
    if num_devices is not None:
        per_step = num_devices * config.grad_accum_steps
        if config.batch_size % per_step:
            _fail("batch_size", config.batch_size,
                  f"must be divisible by the number of devices ({num_devices})"
                  f" times config.grad_accum_steps "
                  f"(={config.grad_accum_steps}).")
        if config.eval_batch_size % num_devices:
            _fail("eval_batch_size", config.eval_batch_size,
                  f"must be divisible by the number of devices "
                  f"({num_devices}).")
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % num_processes:
            _fail(field, config[field], f"must be divisible by the number of "
                  f"processes ({num_processes}).")


def _size_or_unset(config, field) -> None:
    value = config[field]
    if not _is_int(value) or (value < 1 and value != -1):
        _fail(field, value, "must be a positive integer, or -1 for the "
              "default.")


def _check_resolution(config: ml_collections.ConfigDict) -> None:
    _size_or_unset(config, "eval_image_size")
    _size_or_unset(config, "eval_resize_size")
    crop = (config.eval_image_size if config.eval_image_size > 0
            else config.image_size)
    if 0 < config.eval_resize_size < crop:
        _fail("eval_resize_size", config.eval_resize_size,
              f"must be at least the eval crop (={crop}).")
    if dataset_family(config.dataset) == "digits" and (
            config.eval_image_size > 0 or config.eval_resize_size > 0):
        _fail("eval_image_size" if config.eval_image_size > 0
              else "eval_resize_size",
              max(config.eval_image_size, config.eval_resize_size),
              "does not apply to config.dataset='digits' (8x8 arrays "
              "upscaled to config.image_size); leave it at -1.")


def _check_augmentation(config: ml_collections.ConfigDict) -> None:
    _choice(config, "auto_augment", AUTO_AUGMENT)
    ra_magnitude = config.ra_magnitude
    if not _is_int(ra_magnitude) or not 0 <= ra_magnitude <= 30:
        _fail("ra_magnitude", ra_magnitude,
              "must be an integer from 0 to 30 (RandAugment's 31 bins).")
    _number(config, "random_erase", 0, 1)
    _number(config, "mixup_alpha", 0)
    _number(config, "cutmix_alpha", 0)
    if dataset_family(config.dataset) == "digits":
        for field, off in (("auto_augment", ""), ("random_erase", 0.0)):
            if config[field] != off:
                _fail(field, config[field],
                      "applies to image data sets (the tf.data pipeline), "
                      "not config.dataset='digits'.")


def _check_ema(config: ml_collections.ConfigDict) -> None:
    for field in ("model_ema", "model_ema_bundle"):
        if not isinstance(config[field], bool):
            _fail(field, config[field], "must be True or False.")
    _number(config, "model_ema_decay", 0, 1, low_open=True, high_open=True)
    _positive_int(config, "model_ema_steps")


def _check_model(config: ml_collections.ConfigDict) -> None:
    """Builds (does not initialize) the model: the library checks its
    fields, so that bad ``model_kwargs`` are refused before any data is read
    or anything compiles. The class count is a stand-in (the data set's
    comes later; ``model_kwargs.num_classes`` is refused above)."""
    from train.model_factory import build_model, model_overrides  # pylint: disable=import-outside-toplevel

    try:
        build_model(config, num_classes=2, axis_name=None)
    except (ValueError, TypeError) as error:
        kwargs = model_overrides(config)
        why = str(error).removeprefix("config.model_kwargs: ")
        raise ConfigError(
            f"config.model_kwargs (={kwargs!r}) do not make a valid "
            f"{config.model!r} model: {why}") from error


def check_batch_fits(config: ml_collections.ConfigDict,
                     num_train_examples: int, what: str,
                     process_count: int = 1) -> None:
    """Raises :class:`ConfigError` unless the training set holds one full
    global batch (every step takes one; each process its equal share)."""
    largest = num_train_examples // process_count * process_count
    if config.batch_size > largest:
        _fail("batch_size", config.batch_size,
              f"is larger than the {num_train_examples} training images of "
              f"{what}: every step takes a full batch, so it must be at "
              f"most {largest}; lower it or add training images.")


def validate_data(config: ml_collections.ConfigDict, source) -> None:
    """Checks of ``config`` against the loaded data set (before compiling)."""
    if config.eval_batch_size > source.num_eval_examples:
        _fail("eval_batch_size", config.eval_batch_size,
              f"must not exceed the {source.num_eval_examples} examples of "
              f"the eval split of {source.name!r}.")
    check_batch_fits(config, source.num_train_examples, repr(source.name))

