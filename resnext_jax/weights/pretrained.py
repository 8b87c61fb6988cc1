"""Pretrained weights by name, from the Hugging Face Hub.

::

    model, variables, preprocessing, class_names = rx.load_pretrained(
        "resnext50_32x4d.tv_in1k")   # or "resnext50_32x4d": timm's default

A name is a registry model and a tag, as timm names its weights
(``resnext50_32x4d.a1h_in1k``); without a tag, timm's default weights for
the model. The file is timm's ``model.safetensors`` from the Hub repository
``timm/<name>.<tag>``, downloaded and cached by ``huggingface_hub`` (its
cache, ``HF_HOME``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply; a cached
file loads offline). It is read with numpy alone (no torch) and converted
as any timm state dict. The eval preprocessing is the weights' own (timm's
``pretrained_cfg``: interpolation, crop fraction, input size).
"""

from __future__ import annotations

import math
import os

from resnext_jax.inference.preprocessing import Preprocessing

HUB_ORGANIZATION = "timm"
WEIGHTS_FILE = "model.safetensors"

# "<model>.<tag>" -> (interpolation, crop_pct, input size), the weights'
# eval settings in timm's pretrained_cfg (tests/test_hub.py checks them
# against timm when it is installed). Mean and std are ImageNet's.
PRETRAINED = {
    "resnet50.a1_in1k": ("bicubic", 0.95, 224),
    "resnet50.a1h_in1k": ("bicubic", 0.9, 176),
    "resnet50.a2_in1k": ("bicubic", 0.95, 224),
    "resnet50.a3_in1k": ("bicubic", 0.95, 160),
    "resnet50.am_in1k": ("bicubic", 0.875, 224),
    "resnet50.b1k_in1k": ("bicubic", 0.95, 224),
    "resnet50.b2k_in1k": ("bicubic", 0.95, 224),
    "resnet50.bt_in1k": ("bicubic", 0.875, 224),
    "resnet50.c1_in1k": ("bicubic", 0.95, 224),
    "resnet50.c2_in1k": ("bicubic", 0.95, 224),
    "resnet50.d_in1k": ("bicubic", 0.95, 224),
    "resnet50.fb_ssl_yfcc100m_ft_in1k": ("bilinear", 0.875, 224),
    "resnet50.fb_swsl_ig1b_ft_in1k": ("bilinear", 0.875, 224),
    "resnet50.gluon_in1k": ("bicubic", 0.875, 224),
    "resnet50.ra_in1k": ("bicubic", 0.875, 224),
    "resnet50.ram_in1k": ("bicubic", 0.875, 224),
    "resnet50.tv2_in1k": ("bilinear", 0.875, 176),
    "resnet50.tv_in1k": ("bilinear", 0.875, 224),
    "resnet101.a1_in1k": ("bicubic", 0.95, 224),
    "resnet101.a1h_in1k": ("bicubic", 0.95, 224),
    "resnet101.a2_in1k": ("bicubic", 0.95, 224),
    "resnet101.a3_in1k": ("bicubic", 0.95, 160),
    "resnet101.gluon_in1k": ("bicubic", 0.875, 224),
    "resnet101.tv2_in1k": ("bilinear", 0.875, 176),
    "resnet101.tv_in1k": ("bilinear", 0.875, 224),
    "resnet152.a1_in1k": ("bicubic", 0.95, 224),
    "resnet152.a1h_in1k": ("bicubic", 0.95, 224),
    "resnet152.a2_in1k": ("bicubic", 0.95, 224),
    "resnet152.a3_in1k": ("bicubic", 0.95, 160),
    "resnet152.gluon_in1k": ("bicubic", 0.875, 224),
    "resnet152.tv2_in1k": ("bilinear", 0.875, 176),
    "resnet152.tv_in1k": ("bilinear", 0.875, 224),
    "resnext50_32x4d.a1_in1k": ("bicubic", 0.95, 224),
    "resnext50_32x4d.a1h_in1k": ("bicubic", 0.95, 224),
    "resnext50_32x4d.a2_in1k": ("bicubic", 0.95, 224),
    "resnext50_32x4d.a3_in1k": ("bicubic", 0.95, 160),
    "resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k": ("bilinear", 0.875, 224),
    "resnext50_32x4d.fb_swsl_ig1b_ft_in1k": ("bilinear", 0.875, 224),
    "resnext50_32x4d.gluon_in1k": ("bicubic", 0.875, 224),
    "resnext50_32x4d.ra_in1k": ("bicubic", 0.875, 224),
    "resnext50_32x4d.tv2_in1k": ("bilinear", 0.875, 176),
    "resnext50_32x4d.tv_in1k": ("bilinear", 0.875, 224),
    "resnext50d_32x4d.bt_in1k": ("bicubic", 0.875, 224),
    "resnext101_32x4d.fb_ssl_yfcc100m_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x4d.fb_swsl_ig1b_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x4d.gluon_in1k": ("bicubic", 0.875, 224),
    "resnext101_32x8d.fb_ssl_yfcc100m_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x8d.fb_swsl_ig1b_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x8d.fb_wsl_ig1b_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x8d.tv2_in1k": ("bilinear", 0.875, 176),
    "resnext101_32x8d.tv_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x16d.fb_ssl_yfcc100m_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x16d.fb_swsl_ig1b_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x16d.fb_wsl_ig1b_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_32x32d.fb_wsl_ig1b_ft_in1k": ("bilinear", 0.875, 224),
    "resnext101_64x4d.c1_in1k": ("bicubic", 0.95, 224),
    "resnext101_64x4d.gluon_in1k": ("bicubic", 0.875, 224),
    "resnext101_64x4d.tv_in1k": ("bilinear", 0.875, 224),
    "seresnext26d_32x4d.bt_in1k": ("bicubic", 0.875, 224),
    "seresnext26t_32x4d.bt_in1k": ("bicubic", 0.875, 224),
    "seresnext50_32x4d.gluon_in1k": ("bicubic", 0.875, 224),
    "seresnext50_32x4d.racm_in1k": ("bicubic", 0.875, 224),
    "seresnext101_32x4d.gluon_in1k": ("bicubic", 0.875, 224),
    "seresnext101_32x8d.ah_in1k": ("bicubic", 0.95, 224),
    "seresnext101_64x4d.gluon_in1k": ("bicubic", 0.875, 224),
    "seresnext101d_32x8d.ah_in1k": ("bicubic", 0.95, 224),
}
# timm's default weights of each model.
DEFAULT_TAGS = {
    "resnet101": "a1h_in1k",
    "resnet152": "a1h_in1k",
    "resnet50": "a1_in1k",
    "resnext101_32x16d": "fb_wsl_ig1b_ft_in1k",
    "resnext101_32x32d": "fb_wsl_ig1b_ft_in1k",
    "resnext101_32x4d": "fb_ssl_yfcc100m_ft_in1k",
    "resnext101_32x8d": "tv_in1k",
    "resnext101_64x4d": "c1_in1k",
    "resnext50_32x4d": "a1h_in1k",
    "resnext50d_32x4d": "bt_in1k",
    "seresnext101_32x4d": "gluon_in1k",
    "seresnext101_32x8d": "ah_in1k",
    "seresnext101_64x4d": "gluon_in1k",
    "seresnext101d_32x8d": "ah_in1k",
    "seresnext26d_32x4d": "bt_in1k",
    "seresnext26t_32x4d": "bt_in1k",
    "seresnext50_32x4d": "racm_in1k",
}


