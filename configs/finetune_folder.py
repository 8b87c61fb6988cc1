"""Fine-tune a pretrained registry model on an image folder, at 224.

The folder holds one subfolder of images per class, or train/ beside val/
with those subfolders (also training/, and valid/, validation/, eval/,
dev/, test/ or testing/; docs/training.md); the class count comes from it.
It needs at least batch_size (64) training images. From torchvision's
ResNeXt-50 weights, by name (downloaded once):

  python -m train --config configs/finetune_folder.py \\
      --config.model=resnext50_32x4d \\
      --config.init_from=resnext50_32x4d.IMAGENET1K_V1 \\
      --config.data_dir=$HOME/my_images --workdir runs/my_images

The classifier is fresh (unless the folder has the source's class count,
config.head), everything else starts from the weights; eval preprocessing
follows the source (for torchvision's V1 weights: resize 256, bilinear,
center crop 224). --config.trainable=head trains the classifier alone (linear
probing, the backbone and its BatchNorm statistics frozen).
"""

from configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.model = "resnext50_32x4d"
    config.init_from = ""  # The weights: --config.init_from=PATH.
    config.head = "auto"
    config.trainable = "all"
    config.dataset = "folder"
    config.data_dir = ""  # The image folder: --config.data_dir=PATH.
    config.image_size = 224
    config.preprocess = "auto"  # The source's eval preprocessing.
    # Light augmentation: random-resized crop and flip (no mixup, no
    # RandAugment): a small data set is fitted from a good start in a few
    # epochs, and stronger regularization would need a longer schedule.
    config.augment = True
    config.batch_size = 64  # Fits one GPU (or a patient CPU) at 224.
    config.eval_batch_size = 64
    # A common transfer recipe, and the trainer's own optimizer: SGD with
    # Nesterov momentum 0.9 at a learning rate 10x below training from
    # scratch (0.01 per 256 images: large steps would wash out the
    # pretrained features), a short cosine schedule with one warmup epoch
    # (the fresh classifier's first gradients are large and would otherwise
    # disturb the backbone), label smoothing 0.1, weight decay 1e-4.
    config.num_epochs = 15.0
    config.base_learning_rate = 0.01
    config.base_batch_size = 256
    config.lr_schedule = "cosine"
    config.warmup_epochs = 1.0
    config.momentum = 0.9
    config.nesterov = True
    config.weight_decay = 1e-4
    config.label_smoothing = 0.1
    config.log_every_steps = 10
    config.eval_every_steps = -1  # Once per epoch.
    config.checkpoint_every_steps = 500
    return config
