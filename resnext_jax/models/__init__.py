"""Models: the ResNeXt network, its bottleneck block, the registry of named
variants, and parameter and multiply-add counts."""

from resnext_jax.models.blocks import Bottleneck
from resnext_jax.models.counting import (count_macs, count_params,
                                         match_width, summarize)
from resnext_jax.models.registry import (create_model, init_variables,
                                         list_models, model_config)
from resnext_jax.models.fields import (ATTN_LAYERS, BLOCK_FORMS,
                                       OUTPUT_STRIDES, REMAT_POLICIES,
                                       STEM_TYPES)
from resnext_jax.models.resnext import ResNeXt

__all__ = ("ATTN_LAYERS", "BLOCK_FORMS", "Bottleneck", "OUTPUT_STRIDES",
           "REMAT_POLICIES", "ResNeXt", "STEM_TYPES", "count_macs",
           "count_params", "create_model", "init_variables", "list_models",
           "match_width", "model_config", "summarize")
