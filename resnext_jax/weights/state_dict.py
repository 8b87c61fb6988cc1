"""Weight conversion between our variables and torchvision/timm state dicts.

torchvision's and timm's ResNet/ResNeXt use the same parameter names, and ours
map to them one to one (see `resnext_jax.models.resnext`), so conversion is a
table plus three layout rules. timm's variants add its names: the deep stem's
``conv1.0`` ... ``conv1.6``, the average-pool shortcut's ``downsample.1``
(conv) and ``downsample.2`` (BN) behind its parameter-free pool
``downsample.0``, and the attention's ``se.fc1``/``se.fc2`` (SE) or
``se.conv`` (ECA).

* convolution kernels: ours HWIO ``(kh, kw, in/G, out)``, torch OIHW
  ``(out, in/G, kh, kw)``; ECA's 1-D kernel ``(k, 1, 1)``, torch ``(1, 1, k)``;
* the classifier: ours ``(in, out)``, torch ``(out, in)``;
* BatchNorm: ``scale``/``bias`` in ``params`` and ``mean``/``var`` in
  ``batch_stats`` are torch's ``weight``/``bias``/``running_mean``/
  ``running_var``. torch's ``num_batches_tracked`` counter has no counterpart:
  it is accepted (and ignored) on load and written as 0 on save.

Checkpoints are read from ``.safetensors`` with numpy only, or from
``.pth``/``.pt``/``.bin`` files and in-memory state dicts when torch is
installed.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnext_jax.weights.block_forms import convert_block_form
from resnext_jax._files import atomic_path
from resnext_jax.weights.pth import UnsafePickleError, read_pth
from resnext_jax.models.resnext import ResNeXt

HEAD_MODES = ("keep", "reinit", "drop")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
_NUM_BATCHES_TRACKED = "num_batches_tracked"
# Leaf names: ours (collection, leaf) -> torch's parameter or buffer name.
_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_MAX_LISTED = 20  # keys listed per kind in a mismatch error


class StateDictMismatchError(ValueError):
    """A checkpoint does not fit the model: keys missing, unexpected or of the
    wrong shape. The offending torch keys are in ``missing``, ``unexpected``
    and ``mismatched`` (key -> (checkpoint shape, expected shape))."""

    def __init__(self, missing, unexpected, mismatched, hint=""):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = dict(mismatched)
        lines = ["the checkpoint does not fit the model:"]
        lines += _listing("missing key", self.missing)
        lines += _listing("unexpected key", self.unexpected)
        lines += _listing(
            "wrong shape",
            [f"{k}: checkpoint {tuple(a)}, model expects {tuple(b)}"
             for k, (a, b) in self.mismatched.items()])
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


def _listing(kind, items):
    if not items:
        return []
    shown = [f"  {kind}: {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"  ... and {len(items) - _MAX_LISTED} more "
                     f"{kind}s ({len(items)} in all)")
    return shown


# ---------------------------------------------------------------------------
# Names.

def _torch_module_name(path: tuple[str, ...], avg_down: bool = False) -> str:
    """Our module path -> torch's dotted module name."""
    parts = []
    for i, name in enumerate(path):
        block = re.fullmatch(r"layer(\d+)_(\d+)", name)
        stem_layer = re.fullmatch(r"(?:conv|bn)_(\d)", name)
        if block:
            parts += [f"layer{block.group(1)}", block.group(2)]
        elif i and path[i - 1] == "downsample" and name in ("conv", "bn"):
            # torchvision's downsample is nn.Sequential(conv, bn); timm's
            # average-pool one is nn.Sequential(pool, conv, bn).
            parts.append(str(("conv", "bn").index(name) + int(avg_down)))
        elif i == 1 and path[0] == "conv1" and stem_layer:
            # timm's deep stem: conv1 = nn.Sequential(conv, bn, relu, ...).
            parts.append(stem_layer.group(1))
        else:
            parts.append(name)
    return ".".join(parts)


