"""ResNeXt-101 (64x4d) on ImageNet-1k, the paper's recipe.

Paper result (single 224 crop): top-1 error 20.4%.

Run (8 accelerators; ImageNet must be prepared by TFDS from the downloaded
tars, see the error message or the README):
  python -m train --config configs/imagenet_resnext101_64x4d.py --workdir runs/imagenet_resnext101_64x4d \
      --config.data_dir=$HOME/tensorflow_datasets \
      --config.manual_dir=$HOME/imagenet_tars
"""

from configs.imagenet_base import get_imagenet_config


def get_config():
    return get_imagenet_config("resnext101_64x4d")
