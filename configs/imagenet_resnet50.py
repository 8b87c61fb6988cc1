"""ResNet-50 on ImageNet-1k, the paper's recipe.

Paper result (single 224 crop): top-1 error 23.9% (the ResNet-50 baseline of Table 3).

Run (8 accelerators; ImageNet must be prepared by TFDS from the downloaded
tars, see the error message or the README):
  python -m train --config configs/imagenet_resnet50.py --workdir runs/imagenet_resnet50 \
      --config.data_dir=$HOME/tensorflow_datasets \
      --config.manual_dir=$HOME/imagenet_tars
"""

from configs.imagenet_base import get_imagenet_config


def get_config():
    return get_imagenet_config("resnet50")
