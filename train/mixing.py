"""Mixup and CutMix of a device's batch, as ``torchvision.transforms.v2``'s
``MixUp`` and ``CutMix`` (picked at random per batch by ``RandomChoice``, as
torchvision's classification recipe does in its ``collate_fn``).

Both pair each image with the one before it (``roll(1, 0)``: torchvision's
choice, cheaper than a permutation) and mix the one-hot targets with the
same weight. They run on the device, inside the train step, on the
device's part of the batch: the batch torchvision mixes is also one
process's (one GPU's) batch. Randomness comes from the step's key, so a
resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# ``mix(rng, images, targets) -> (images, targets)``: NHWC images, one-hot
# (or already soft) float targets.
Mix = Callable[[jax.Array, jax.Array, jax.Array],
               tuple[jax.Array, jax.Array]]


def _blend(x: jax.Array, lam) -> jax.Array:
    """``lam * x + (1 - lam) * x.roll(1, 0)`` in torchvision's order."""
    return jnp.roll(x, 1, axis=0) * (1.0 - lam) + x * lam


def mixup(images: jax.Array, targets: jax.Array, lam) -> tuple[jax.Array,
                                                               jax.Array]:
    """Mixup with weight ``lam`` (Zhang et al. 2018)."""
    return _blend(images, lam), _blend(targets, lam)


def cutmix_box(lam, center_y, center_x, height: int, width: int):
    """torchvision's CutMix box ``(y1, y2, x1, x2)``, clipped to the image,
    around ``(center_y, center_x)``, of about ``1 - lam`` of the area; and
    ``lam`` adjusted to the area actually kept."""
    r = 0.5 * jnp.sqrt(1.0 - lam)
    half_w = jnp.floor(r * width).astype(jnp.int32)
    half_h = jnp.floor(r * height).astype(jnp.int32)
    x1 = jnp.maximum(center_x - half_w, 0)
    y1 = jnp.maximum(center_y - half_h, 0)
    x2 = jnp.minimum(center_x + half_w, width)
    y2 = jnp.minimum(center_y + half_h, height)
    kept = 1.0 - ((x2 - x1) * (y2 - y1)) / (width * height)
    return (y1, y2, x1, x2), kept


def cutmix(images: jax.Array, targets: jax.Array, lam, center_y,
           center_x) -> tuple[jax.Array, jax.Array]:
    """CutMix (Yun et al. 2019): the box of :func:`cutmix_box` pasted from
    the previous image; targets mixed by the area kept."""
    height, width = images.shape[1], images.shape[2]
    (y1, y2, x1, x2), kept = cutmix_box(lam, center_y, center_x, height,
                                        width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    pasted = jnp.where(inside[None, :, :, None], jnp.roll(images, 1, axis=0),
                       images)
    return pasted, _blend(targets, kept.astype(targets.dtype))


def make_mix(mixup_alpha: float, cutmix_alpha: float) -> Mix | None:
    """The recipe's mixing: Mixup with ``lam ~ Beta(mixup_alpha,
    mixup_alpha)``, CutMix with ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``
    and a uniform box centre, one of the two chosen with equal odds per
    batch when both alphas are positive; None when both are 0."""
    if not mixup_alpha and not cutmix_alpha:
        return None

    def mix(rng, images, targets):
        choice_key, mixup_key, cutmix_key, y_key, x_key = jax.random.split(
            rng, 5)
        height, width = images.shape[1], images.shape[2]
        candidates = []
        if mixup_alpha:
            lam = jax.random.beta(mixup_key, mixup_alpha, mixup_alpha)
            candidates.append(mixup(images, targets, lam))
        if cutmix_alpha:
            lam = jax.random.beta(cutmix_key, cutmix_alpha, cutmix_alpha)
            candidates.append(cutmix(
                images, targets, lam,
                jax.random.randint(y_key, (), 0, height),
                jax.random.randint(x_key, (), 0, width)))
        if len(candidates) == 1:
            return candidates[0]
        use_cutmix = jax.random.bernoulli(choice_key)
        return jax.tree.map(lambda c, m: jnp.where(use_cutmix, c, m),
                            candidates[1], candidates[0])

    return mix
