"""Fields shared by every experiment; each config file overrides a few.

Not an experiment itself: ``configs/default.py`` is the runnable default.
"""

import ml_collections
from ml_collections import config_dict


# ResNeXt fields settable through model_kwargs, with their types (the
# computation dtype is compute_dtype; num_classes comes from the data).
MODEL_KWARGS = {
    "stage_sizes": tuple, "cardinality": int, "base_width": int,
    "stage_widths": tuple, "stem": str, "stem_type": str, "avg_down": bool,
    "attn_layer": str, "block_form": str, "zero_init_residual": bool,
    "conv_impl": str, "bn_momentum": float, "bn_epsilon": float,
    "block_cls": str, "expansion": int, "drop_path_rate": float,
    "remat": str,
}


def get_base_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with neutral defaults."""
    config = ml_collections.ConfigDict()

    # Model: a registry name (``resnext_jax.list_models()``) or "custom";
    # ``model_kwargs`` are ResNeXt field overrides (num_classes comes from
    # the data set).
    config.model = "custom"
    # Every field a run may set, unset (None: the registry model's value),
    # so that any of them can be given on the command line of any config:
    # --config.model_kwargs.drop_path_rate=0.1.
    config.model_kwargs = ml_collections.ConfigDict(
        {field: config_dict.placeholder(kind)
         for field, kind in MODEL_KWARGS.items()})
    config.compute_dtype = "float32"  # or "bfloat16"; params stay float32.

    # Fine-tuning (docs/training.md). init_from: "" trains from scratch;
    # else published weights by name (resnext50_32x4d.IMAGENET1K_V2), a
    # torchvision/timm weights file (.safetensors, .pth/.pt), a model
    # bundle directory or another
    # run's workdir, read once at step 0 (a resumed run restores its own
    # checkpoint and never reads it again).
    config.init_from = ""
    # The pretrained classifier: "auto" keeps it when its class count is the
    # data set's, else starts a fresh one; "keep" (an error if the counts
    # differ); "reinit" (always fresh).
    config.head = "auto"
    # "all" fine-tunes every parameter; "head" trains the classifier alone
    # (linear probing: the backbone, BatchNorm statistics included, frozen).
    config.trainable = "all"

    # Data.
    config.dataset = "digits"  # digits, cifar10, cifar100, imagenet2012,
    #                            imagenette[/<config>], folder
    config.data_dir = ""  # TFDS data dir, or the image folder's root.
    config.manual_dir = ""  # imagenet2012: where the downloaded tars are.
    config.download = False  # let TFDS download and prepare if missing.
    config.train_split = "train"
    config.eval_split = "test"
    config.image_size = 32
    # auto, digits, cifar, imagenet. With init_from, "auto" evaluates with
    # the source's preprocessing (interpolation, crop fraction, mean/std).
    config.preprocess = "auto"
    config.augment = True
    config.shuffle_buffer_size = 10_000
    # Held out per class of a folder not split by folders (train/ + val/,
    # valid/, ...).
    config.folder_eval_fraction = 0.2
    # Image folder files that do not decode to an image: "skip" (reported
    # with their paths) or "fail" (stop before training).
    config.bad_images = "skip"
    # The input pipeline of image data sets (train/data/engines.py): "tf"
    # (tf.data), "grain" (Grain: worker processes, no TensorFlow needed) or
    # "auto" (the faster where both are installed, else the one that is).
    # The two draw their random crops differently: a run resumes with the
    # engine it started with.
    config.data_engine = "auto"
    # Grain's worker processes: -1, one per CPU core this process may use;
    # 0, none (a thread of the training process).
    config.data_workers = -1
    # Eval resolution where it differs from training's (torchvision's V2
    # recipe trains at 176 and evaluates a 224 crop of the image resized to
    # 232). -1: config.image_size, and the preprocessing's own resize (the
    # crop / 0.875 for ImageNet's).
    config.eval_image_size = -1
    config.eval_resize_size = -1
    # Per-image augmentations after the crop and flip, in the input
    # pipeline of image data sets (train/data/augment.py), as torchvision's:
    # "" (none), "ta_wide" (TrivialAugmentWide) or "ra" (RandAugment, two
    # ops of magnitude ra_magnitude out of 30).
    config.auto_augment = ""
    config.ra_magnitude = 9
    # RandomErasing's probability per image (after normalization; 0: off).
    config.random_erase = 0.0
    # Batch mixing, on the device (train/mixing.py): Mixup and CutMix with
    # these Beta parameters, one of the two per batch when both are > 0;
    # 0 turns each off.
    config.mixup_alpha = 0.0
    config.cutmix_alpha = 0.0

    # Optimization. Learning rate = base_learning_rate * batch_size /
    # base_batch_size (linear scaling, Goyal et al. 2017).
    config.batch_size = 256  # global, over all devices and hosts.
    config.eval_batch_size = 256
    config.num_epochs = 90.0
    config.num_train_steps = -1  # > 0 overrides num_epochs.
    config.base_learning_rate = 0.1
    config.base_batch_size = 256
    config.lr_schedule = "cosine"  # cosine or step
    config.warmup_epochs = 0.0
    config.lr_decay_epochs = ()  # step schedule: epochs where lr drops.
    config.lr_decay_factor = 0.1
    # "sgd" (the paper's: momentum, nesterov), "adamw" (torch.optim.AdamW:
    # adam_b1, adam_b2, adam_eps, at PyTorch's defaults) or "lamb" (timm's
    # Lamb, with the same three and lamb_max_grad_norm). All decay
    # weight_decay where weight_decay_bn/_bias say (docs/step_parity.md).
    config.optimizer = "sgd"
    config.momentum = 0.9
    config.nesterov = True
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.adam_eps = 1e-8
    config.weight_decay = 1e-4
    config.weight_decay_bn = False  # decay BatchNorm scales and biases too.
    config.weight_decay_bias = False  # decay other biases (fc) too.
    config.label_smoothing = 0.0
    config.grad_accum_steps = 1  # micro-batches per step.
    # optimizer="lamb" (timm's Lamb): clip the gradients to this global norm
    # first (timm's max_grad_norm; 0: no clipping).
    config.lamb_max_grad_norm = 1.0

    # An exponential moving average of the weights (and BatchNorm
    # statistics), as torchvision's --model-ema (train/ema.py): updated
    # every model_ema_steps steps with a decay rescaled from model_ema_decay
    # by batch size, interval and epochs as torchvision's train.py does.
    # Every eval then evaluates both; with model_ema_bundle the average is
    # what the best checkpoint, the model bundle and the summary's accuracy
    # follow (torchvision's published V2 weights are the average).
    config.model_ema = False
    config.model_ema_decay = 0.99998
    config.model_ema_steps = 32
    config.model_ema_bundle = True

    # Bookkeeping.
    config.seed = 0
    config.log_every_steps = 50
    config.eval_every_steps = -1  # -1: once per epoch.
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 2
    config.progress_bar = True

    # Fault tolerance. A step with a non-finite loss or gradient leaves the
    # state unchanged; this many in a row stop the run.
    config.max_consecutive_nonfinite = 10
    # Resume a workdir whose saved model, data set, image size, data order
    # (batch_size, seed, ...) or schedule length differ.
    config.allow_config_change = False
    # Start over from step 0 in a workdir whose checkpoints are all gone
    # (set aside as damaged, or deleted); refused otherwise.
    config.restart_from_scratch = False
    # Steps whose batch is replaced by NaNs: exercises the guard above.
    config.inject_nonfinite_steps = ()

    # Multi-host (jax.distributed). Empty/-1 read JAX_COORDINATOR_ADDRESS,
    # JAX_NUM_PROCESSES, JAX_PROCESS_ID; multihost=True with none of them
    # lets JAX detect the cluster (TPU pod, SLURM, Open MPI).
    config.multihost = False
    config.coordinator_address = ""
    config.num_processes = -1
    config.process_id = -1
    return config
