"""ResNeXt-29 16x64d on CIFAR-10, the paper's recipe (Table 7).

Paper result: CIFAR-10 test error 3.58% (68.1M parameters).

Run (8 accelerators; any device count dividing 128 works):
  python -m train --config configs/cifar10_resnext29_16x64d.py \
      --workdir runs/cifar10_resnext29_16x64d
The data set is fetched by TFDS on first use with --config.download=True, or
read from --config.data_dir.
"""

from configs.cifar_base import get_cifar_config


def get_config():
    return get_cifar_config("cifar10", "resnext29_16x64d")
