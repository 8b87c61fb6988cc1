"""The paper's CIFAR recipe (Sec. 5.3 and the official code), shared by the
four CIFAR configs: ResNeXt-29, batch 128, lr 0.1, Nesterov momentum 0.9,
weight decay 5e-4 on every parameter, 300 epochs, lr /10 at epochs 150 and
225, pad-4 random crop + horizontal flip.
"""

from configs.base import get_base_config


def get_cifar_config(dataset: str, model: str):
    config = get_base_config()
    config.model = model
    config.dataset = dataset
    config.train_split = "train"
    config.eval_split = "test"
    config.image_size = 32
    config.preprocess = "cifar"
    config.shuffle_buffer_size = 50_000
    config.batch_size = 128
    config.eval_batch_size = 400  # 10,000 test images: 25 batches.
    config.num_epochs = 300.0
    config.base_learning_rate = 0.1
    config.base_batch_size = 128
    config.lr_schedule = "step"
    config.lr_decay_epochs = (150, 225)
    config.lr_decay_factor = 0.1
    config.weight_decay = 5e-4
    # The official Torch code decays every parameter, BatchNorm included.
    config.weight_decay_bn = True
    config.weight_decay_bias = True
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    return config
