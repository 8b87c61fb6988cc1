"""resnext_jax: ResNeXt (Xie et al., 2017) in JAX/Flax.

Reference: "Aggregated Residual Transformations for Deep Neural Networks",
https://arxiv.org/abs/1611.05431
"""

# The one version number: pyproject.toml reads it from here.
__version__ = "0.1.0"

from resnext_jax.blocks import ATTN_LAYERS
from resnext_jax.blocks import BLOCK_FORMS
from resnext_jax.blocks import Bottleneck
from resnext_jax.block_forms import convert_block_form
from resnext_jax.bundle import Pretrained
from resnext_jax.bundle import load_pretrained
from resnext_jax.bundle import save_pretrained
from resnext_jax.compilation_cache import enable_compilation_cache
from resnext_jax.batchnorm import BN_IMPLS
from resnext_jax.conv import CONV_IMPLS
from resnext_jax.conv import GroupedConv
from resnext_jax.conv import grouped_conv
from resnext_jax.conv import resolve_conv_impl
from resnext_jax.convert import StateDictMismatchError
from resnext_jax.convert import load_torch_state_dict
from resnext_jax.convert import read_state_dict
from resnext_jax.convert import save_safetensors
from resnext_jax.convert import to_torch_state_dict
from resnext_jax.models import STEM_TYPES
from resnext_jax.models import ResNeXt
from resnext_jax.models import create_model
from resnext_jax.models import init_variables
from resnext_jax.models import list_models
from resnext_jax.models import model_config
from resnext_jax.malloc import configure_malloc
from resnext_jax.counting import count_flops
from resnext_jax.counting import count_params
from resnext_jax.counting import match_width
from resnext_jax.counting import summarize
from resnext_jax.preprocessing import Preprocessing
from resnext_jax.pretrained_cfg import pretrained_preprocessing

__all__ = (
    "ATTN_LAYERS",
    "BLOCK_FORMS",
    "BN_IMPLS",
    "Bottleneck",
    "CONV_IMPLS",
    "GroupedConv",
    "Preprocessing",
    "Pretrained",
    "ResNeXt",
    "STEM_TYPES",
    "StateDictMismatchError",
    "configure_malloc",
    "convert_block_form",
    "count_flops",
    "count_params",
    "create_model",
    "enable_compilation_cache",
    "grouped_conv",
    "init_variables",
    "list_models",
    "load_pretrained",
    "load_torch_state_dict",
    "match_width",
    "model_config",
    "pretrained_preprocessing",
    "read_state_dict",
    "resolve_conv_impl",
    "save_pretrained",
    "save_safetensors",
    "summarize",
    "to_torch_state_dict",
)
