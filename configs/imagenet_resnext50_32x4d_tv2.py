"""ResNeXt-50 (32x4d) on ImageNet-1k, torchvision's V2 recipe.

The recipe of torchvision's ``ResNeXt50_32X4D_Weights.IMAGENET1K_V2``
(81.198% top-1 at 224 after resizing to 232; V1, the paper's recipe:
77.618%), from torchvision's references/classification/train.py and the
command in pytorch/vision issue #3995 ("new recipe", with the FixRes
mitigations: train crop 176, eval resize 232)::

  torchrun --nproc_per_node=8 train.py --model resnext50_32x4d \
    --batch-size 128 --lr 0.5 --lr-scheduler cosineannealinglr \
    --lr-warmup-epochs 5 --lr-warmup-method linear --auto-augment ta_wide \
    --epochs 600 --random-erase 0.1 --weight-decay 0.00002 \
    --norm-weight-decay 0.0 --label-smoothing 0.1 --mixup-alpha 0.2 \
    --cutmix-alpha 1.0 --train-crop-size 176 --model-ema \
    --val-resize-size 232

Where ours differs on purpose (docs/experiments.md, "Recipes"): the
learning rate changes every step (torchvision's scheduler steps once per
epoch) and warmup starts from 0 (torchvision's from 0.01 x lr); the random-
resized crop resizes bicubic (torchvision: bilinear). Not reproduced: the
repeated-augmentation sampler (--ra-sampler) some of torchvision's V2
commands add.

Run (8 accelerators; ImageNet prepared by TFDS, see the paper recipe's
config):
  python -m train --config configs/imagenet_resnext50_32x4d_tv2.py \
      --workdir runs/imagenet_resnext50_32x4d_tv2 \
      --config.data_dir=$HOME/tensorflow_datasets \
      --config.manual_dir=$HOME/imagenet_tars
"""

from configs.imagenet_base import get_imagenet_config


def get_config():
    config = get_imagenet_config("resnext50_32x4d")
    # --batch-size 128 on 8 GPUs; --lr 0.5 for those 1,024 images.
    config.batch_size = 1024
    config.base_batch_size = 1024
    config.base_learning_rate = 0.5
    config.eval_batch_size = 1000  # 50,000 validation images: 50 batches.
    config.num_epochs = 600.0  # --epochs 600
    config.lr_schedule = "cosine"  # --lr-scheduler cosineannealinglr
    config.lr_decay_epochs = ()
    config.warmup_epochs = 5.0  # --lr-warmup-epochs 5 (linear)
    # train.py's default optimizer: SGD, momentum 0.9, no Nesterov.
    config.optimizer = "sgd"
    config.momentum = 0.9
    config.nesterov = False
    config.weight_decay = 2e-5  # --weight-decay 0.00002
    config.weight_decay_bn = False  # --norm-weight-decay 0.0
    config.weight_decay_bias = True  # the classifier's bias is decayed.
    config.label_smoothing = 0.1  # --label-smoothing 0.1
    config.mixup_alpha = 0.2  # --mixup-alpha 0.2
    config.cutmix_alpha = 1.0  # --cutmix-alpha 1.0
    config.auto_augment = "ta_wide"  # --auto-augment ta_wide
    config.random_erase = 0.1  # --random-erase 0.1
    config.image_size = 176  # --train-crop-size 176
    config.eval_image_size = 224  # --val-crop-size 224 (the default)
    config.eval_resize_size = 232  # --val-resize-size 232
    # --model-ema, with train.py's defaults: --model-ema-steps 32,
    # --model-ema-decay 0.99998; the published weights are the average.
    config.model_ema = True
    config.model_ema_steps = 32
    config.model_ema_decay = 0.99998
    config.model_ema_bundle = True
    config.checkpoint_every_steps = 2500  # 1,251 steps per epoch.
    return config
