"""The paper's Table 5 ablation: ResNeXt blocks without their shortcut.

Train it from the repository's root (the module is found on the path):

  python -m train --config.model_kwargs.block_cls=examples.no_shortcut_block:NoShortcutBottleneck
"""

import resnext_jax as rx


class NoShortcutBottleneck(rx.Bottleneck):
    """The residual function alone: relu(bn3(conv3(...))), no identity."""

    def shortcut(self, x, train):
        del x, train
        return None