def _key_table(model: ResNeXt) -> dict[str, tuple[str, tuple, tuple]]:
    """torch key -> (collection, our path, our shape), for a form-C model."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, 32, 32, 3), jnp.float32)))
    table = {}
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(
            shapes.get(collection, {}))[0]
        for key_path, leaf in flat:
            path = tuple(k.key for k in key_path)
            torch_leaf = _LEAF_TO_TORCH[(collection, path[-1])]
            key = (f"{_torch_module_name(path[:-1], model.avg_down)}."
                   f"{torch_leaf}")
            table[key] = (collection, path, tuple(leaf.shape))
    return table


def _bn_modules(table) -> list[str]:
    """torch names of the BatchNorm modules (they own num_batches_tracked)."""
    return sorted({k.rsplit(".", 1)[0] for k, (c, _, _) in table.items()
                   if c == "batch_stats"})


def _is_head(key: str) -> bool:
    return key.startswith("fc.")


# ---------------------------------------------------------------------------
# Layouts.

def _to_torch_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv kernel HWIO -> OIHW
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 3:  # 1-D conv kernel WIO -> OIW
        return value.transpose(2, 1, 0)
    if value.ndim == 2:  # dense kernel (in, out) -> (out, in)
        return value.T
    return value


def _from_torch_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 3:  # OIW -> WIO
        return value.transpose(2, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def _torch_shape(shape: tuple) -> tuple:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 3:
        return shape[::-1]
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


# ---------------------------------------------------------------------------
# Reading checkpoints.

def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; no torch import needed
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _unwrap(checkpoint: Mapping) -> Mapping:
    """The state dict inside common training-checkpoint wrappers."""
    for wrapper in ("state_dict", "model", "model_state_dict"):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping) and not any(
                hasattr(v, "shape") for v in checkpoint.values()):
            return _unwrap(inner)
    return checkpoint


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a state dict file into numpy arrays.

    ``.safetensors`` is read with numpy; ``.pth``/``.pt``/``.bin``/``.ckpt``/
    ``.tar`` without torch, by an unpickler that accepts tensors and plain
    containers only and executes no code (`resnext_jax.weights.pth`).
    Wrappers such as ``{"state_dict": ...}`` and DataParallel's ``module.``
    prefix are removed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist.")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
        except ImportError as e:
            raise ImportError(
                f"reading {path!r} needs the safetensors package: "
                "pip install safetensors") from e
        try:
            state = load_file(path)
        except Exception as e:  # pylint: disable=broad-except
            # SafetensorError (bad header, truncated data), OSError: the
            # file, not the caller, is at fault; say which file.
            raise ValueError(
                f"{path!r} is not a readable .safetensors file ({e}); it may "
                "be truncated or damaged: download or convert it "
                "again.") from None
    elif path.endswith(TORCH_SUFFIXES):
        try:
            state = read_pth(path)
        except UnsafePickleError as e:
            raise ValueError(
                f"{e}. A whole model saved with torch.save(model)? Save "
                "model.state_dict() instead.") from None
        if not isinstance(state, Mapping):
            raise ValueError(
                f"{path!r} holds a {type(state).__name__}, not a state dict "
                "(a mapping of tensor names to tensors).")
    else:
        raise ValueError(
            f"checkpoint {path!r} has an unknown suffix; expected "
            f".safetensors or one of {TORCH_SUFFIXES}.")
    return as_numpy_state_dict(state)


def as_numpy_state_dict(state: Mapping) -> dict[str, np.ndarray]:
    """A state dict (torch tensors or arrays) as ``{key: np.ndarray}``."""
    if not isinstance(state, Mapping):
        raise ValueError(
            f"a state dict must be a mapping from names to tensors; got "
            f"{type(state).__name__}.")
    state = _unwrap(state)
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: _to_numpy(v) for k, v in state.items()}


# ---------------------------------------------------------------------------
# Public conversion.

def _check_head(head: str, model: ResNeXt):
    if head not in HEAD_MODES:
        raise ValueError(
            f"head={head!r} is not a head mode; choose one of {HEAD_MODES} "
            "(keep: load the checkpoint's classifier; reinit: fresh classifier "
            "of model.num_classes outputs; drop: no classifier, for "
            "num_classes=0).")
    if head == "reinit" and model.num_classes == 0:
        raise ValueError(
            "head='reinit' needs a model with a classifier, but "
            "model.num_classes=0; use head='drop'.")
    if head == "drop" and model.num_classes != 0:
        raise ValueError(
            f"head='drop' needs a model without a classifier, but "
            f"model.num_classes={model.num_classes}; build the model with "
            "num_classes=0, or use head='reinit' for a fresh classifier.")


def _fresh_head(model: ResNeXt, in_features: int, rng) -> dict:
    """A classifier initialized as the model's own ``fc`` would be."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    dense = nn.Dense(model.num_classes, dtype=jnp.float32,
                     param_dtype=model.param_dtype)
    return dense.init(rng, jnp.zeros((1, in_features), jnp.float32))["params"]


