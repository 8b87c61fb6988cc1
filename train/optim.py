"""Learning-rate schedules, the weight-decay mask and the optimizer."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def scaled_learning_rate(config: ml_collections.ConfigDict) -> float:
    """Linear scaling rule: lr = base_lr * batch_size / base_batch_size."""
    return (config.base_learning_rate * config.batch_size
            / config.base_batch_size)


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int,
                                  total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine to 0 or /``lr_decay_factor`` steps.

    Step boundaries are given in epochs (``config.lr_decay_epochs``), as in
    the paper ("divided by 10 at epochs 150 and 225").
    """
    peak = scaled_learning_rate(config)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, total_steps)
    if config.lr_schedule == "cosine":
        decay = optax.cosine_decay_schedule(
            peak, decay_steps=max(total_steps - warmup, 1))
    elif config.lr_schedule == "step":
        # Boundaries count from the start of training, warmup included.
        boundaries = {
            int(round(epoch * steps_per_epoch)) - warmup:
                config.lr_decay_factor
            for epoch in config.lr_decay_epochs}
        decay = optax.piecewise_constant_schedule(peak, boundaries)
    else:
        raise ValueError(f"config.lr_schedule (={config.lr_schedule!r}) must "
                         "be 'cosine' or 'step'.")
    if warmup == 0:
        return decay
    ramp = optax.linear_schedule(0.0, peak, warmup)
    return optax.join_schedules([ramp, decay], [warmup])


def weight_decay_mask(params: Any, decay_bn: bool = False,
                      decay_bias: bool = False) -> Any:
    """A tree of bools like ``params``: True where weight decay applies.

    BatchNorm parameters live in modules named ``bn*`` or ``downsample/bn``;
    other biases are leaves named ``bias`` (the classifier's).
    """
    def decays(path, _):
        names = [getattr(key, "key", str(key)) for key in path]
        if any(str(name).startswith("bn") for name in names[:-1]):
            return decay_bn
        if names[-1] == "bias":
            return decay_bias
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


# config.optimizer's values.
OPTIMIZERS = ("sgd", "adamw", "lamb")


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule
                     ) -> optax.GradientTransformation:
    """The optimizer ``config.optimizer`` names, weight decay where the mask
    says so (``weight_decay_bn``, ``weight_decay_bias``).

    ``"sgd"`` (the default, the paper's): SGD with (Nesterov) momentum; the
    L2 decay is added to the gradient before momentum, as in PyTorch's SGD
    and the paper's Torch code. ``"adamw"``: ``optax.adamw`` (decoupled
    decay, ``lr * weight_decay * param``), PyTorch's ``torch.optim.AdamW``
    with ``config.adam_b1``, ``adam_b2``, ``adam_eps``; ``momentum`` and
    ``nesterov`` are not used. ``"lamb"``: timm's ``Lamb`` (You et al.
    2020, as ResNet Strikes Back trains): gradients clipped to a global norm
    of ``config.lamb_max_grad_norm`` (timm's ``max_grad_norm``; 0: off),
    Adam's step (``adam_b1``, ``adam_b2``, ``adam_eps``), plus
    ``weight_decay * param``, scaled per tensor by the trust ratio
    ``|param| / |update|`` only where weight decay applies (timm's default,
    ``always_adapt=False``). docs/step_parity.md compares each with PyTorch
    (and timm) step by step.
    With ``config.trainable="head"`` only the classifier is updated: every
    other parameter gets a zero update (no decay, no momentum).
    """
    mask = lambda params: weight_decay_mask(  # noqa: E731
        params, config.weight_decay_bn, config.weight_decay_bias)
    # A config saved before the field existed means SGD.
    kind = config.get("optimizer", "sgd")
    if kind == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=mask),
            optax.sgd(schedule, momentum=config.momentum or None,
                      nesterov=config.nesterov and bool(config.momentum)),
        )
    elif kind == "adamw":
        tx = optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                         eps=config.adam_eps,
                         weight_decay=config.weight_decay, mask=mask)
    elif kind == "lamb":
        tx = lamb(config, schedule, mask)
    else:
        raise ValueError(f"config.optimizer (={kind!r}) must be one of "
                         f"{OPTIMIZERS}.")
    if config.trainable == "head":
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   head_labels)
    return tx


def lamb(config: ml_collections.ConfigDict, schedule: optax.Schedule,
         mask) -> optax.GradientTransformation:
    """timm's ``Lamb`` as an optax chain (``optax.lamb`` adapts every
    tensor and does not clip)."""
    decays = config.weight_decay != 0
    # timm adapts the tensors of param groups with weight decay only.
    adapt = mask if decays else (
        lambda params: jax.tree.map(lambda _: False, params))
    return optax.chain(
        (optax.clip_by_global_norm(config.lamb_max_grad_norm)
         if config.lamb_max_grad_norm > 0 else optax.identity()),
        optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2,
                            eps=config.adam_eps),
        optax.add_decayed_weights(config.weight_decay, mask=mask),
        optax.masked(optax.scale_by_trust_ratio(), adapt),
        optax.scale_by_learning_rate(schedule),
    )


# The classifier's parameters (named as in torchvision and timm).
HEAD = "fc"


def head_labels(params: Any) -> Any:
    """A tree like ``params``: "train" for the classifier (``fc``), "frozen"
    for the backbone."""
    def label(path, _):
        return "train" if getattr(path[0], "key", None) == HEAD else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)
