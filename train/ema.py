"""An exponential moving average of the weights, kept as torchvision's
classification recipe keeps it (``--model-ema``).

torchvision's ``ExponentialMovingAverage`` is a ``torch.optim.swa_utils.
AveragedModel`` over parameters and buffers (``use_buffers=True``, so the
BatchNorm statistics too), updated after the optimizer step of every batch
``i`` of an epoch with ``i % model_ema_steps == 0``; its first update copies
the weights (``n_averaged == 0``), later ones compute ``decay * average +
(1 - decay) * weights``, and during the learning-rate warmup the count is
reset after each update, so the average follows the weights until warmup
ends. :func:`update` is that rule as a pure function of the step, inside the
jitted train step.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class EmaState:
    """The averaged weights, and torch's ``n_averaged`` (0: the next update
    copies the weights)."""
    params: Any
    batch_stats: Any
    count: jax.Array


def init(params: Any, batch_stats: Any) -> EmaState:
    """The average of a fresh run: the initial weights, count 0 (torch's
    ``AveragedModel`` deep-copies the model)."""
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731
    return EmaState(params=copy(params), batch_stats=copy(batch_stats),
                    count=jnp.zeros((), jnp.int32))


def decay_per_update(model_ema_decay: float, batch_size: int,
                     model_ema_steps: int, num_epochs: float) -> float:
    """torchvision's train.py: ``model_ema_decay`` is given for a reference
    setting and rescaled so that the average spans the same share of
    training at any batch size, update interval and length::

        adjust = world_size * batch_size * model_ema_steps / epochs
        alpha = min(1, (1 - model_ema_decay) * adjust)
        decay = 1 - alpha

    (``world_size * batch_size`` is our global ``batch_size``.)"""
    adjust = batch_size * model_ema_steps / num_epochs
    alpha = min(1.0, (1.0 - model_ema_decay) * adjust)
    return 1.0 - alpha


def update(ema: EmaState, params: Any, batch_stats: Any, *, step: jax.Array,
           steps_per_epoch: int, every: int, decay: float,
           warmup_epochs: float) -> EmaState:
    """``ema`` after the optimizer step of global step ``step`` (0-based):
    updated when the step's batch index in its epoch is a multiple of
    ``every``, unchanged otherwise."""
    index, epoch = step % steps_per_epoch, step // steps_per_epoch

    def average(avg, new):
        mixed = decay * avg + (1.0 - decay) * new
        return jnp.where(ema.count == 0, new, mixed).astype(avg.dtype)

    count = jnp.where(epoch < warmup_epochs, 0, ema.count + 1)
    updated = EmaState(params=jax.tree.map(average, ema.params, params),
                       batch_stats=jax.tree.map(average, ema.batch_stats,
                                                batch_stats),
                       count=count.astype(jnp.int32))
    due = index % every == 0
    return jax.tree.map(lambda a, b: jnp.where(due, a, b), updated, ema)
