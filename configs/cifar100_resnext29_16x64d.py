"""ResNeXt-29 16x64d on CIFAR-100, the paper's recipe (Table 7).

Paper result: CIFAR-100 test error 17.31% (68.1M parameters).

Run (8 accelerators; any device count dividing 128 works):
  python -m train --config configs/cifar100_resnext29_16x64d.py \
      --workdir runs/cifar100_resnext29_16x64d
The data set is fetched by TFDS on first use with --config.download=True, or
read from --config.data_dir.
"""

from configs.cifar_base import get_cifar_config


def get_config():
    return get_cifar_config("cifar100", "resnext29_16x64d")