def _set(tree: dict, path: tuple, value):
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _form_c(model: ResNeXt) -> ResNeXt:
    return model if model.block_form == "C" else model.clone(block_form="C")


def load_torch_state_dict(state_dict_or_path: Mapping | str | os.PathLike,
                          model: ResNeXt, *, head: str = "keep",
                          rng: jax.Array | int = 0) -> dict:
    """Converts a torchvision/timm ResNet or ResNeXt checkpoint to variables.

    Every checkpoint tensor is accounted for: a key the model lacks, a model
    parameter the checkpoint lacks, or a tensor of the wrong shape raises
    `StateDictMismatchError` naming all such keys.

    Args:
      state_dict_or_path: a state dict (torch tensors or numpy arrays) or
        the path of a ``.safetensors`` / ``.pth`` file (see
        `read_state_dict`).
      model: the `ResNeXt` to load into. Models in block form A or B
        receive the same weights, converted exactly.
      head: "keep" loads the classifier (its shape must match); "reinit"
        ignores the checkpoint's classifier and initializes a fresh one with
        ``model.num_classes`` outputs (fine-tuning); "drop" ignores it for a
        model built with ``num_classes=0``.
      rng: key (or seed) for the fresh classifier of ``head="reinit"``.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` for ``model.apply``.
    """
    _check_head(head, model)
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        state = read_state_dict(state_dict_or_path)
    else:
        state = as_numpy_state_dict(state_dict_or_path)

    table = _key_table(_form_c(model))
    optional = {f"{m}.{_NUM_BATCHES_TRACKED}" for m in _bn_modules(table)}
    ignored_head = head != "keep"
    missing, mismatched = [], {}
    variables: dict = {"params": {}, "batch_stats": {}}
    dtypes = {"params": model.param_dtype, "batch_stats": jnp.float32}
    for key, (collection, path, shape) in table.items():
        if ignored_head and _is_head(key):
            continue  # a fresh classifier replaces the checkpoint's
        if key not in state:
            missing.append(key)
            continue
        value = state[key]
        expected = _torch_shape(shape)
        if tuple(value.shape) != expected:
            mismatched[key] = (value.shape, expected)
            continue
        value = np.asarray(_from_torch_layout(value), dtype=dtypes[collection])
        _set(variables[collection], path, value)
    unexpected = [k for k in state if k not in table and k not in optional
                  and not (ignored_head and _is_head(k))]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(
            missing, unexpected, mismatched,
            _mismatch_hint(model, missing, unexpected, mismatched, head))

    if head == "reinit":
        in_features = table["fc.weight"][2][0]
        variables["params"]["fc"] = _fresh_head(model, in_features, rng)
    variables = jax.tree.map(jnp.asarray, variables)
    if model.block_form != "C":
        variables = convert_block_form(variables, to=model.block_form)
    return variables


