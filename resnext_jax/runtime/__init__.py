"""Process-wide settings that entry points (the commands, the trainer, the
benchmarks) apply before their first jit; the library never imports them."""

from resnext_jax.runtime.setup import prepare_process

__all__ = ("prepare_process",)
