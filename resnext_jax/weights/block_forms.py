"""Exact weight conversion between the block forms A, B and C.

BatchNorm acts per channel, so a BN over the concatenation of the branches
equals one BN per branch over its own channels: forms A, B and C compute
the same function when their weights are sliced from one another (see
`resnext_jax.models.blocks` for the forms). Form C's grouped 3x3 holds branch
``i``'s 3x3 as group ``i``; form A's summed 1x1s are one 1x1 over the
concatenated branches.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from resnext_jax.models.fields import check_block_form


def _branch_keys(block: dict) -> list[str]:
    keys = [k for k in block if k.startswith("branch_")]
    return sorted(keys, key=lambda k: int(k.split("_")[1]))


def _form_of(block: dict) -> str:
    if "conv2" in block:
        return "C"
    if not _branch_keys(block):
        raise ValueError(
            f"cannot tell the block form of a block with keys "
            f"{sorted(block)}: expected 'conv2' (form C) or 'branch_*'.")
    return "B" if "conv3" in block else "A"


def _concat_leaves(dicts: list[dict], axis: int) -> dict:
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *dicts)


def _split_leaves(tree: dict, n: int, axis: int) -> list[dict]:
    leaves, treedef = jax.tree.flatten(tree)
    pieces = [jnp.split(x, n, axis=axis) for x in leaves]  # split each once
    return [jax.tree.unflatten(treedef, [p[i] for p in pieces])
            for i in range(n)]


def _params_block_to_c(block: dict) -> dict:
    form = _form_of(block)
    if form == "C":
        return dict(block)
    branches = [block[k] for k in _branch_keys(block)]
    out = {k: v for k, v in block.items() if not k.startswith("branch_")}
    out["conv1"] = _concat_leaves([b["conv1"] for b in branches], axis=-1)
    out["bn1"] = _concat_leaves([b["bn1"] for b in branches], axis=0)
    # Branch i's 3x3 maps its own d channels to d channels: that is group i.
    out["conv2"] = _concat_leaves([b["conv2"] for b in branches], axis=-1)
    out["bn2"] = _concat_leaves([b["bn2"] for b in branches], axis=0)
    if form == "A":
        # Summing branch outputs == one 1x1 over the concatenated inputs.
        out["conv3"] = _concat_leaves([b["conv3"] for b in branches], axis=2)
    return out


def _params_block_from_c(block: dict, form: str) -> dict:
    if form == "C":
        return dict(block)
    kernel = block["conv2"]["kernel"]
    groups = kernel.shape[3] // kernel.shape[2]
    out = {k: v for k, v in block.items()
           if k not in ("conv1", "bn1", "conv2", "bn2", "conv3")}
    conv1 = _split_leaves(block["conv1"], groups, axis=-1)
    bn1 = _split_leaves(block["bn1"], groups, axis=0)
    conv2 = _split_leaves(block["conv2"], groups, axis=-1)
    bn2 = _split_leaves(block["bn2"], groups, axis=0)
    conv3 = (_split_leaves(block["conv3"], groups, axis=2) if form == "A"
             else None)
    for i in range(groups):
        branch = {"conv1": conv1[i], "bn1": bn1[i], "conv2": conv2[i],
                  "bn2": bn2[i]}
        if form == "A":
            branch["conv3"] = conv3[i]
        out[f"branch_{i}"] = branch
    if form == "B":
        out["conv3"] = block["conv3"]
    return out


def _stats_block_to_c(stats: dict) -> dict:
    branches = [stats[k] for k in _branch_keys(stats)]
    if not branches:
        return dict(stats)
    out = {k: v for k, v in stats.items() if not k.startswith("branch_")}
    out["bn1"] = _concat_leaves([b["bn1"] for b in branches], axis=0)
    out["bn2"] = _concat_leaves([b["bn2"] for b in branches], axis=0)
    return out


def _stats_block_from_c(stats: dict, form: str, groups: int) -> dict:
    if form == "C":
        return dict(stats)
    out = {k: v for k, v in stats.items() if k not in ("bn1", "bn2")}
    bn1 = _split_leaves(stats["bn1"], groups, axis=0)
    bn2 = _split_leaves(stats["bn2"], groups, axis=0)
    for i in range(groups):
        out[f"branch_{i}"] = {"bn1": bn1[i], "bn2": bn2[i]}
    return out


def _is_block(tree: Any) -> bool:
    return isinstance(tree, dict) and "bn3" in tree


def convert_block_form(variables: dict, to: str) -> dict:
    """Converts model variables between block forms A, B and C, exactly.

    The source form of each block is read from the variables themselves, so
    any form converts to any other; parameters and ``batch_stats`` are
    sliced or concatenated, never recomputed, so ``C -> A -> C`` returns
    identical arrays.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` of a ResNeXt (or a
        single block).
      to: the target form, "A", "B" or "C".

    Returns:
      Variables for the same model built with ``block_form=to``.
    """
    check_block_form(to)
    variables = _to_dict(variables)
    if "params" not in variables:
        raise ValueError(
            "variables must contain a 'params' collection; got collections "
            f"{sorted(variables)}.")

    def walk(params, stats):
        if _is_block(params):
            groups_c = _params_block_to_c(params)
            kernel = groups_c["conv2"]["kernel"]
            groups = kernel.shape[3] // kernel.shape[2]
            new_params = _params_block_from_c(groups_c, to)
            new_stats = None
            if stats is not None:
                new_stats = _stats_block_from_c(_stats_block_to_c(stats), to,
                                                groups)
            return new_params, new_stats
        if not isinstance(params, dict):
            return params, stats
        new_params, new_stats = {}, ({} if stats is not None else None)
        for key, sub in params.items():
            sub_stats = stats.get(key) if stats is not None else None
            p, s = walk(sub, sub_stats)
            new_params[key] = p
            if s is not None:
                new_stats[key] = s
        if stats is not None:
            for key, sub in stats.items():  # stats-only subtrees, if any
                new_stats.setdefault(key, sub)
        return new_params, new_stats

    params, stats = walk(variables["params"], variables.get("batch_stats"))
    out = dict(variables)
    out["params"] = params
    if stats is not None:
        out["batch_stats"] = stats
    return out


def _to_dict(tree):
    if hasattr(tree, "unfreeze"):
        tree = tree.unfreeze()
    if isinstance(tree, dict):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree
