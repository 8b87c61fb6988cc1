"""Published weights by name: torchvision's and timm's.

::

    model, variables, preprocessing, class_names = rx.create_model(
        "resnext50_32x4d", pretrained=True)
    rx.load_pretrained("resnext50_32x4d.IMAGENET1K_V1")   # the same, by name

A name is ``"<model>.<tag>"``; a model alone means its default weights.

* torchvision's tags ``IMAGENET1K_V1`` and ``IMAGENET1K_V2``: the ``.pth``
  files torchvision publishes, downloaded into `weights_dir` with a
  progress bar, checked against the SHA-256 prefix in their names, and read
  without torch (`resnext_jax.weights.pth`). A model's default is
  torchvision's own default (V2 where it exists).
* timm's tags (``a1h_in1k``, ``tv2_in1k``, ``fb_swsl_ig1b_ft_in1k``, ...):
  ``model.safetensors`` of the Hugging Face Hub repository
  ``timm/<model>.<tag>``, downloaded by ``huggingface_hub`` (its cache, or
  ``$RESNEXT_JAX_HOME/huggingface``; ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``
  apply) and checked against the SHA-256 the Hub publishes. A model that
  torchvision does not publish defaults to timm's default tag.

A cached file loads with no network. The eval preprocessing is the
weights' own: torchvision's transform, or timm's ``pretrained_cfg``.
"""

from __future__ import annotations

import math
import os
import pathlib
import re

from resnext_jax.inference.preprocessing import Preprocessing
from resnext_jax.weights import download

TORCHVISION_URL = "https://download.pytorch.org/models/"
TORCHVISION_TAGS = ("IMAGENET1K_V1", "IMAGENET1K_V2")
# model -> tag -> (file, resize size) from torchvision.models' weight enums
# (torchvision 0.2x; tests/test_pretrained.py checks them when it is
# installed). Every one crops 224 after a bilinear resize.
TORCHVISION_WEIGHTS = {
    "resnet50": {"IMAGENET1K_V1": ("resnet50-0676ba61.pth", 256),
                 "IMAGENET1K_V2": ("resnet50-11ad3fa6.pth", 232)},
    "resnet101": {"IMAGENET1K_V1": ("resnet101-63fe2227.pth", 256),
                  "IMAGENET1K_V2": ("resnet101-cd907fc2.pth", 232)},
    "resnet152": {"IMAGENET1K_V1": ("resnet152-394f9c45.pth", 256),
                  "IMAGENET1K_V2": ("resnet152-f82ba261.pth", 232)},
    "resnext50_32x4d": {
        "IMAGENET1K_V1": ("resnext50_32x4d-7cdf4587.pth", 256),
        "IMAGENET1K_V2": ("resnext50_32x4d-1a0047aa.pth", 232)},
    "resnext101_32x8d": {
        "IMAGENET1K_V1": ("resnext101_32x8d-8ba56ff5.pth", 256),
        "IMAGENET1K_V2": ("resnext101_32x8d-110c445d.pth", 232)},
    "resnext101_64x4d": {
        "IMAGENET1K_V1": ("resnext101_64x4d-173b62eb.pth", 232)},
}
TORCHVISION_CROP = 224

HUB_ORGANIZATION = "timm"
HUB_WEIGHTS_FILE = "model.safetensors"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# "<model>.<tag>" -> (interpolation, crop_pct, input size), the weights'
# eval settings in timm's pretrained_cfg (tests/test_hub.py checks them
# against timm when it is installed). Mean and std are ImageNet's.
TIMM_WEIGHTS = {
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
TIMM_DEFAULT_TAGS = {
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


def default_tag(model: str) -> str | None:
    """The tag ``pretrained=True`` loads for registry model ``model``:
    torchvision's default where torchvision publishes it, else timm's."""
    if model in TORCHVISION_WEIGHTS:
        return max(TORCHVISION_WEIGHTS[model])  # V2 over V1
    return TIMM_DEFAULT_TAGS.get(model)


def list_pretrained(model: str | None = None) -> list[str]:
    """Every ``"<model>.<tag>"`` of published weights, sorted; only
    ``model``'s when it is given."""
    names = [f"{m}.{tag}" for m, tags in TORCHVISION_WEIGHTS.items()
             for tag in tags] + list(TIMM_WEIGHTS)
    if model is not None:
        names = [n for n in names if n.split(".", 1)[0] == model]
    return sorted(names)


def resolve_name(name: str) -> tuple[str, str] | None:
    """``(model, tag)`` for a name of published weights (a model alone
    takes its default tag); None when ``name`` names none."""
    model, _, tag = str(name).partition(".")
    if not tag:
        tag = default_tag(model)
    if tag is None or f"{model}.{tag}" not in list_pretrained(model):
        return None
    return model, tag


def check_tag(model: str, tag: str | bool) -> str:
    """The tag that ``create_model(model, pretrained=tag)`` loads: ``True``
    is the default; a ValueError names the model's tags otherwise."""
    known = [n.split(".", 1)[1] for n in list_pretrained(model)]
    if tag is True:
        tag = default_tag(model)
    if tag not in known:
        if not known:
            raise ValueError(
                f"no published weights for {model!r}; models with weights: "
                f"{', '.join(sorted({n.split('.')[0] for n in list_pretrained()}))}.")
        raise ValueError(
            f"pretrained={tag!r} is not a tag of {model!r}; its weights are "
            f"{', '.join(map(repr, known))} (or pretrained=True for "
            f"{default_tag(model)!r}).")
    return tag


def preprocessing_of(model: str, tag: str) -> Preprocessing:
    """The eval spec the weights were published with: torchvision's
    transform, or timm's (shorter side to ``floor(size / crop_pct)``)."""
    if tag in TORCHVISION_TAGS:
        _, resize = TORCHVISION_WEIGHTS[model][tag]
        return Preprocessing(resize_size=resize, crop_size=TORCHVISION_CROP,
                             interpolation="bilinear")
    interpolation, crop_pct, size = TIMM_WEIGHTS[f"{model}.{tag}"]
    return Preprocessing(resize_size=math.floor(size / crop_pct),
                         crop_size=size, interpolation=interpolation)


def weights_dir() -> pathlib.Path:
    """Where torchvision's files are cached: ``torchvision/`` in
    `resnext_jax.weights.download.cache_dir` (``$RESNEXT_JAX_HOME``,
    else ``$XDG_CACHE_HOME/resnext_jax``, else ``~/.cache/resnext_jax``)."""
    return download.cache_dir() / "torchvision"


def weights_file(model: str, tag: str, *, progress: bool = True
                 ) -> pathlib.Path:
    """The local, verified file of published weights ``model.tag``,
    downloaded once."""
    if tag in TORCHVISION_TAGS:
        filename, _ = TORCHVISION_WEIGHTS[model][tag]
        return download.fetch(
            TORCHVISION_URL + filename,
            sha256=download.torchvision_hash_prefix(filename),
            directory=weights_dir(), progress=progress)
    return _hub_file(f"{model}.{tag}")


def _hub_file(name: str) -> pathlib.Path:
    try:
        from huggingface_hub import hf_hub_download  # pylint: disable=import-outside-toplevel
        from huggingface_hub.errors import (  # pylint: disable=import-outside-toplevel
            HfHubHTTPError, LocalEntryNotFoundError)
    except ImportError as e:
        raise ImportError(
            "downloading timm's weights needs huggingface_hub: "
            "pip install huggingface_hub") from e
    repo = f"{HUB_ORGANIZATION}/{name}"
    # Read now, not when huggingface_hub was imported.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    home = os.environ.get("RESNEXT_JAX_HOME")
    cache = pathlib.Path(home).expanduser() / "huggingface" if home else None
    url = (f"{endpoint or 'https://huggingface.co'}/{repo}/resolve/main/"
           f"{HUB_WEIGHTS_FILE}")
    try:
        path = pathlib.Path(hf_hub_download(repo, HUB_WEIGHTS_FILE,
                                            endpoint=endpoint,
                                            cache_dir=cache))
    except LocalEntryNotFoundError:
        raise download.WeightsUnavailableError(
            f"cannot download {url} (no network, or HF_HUB_OFFLINE set) and "
            "it is not in the cache; connect (or set HF_ENDPOINT to a "
            "mirror), or download the file by hand and load it with "
            f"rx.load_pretrained(path, {name.split('.')[0]!r}).") from None
    except HfHubHTTPError as e:
        raise download.WeightsUnavailableError(
            f"downloading {url} failed: "
            f"{' '.join(str(e).split())[:300]}") from None
    _check_hub_hash(path)
    return path


def _check_hub_hash(path: pathlib.Path) -> None:
    """huggingface_hub names each cached file after its ETag, which for the
    Hub's large (LFS) files is their SHA-256: the file must match it."""
    blob = path.resolve().name
    if _SHA256.match(blob):
        download.check_sha256(path, blob)


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
