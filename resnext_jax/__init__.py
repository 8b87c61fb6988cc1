"""resnext_jax: ResNeXt (Xie et al., 2017) in JAX/Flax.

Reference: "Aggregated Residual Transformations for Deep Neural Networks",
https://arxiv.org/abs/1611.05431

The names here cover what a user does; the subpackages hold the rest:
`layers` (the grouped convolution, BatchNorm),
`models` (the network, its block, the registry, counts),
`weights` (pretrained weights, bundles, state dicts, block
forms) and `inference` (preprocessing, prediction,
export, serving).
"""

# The one version number: pyproject.toml reads it from here.
__version__ = "0.1.0"

from resnext_jax import inference, layers, models, weights
from resnext_jax.inference.export import export_model
from resnext_jax.inference.preprocessing import Preprocessing
from resnext_jax.models.blocks import Bottleneck
from resnext_jax.models.counting import match_width, summarize
from resnext_jax.models.registry import create_model, init_variables
from resnext_jax.models.registry import list_models
from resnext_jax.models.resnext import ResNeXt
from resnext_jax.weights.block_forms import convert_block_form
from resnext_jax.weights.bundle import load_pretrained, save_pretrained
from resnext_jax.weights.pretrained import list_pretrained
from resnext_jax.weights.state_dict import (load_torch_state_dict,
                                            to_torch_state_dict)

__all__ = (
    "Bottleneck",
    "Preprocessing",
    "ResNeXt",
    "convert_block_form",
    "create_model",
    "export_model",
    "init_variables",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "load_torch_state_dict",
    "match_width",
    "save_pretrained",
    "summarize",
    "to_torch_state_dict",
)
