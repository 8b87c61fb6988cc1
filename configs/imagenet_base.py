"""The paper's ImageNet recipe (Sec. 4), shared by the ImageNet configs:
batch 256, lr 0.1 per 256 images, momentum 0.9, weight decay 1e-4, lr /10
three times, every 30 epochs; scale and aspect-ratio augmentation (random
resized crop) + flip; single 224 center crop of the image resized to 256.
"""

from configs.base import get_base_config


def get_imagenet_config(model: str):
    config = get_base_config()
    config.model = model
    config.dataset = "imagenet2012"
    config.train_split = "train"
    config.eval_split = "validation"
    config.image_size = 224
    config.preprocess = "imagenet"
    config.shuffle_buffer_size = 16 * 1024
    config.batch_size = 256
    config.eval_batch_size = 200  # 50,000 validation images: 250 batches.
    config.num_epochs = 120.0
    config.base_learning_rate = 0.1
    config.base_batch_size = 256
    config.lr_schedule = "step"
    config.lr_decay_epochs = (30, 60, 90)
    config.lr_decay_factor = 0.1
    config.weight_decay = 1e-4
    config.compute_dtype = "bfloat16"
    config.log_every_steps = 100
    config.eval_every_steps = -1
    config.checkpoint_every_steps = 5000
    return config
