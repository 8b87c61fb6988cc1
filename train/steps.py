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

from train import ema as ema_lib
from train.mesh import AXIS
from train.mixing import Mix
from train.optim import HEAD

# The train step's own random streams, folded into the step's key: the
# model's (drop path) uses the key itself.
_MIX_STREAM = 1


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes; all leaves are arrays.
    ``ema`` is the moving average of the weights (:mod:`train.ema`) when
    the run keeps one, else ``{}``."""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema: Any = flax.struct.field(default_factory=dict)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, image_size: int,
                       variables: Any = None,
                       with_ema: bool = False) -> TrainState:
    """Initial state, step 0: ``variables`` (pretrained ones, see
    :mod:`train.init_from`) or fresh ones, a fresh optimizer state, and with
    ``with_ema`` a moving average starting at those weights."""
    init_rng, state_rng = jax.random.split(rng)
    if variables is None:
        dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        variables = model.init(init_rng, dummy, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=batch_stats, opt_state=tx.init(params),
                      rng=state_rng,
                      ema=ema_lib.init(params, batch_stats) if with_ema
                      else {})


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32, with label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return soft_cross_entropy(logits, targets, label_smoothing)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy against class probabilities (mixed
    targets), in float32; smoothing as ``torch.nn.CrossEntropyLoss`` applies
    it to probabilities: ``(1 - s) * targets + s / classes``."""
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, label_smoothing: float = 0.0,
                    grad_accum_steps: int = 1, head_only: bool = False,
                    mix: Mix | None = None,
                    update_ema: Callable | None = None,
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
    ``mix`` (:func:`train.mixing.make_mix`) mixes the shard's images and
    one-hot targets before the forward pass; accuracy then counts the
    largest target, as torchvision's recipe does. ``update_ema(ema, params,
    batch_stats, step=step)`` (:func:`train.ema.update` bound to the run's
    settings) updates ``state.ema`` after the optimizer step.
    """
    num_classes = model.num_classes

    def pmean(tree):
        return lax.pmean(tree, axis_name) if axis_name else tree

    def loss_fn(params, batch_stats, images, targets, rng):
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
        loss = soft_cross_entropy(logits, targets, label_smoothing).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
        return loss, (batch_stats, accuracy)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated_grads(state, images, targets, rng):
        """Mean loss, accuracy and gradient over ``grad_accum_steps`` slices."""
        micro = jax.tree.map(
            lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]),
            {"image": images, "target": targets})
        micro["index"] = jnp.arange(grad_accum_steps)

        def body(carry, mb):
            grads, batch_stats, loss, accuracy = carry
            (m_loss, (batch_stats, m_acc)), m_grads = grad_fn(
                state.params, batch_stats, mb["image"], mb["target"],
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
        images = batch["image"]
        targets = jax.nn.one_hot(batch["label"], num_classes,
                                 dtype=jnp.float32)
        if mix is not None:
            images, targets = mix(jax.random.fold_in(rng, _MIX_STREAM),
                                  images, targets)
        if grad_accum_steps == 1:
            (loss, (batch_stats, accuracy)), grads = grad_fn(
                state.params, state.batch_stats, images, targets, rng)
        else:
            (loss, (batch_stats, accuracy)), grads = accumulated_grads(
                state, images, targets, rng)
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
        ema = state.ema
        if update_ema is not None:
            ema = update_ema(ema, params, batch_stats, step=state.step)
        updated = state.replace(step=state.step + 1, params=params,
                                batch_stats=batch_stats, opt_state=opt_state,
                                ema=ema)
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


def ema_view(state: TrainState) -> TrainState:
    """``state`` with the moving average in place of the weights: what
    evaluating (or bundling) the average reads."""
    return state.replace(params=state.ema.params,
                         batch_stats=state.ema.batch_stats)


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
