"""A choice of implementation per platform, made when a program is lowered.

``jax.lax.platform_dependent`` keeps every platform's implementation in the
traced program and lowers only the target's, so a program traced on a CPU
host and exported for a GPU gets the GPU's. Differentiating it, though,
makes JAX linearize every branch through the conditional: for a ResNeXt-50
train step that was 8 of 11 s of tracing. `choose_with_vjp` makes the
choice twice instead, once in the forward pass and once in the backward pass
of a ``jax.custom_vjp``, and traces each implementation's VJP as plain
``jax.vjp``.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax import lax


def choose(by_platform: dict[str, Callable], default: Callable, *args):
    """``by_platform.get(platform, default)(*args)`` for the platform the
    program is lowered for. Platforms mapped to ``default`` itself are left
    out, so each distinct function is staged out once."""
    branches = {p: f for p, f in by_platform.items() if f is not default}
    return lax.platform_dependent(*args, default=default, **branches)


def _pullback(f: Callable) -> Callable:
    """``(cotangent, *args) -> f``'s input cotangents, by ``jax.vjp``."""
    def pullback(cotangent, *args):
        return jax.vjp(f, *args)[1](cotangent)
    return pullback


def choose_with_vjp(by_platform: dict[str, Callable], default: Callable,
                    *args):
    """`choose`, differentiable without linearizing a conditional.

    The implementations must compute the same function, and their backward
    passes must need nothing from the forward beyond ``args`` (the backward
    recomputes what it needs, and XLA removes forward values it does not
    use): true of convolutions, pooling and normalization formulas.
    """

    @jax.custom_vjp
    def chosen(*args):
        return choose(by_platform, default, *args)

    def forward(*args):
        return choose(by_platform, default, *args), args

    def backward(args, cotangent):
        # One pullback per distinct implementation (a dict keyed by the
        # function), so that `choose` joins platforms that share one.
        pullbacks = {f: _pullback(f) for f in (*by_platform.values(), default)}
        return tuple(choose({p: pullbacks[f] for p, f in by_platform.items()},
                            pullbacks[default], cotangent, *args))

    chosen.defvjp(forward, backward)
    return chosen(*args)
