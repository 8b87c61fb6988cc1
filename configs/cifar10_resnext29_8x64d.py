"""ResNeXt-29 8x64d on CIFAR-10, the paper's recipe (Table 7).

Paper result: CIFAR-10 test error 3.65% (34.4M parameters).

Run (8 accelerators; any device count dividing 128 works):
  python -m train --config configs/cifar10_resnext29_8x64d.py \
      --workdir runs/cifar10_resnext29_8x64d
The data set is fetched by TFDS on first use with --config.download=True, or
read from --config.data_dir.
"""

from configs.cifar_base import get_cifar_config


def get_config():
    return get_cifar_config("cifar10", "resnext29_8x64d")