def _mismatch_hint(model, missing, unexpected, mismatched, head) -> str:
    head_keys = [k for k in list(mismatched) + unexpected if _is_head(k)]
    if head == "keep" and head_keys and len(head_keys) == len(
            list(mismatched) + unexpected):
        if model.num_classes == 0:
            return ("Only the classifier differs: pass head='drop' to ignore "
                    "the checkpoint's classifier.")
        return ("Only the classifier differs: pass head='reinit' for a fresh "
                f"{model.num_classes}-way classifier, or build the model with "
                "the checkpoint's num_classes.")
    fields = _architecture_hint(model, missing + list(mismatched),
                                unexpected)
    if fields:
        return (f"The checkpoint's architecture differs from the model's: "
                f"build the model with {fields} (or use the timm name of the "
                "checkpoint's model, see rx.list_models()).")
    if missing and len(missing) > 5 and len(unexpected) > 5:
        return ("Many keys differ: is the checkpoint for another depth or "
                "architecture than the model?")
    return ""


def _architecture_hint(model, missing, unexpected) -> str:
    """The model fields a checkpoint's extra keys point to, as ``a=b, ...``."""
    keys = set(missing) | set(unexpected)
    fields = {}
    stem = {"conv1.0.weight": ("deep", "deep_tiered"),
            "conv1.weight": ("",)}
    for key, stem_types in stem.items():
        if key in unexpected and model.stem_type not in stem_types:
            fields["stem_type"] = " or ".join(map(repr, stem_types))
    if any(".downsample.2." in k for k in unexpected) and not model.avg_down:
        fields["avg_down"] = "True"
    if (any(".downsample.0.weight" in k for k in unexpected)
            and model.avg_down):
        fields["avg_down"] = "False"
    for attn, marker in (("se", ".se.fc1."), ("eca", ".se.conv.")):
        if (any(marker in k for k in unexpected)
                and model.attn_layer != attn):
            fields["attn_layer"] = repr(attn)
    if (model.attn_layer and not any(".se." in k for k in unexpected)
            and any(".se." in k for k in keys)):
        fields["attn_layer"] = "None"
    return ", ".join(f"{k}={v}" for k, v in fields.items())


def to_torch_state_dict(variables: Mapping, model: ResNeXt, *,
                        num_batches_tracked: bool = True
                        ) -> dict[str, np.ndarray]:
    """Our variables as a torchvision/timm-named state dict of numpy arrays.

    Load it in PyTorch with ``tv_model.load_state_dict({k: torch.from_numpy(v)
    for k, v in sd.items()})``. Variables of a form-A/B model are converted to
    form C first; every variable must be used exactly once.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` of ``model``.
      model: the `ResNeXt` the variables belong to.
      num_batches_tracked: also write torch's BatchNorm step counters (as 0),
        so that ``load_state_dict(strict=True)`` sees every buffer it has.
    """
    variables = convert_block_form(variables, to="C")
    table = _key_table(_form_c(model))
    flat = {}
    for collection in ("params", "batch_stats"):
        leaves = jax.tree_util.tree_flatten_with_path(
            variables.get(collection, {}))[0]
        for key_path, leaf in leaves:
            flat[(collection, tuple(k.key for k in key_path))] = leaf
    state, missing, mismatched = {}, [], {}
    for key, (collection, path, shape) in table.items():
        value = flat.pop((collection, path), None)
        if value is None:
            missing.append("/".join((collection,) + path))
            continue
        if tuple(value.shape) != shape:
            mismatched["/".join((collection,) + path)] = (value.shape, shape)
            continue
        state[key] = np.ascontiguousarray(_to_torch_layout(np.asarray(value)))
    unexpected = ["/".join((c,) + p) for c, p in flat]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(
            missing, unexpected, mismatched,
            "The variables do not belong to this model (names are ours: "
            "collection/module/leaf).")
    if num_batches_tracked:
        for module in _bn_modules(table):
            state[f"{module}.{_NUM_BATCHES_TRACKED}"] = np.zeros((), np.int64)
    return state


def save_safetensors(variables: Mapping, model: ResNeXt,
                     path: str | os.PathLike) -> None:
    """Writes variables as a torchvision/timm-named ``.safetensors`` file,
    replacing ``path`` whole (one rename) or not at all."""
    try:
        from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "writing .safetensors needs the safetensors package: "
            "pip install safetensors") from e
    state = to_torch_state_dict(variables, model)
    with atomic_path(path) as tmp:
        save_file(state, os.fspath(tmp))
