"""Weights: pretrained weights by name, model bundles, torchvision/timm state
dicts (both ways), and exact conversion between the block forms."""

from resnext_jax.weights.block_forms import convert_block_form
from resnext_jax.weights.bundle import (Pretrained, load_pretrained,
                                        save_pretrained)
from resnext_jax.weights.state_dict import (StateDictMismatchError,
                                            load_torch_state_dict,
                                            read_state_dict, save_safetensors,
                                            to_torch_state_dict)

__all__ = ("Pretrained", "StateDictMismatchError", "convert_block_form",
           "load_pretrained", "load_torch_state_dict", "read_state_dict",
           "save_pretrained", "save_safetensors", "to_torch_state_dict")
