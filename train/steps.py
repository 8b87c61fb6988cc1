"""Pure train and eval steps, and their data-parallel (per-device) form.

``train_step(state, batch) -> (state, metrics)`` and
``eval_step(state, batch) -> metrics`` are pure functions of arrays. They
are written for one device's shard of the batch and reduce across the
``data`` mesh axis with ``lax.pmean``/``psum``;
:func:`train.mesh.data_parallel` runs them over every device.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from train.mesh import AXIS
from train.optim import HEAD


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes; all leaves are arrays."""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, image_size: int,
                       variables: Any = None) -> TrainState:
    """Initial state, step 0: ``variables`` (pretrained ones, see
    :mod:`train.init_from`) or fresh ones, and a fresh optimizer state."""
    init_rng, state_rng = jax.random.split(rng)
    if variables is None:
        dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        variables = model.init(init_rng, dummy, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=state_rng)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32, with label smoothing."""
    logits = logits.astype(jnp.float32)
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, label_smoothing: float = 0.0,
                    grad_accum_steps: int = 1, head_only: bool = False,
                    axis_name: str | None = AXIS) -> Callable:
    """Builds ``train_step(state, batch) -> (state, metrics)``.

    ``batch`` is ``{"image": f32[N, H, W, 3], "label": i32[N]}`` (this
    device's shard). With ``grad_accum_steps = k`` the shard is split into
    k micro-batches whose gradients are averaged (BatchNorm statistics are
    updated after each); the optimizer steps once. ``model`` must be built
    with ``axis_name`` so that BatchNorm averages its statistics across
    devices. ``head_only`` is linear probing: the model runs in eval mode
    (BatchNorm normalizes with, and keeps, its running statistics) and every
    parameter outside the classifier (``fc``) is under ``stop_gradient``, so
    the backbone's backward pass is never computed (its gradient is zero).
    """

    def pmean(tree):
        return lax.pmean(tree, axis_name) if axis_name else tree

    def loss_fn(params, batch_stats, images, labels, rng):
        if head_only:
            params = {name: value if name == HEAD else lax.stop_gradient(value)
                      for name, value in params.items()}
        variables = {"params": params, "batch_stats": batch_stats}
        if head_only:
            logits = model.apply(variables, images, train=False,
                                 rngs={"dropout": rng})
        else:
            logits, updates = model.apply(
                variables, images, train=True, mutable=["batch_stats"],
                rngs={"dropout": rng})
            batch_stats = updates["batch_stats"]
        loss = cross_entropy(logits, labels, label_smoothing).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, (batch_stats, accuracy)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated_grads(state, batch, rng):
        """Mean loss, accuracy and gradient over ``grad_accum_steps`` slices."""
        micro = jax.tree.map(
            lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]),
            {"image": batch["image"], "label": batch["label"]})
        micro["index"] = jnp.arange(grad_accum_steps)

        def body(carry, mb):
            grads, batch_stats, loss, accuracy = carry
            (m_loss, (batch_stats, m_acc)), m_grads = grad_fn(
                state.params, batch_stats, mb["image"], mb["label"],
                jax.random.fold_in(rng, mb["index"]))
            grads = jax.tree.map(jnp.add, grads, m_grads)
            return (grads, batch_stats, loss + m_loss, accuracy + m_acc), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, state.batch_stats, jnp.zeros(()), jnp.zeros(()))
        (grads, batch_stats, loss, accuracy), _ = lax.scan(body, init, micro)
        grads, loss, accuracy = jax.tree.map(
            lambda x: x / grad_accum_steps, (grads, loss, accuracy))
        return (loss, (batch_stats, accuracy)), grads

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState,
                                                            dict]:
        # Randomness is a function of (seed, step, device): reproducible and
        # unchanged by a restart.
        rng = jax.random.fold_in(state.rng, state.step)
        if axis_name:
            rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
        if grad_accum_steps == 1:
            (loss, (batch_stats, accuracy)), grads = grad_fn(
                state.params, state.batch_stats, batch["image"],
                batch["label"], rng)
        else:
            (loss, (batch_stats, accuracy)), grads = accumulated_grads(
                state, batch, rng)
        # The cross-device mean of per-device mean gradients is the gradient
        # of the global-batch mean loss (shards have equal sizes).
        grads = pmean(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = pmean({"loss": loss, "accuracy": accuracy})
        metrics["learning_rate"] = jnp.asarray(schedule(state.step),
                                               jnp.float32)
        # After the pmean every device sees the same loss, gradient and so
        # new state (BatchNorm averages its statistics over the axis), so all
        # of them take the same decision. The new state is checked too:
        # finite gradients still give a NaN update when a hyperparameter
        # (learning rate, momentum, weight decay) is NaN or overflows.
        finite = all_finite((metrics["loss"], grads, params, opt_state,
                             batch_stats))
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        updated = state.replace(step=state.step + 1, params=params,
                                batch_stats=batch_stats, opt_state=opt_state)
        # A bad step moves on to the next batch (retrying it would fail the
        # same way) but keeps params, BN statistics and optimizer state.
        skipped = state.replace(step=state.step + 1)
        new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b),
                                 updated, skipped)
        return new_state, metrics

    return train_step


def all_finite(tree) -> jax.Array:
    """Scalar bool: every element of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                              for x in jax.tree.leaves(tree)]))


def make_eval_step(model: nn.Module,
                   axis_name: str | None = AXIS) -> Callable:
    """Builds ``eval_step(state, batch) -> metrics`` of summed values.

    ``batch["mask"]`` (float, 1 for real examples, 0 for padding) lets the
    last, padded batch count each real example exactly once. Returns sums
    (``loss_sum``, ``correct``, ``count``), psummed across devices.
    """

    def eval_step(state: TrainState, batch: dict) -> dict:
        logits = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            batch["image"], train=False)
        mask = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(
            jnp.float32)
        sums = {"loss_sum": jnp.sum(loss * mask),
                "correct": jnp.sum(correct * mask),
                "count": jnp.sum(mask)}
        return lax.psum(sums, axis_name) if axis_name else sums

    return eval_step