def resolve_name(name: str) -> str | None:
    """``"<model>.<tag>"`` for a name of published weights (a model alone
    takes its default tag); None when ``name`` names none."""
    if name in PRETRAINED:
        return name
    if name in DEFAULT_TAGS:
        return f"{name}.{DEFAULT_TAGS[name]}"
    return None


def list_pretrained() -> list[str]:
    """Every ``"<model>.<tag>"`` of published weights, sorted."""
    return sorted(PRETRAINED)


def preprocessing_of(name: str) -> Preprocessing:
    """The eval spec of published weights ``name`` (``"<model>.<tag>"``):
    resize the shorter side to ``floor(size / crop_pct)``, as timm does."""
    interpolation, crop_pct, size = PRETRAINED[name]
    return Preprocessing(resize_size=math.floor(size / crop_pct),
                         crop_size=size, interpolation=interpolation)


def download(name: str) -> str:
    """The local path of the weights file of ``name`` (``"<model>.<tag>"``
    or a model), downloading it once into ``huggingface_hub``'s cache."""
    resolved = resolve_name(name)
    if resolved is None:
        raise ValueError(
            f"no published weights are named {name!r}; known names are "
            "'<model>.<tag>' from rx.list_pretrained(), or a model "
            f"alone for its default tag ({', '.join(sorted(DEFAULT_TAGS))}).")
    try:
        from huggingface_hub import hf_hub_download  # pylint: disable=import-outside-toplevel
        from huggingface_hub.errors import (  # pylint: disable=import-outside-toplevel
            HfHubHTTPError, LocalEntryNotFoundError)
    except ImportError as e:
        raise ImportError(
            "downloading pretrained weights needs huggingface_hub: "
            "pip install huggingface_hub") from e
    repo = f"{HUB_ORGANIZATION}/{resolved}"
    # HF_ENDPOINT is read now, not when huggingface_hub was imported.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        return hf_hub_download(repo, WEIGHTS_FILE, endpoint=endpoint)
    except LocalEntryNotFoundError:
        raise OSError(
            f"cannot download {WEIGHTS_FILE} of {repo} (no network, or "
            "HF_HUB_OFFLINE set) and it is not in the cache. Connect (or "
            "set HF_ENDPOINT to a mirror), or copy the file here and load "
            f"it with rx.load_pretrained(path, {resolved.split('.')[0]!r})."
        ) from None
    except HfHubHTTPError as e:
        raise OSError(f"downloading {WEIGHTS_FILE} of {repo} failed: "
                      f"{' '.join(str(e).split())[:300]}") from None


# The eval preprocessing of weights files given by model name alone.
TORCHVISION_NAMES = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "resnext101_64x4d")
# timm name -> (interpolation, crop_pct), from timm.models.get_pretrained_cfg
# (tests/test_finetune.py checks them against timm when it is installed).
# Mean and std are ImageNet's for all of them.
TIMM_PREPROCESSING = {
    "resnext101_32x4d": ("bilinear", 0.875),
    "resnext101_32x16d": ("bilinear", 0.875),
    "resnext101_32x32d": ("bilinear", 0.875),
    "resnext50d_32x4d": ("bicubic", 0.875),
    "seresnext26d_32x4d": ("bicubic", 0.875),
    "seresnext26t_32x4d": ("bicubic", 0.875),
    "seresnext50_32x4d": ("bicubic", 0.875),
    "seresnext101_32x4d": ("bicubic", 0.875),
    "seresnext101_64x4d": ("bicubic", 0.875),
    "seresnext101_32x8d": ("bicubic", 0.95),
    "seresnext101d_32x8d": ("bicubic", 0.95),
    "ecaresnext26t_32x4d": ("bicubic", 0.875),
    "ecaresnext50t_32x4d": ("bicubic", 0.875),
}


def pretrained_preprocessing(name: str, crop_size: int = 224
                             ) -> Preprocessing | None:
    """The eval spec for published weights of registry model ``name`` at
    ``crop_size``; None for a name without published weights."""
    if name in TORCHVISION_NAMES:
        return Preprocessing.imagenet(crop_size)
    if name not in TIMM_PREPROCESSING:
        return None
    interpolation, crop_pct = TIMM_PREPROCESSING[name]
    return Preprocessing(resize_size=int(round(crop_size / crop_pct)),
                         crop_size=crop_size, interpolation=interpolation)
