"""Counting train steps whose loss, gradient or new state was not finite.

The train step itself skips such an update (see :func:`train.steps.
make_train_step`); this host-side guard logs each one and stops the run after
``config.max_consecutive_nonfinite`` in a row, before anything is saved.
"""

from __future__ import annotations

from absl import logging


class NonFiniteError(RuntimeError):
    """Too many consecutive train steps had a non-finite loss, gradient or
    new state."""


class NonFiniteGuard:
    """Tracks the run of consecutive bad steps."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def update(self, first_step: int, flags: list[float]) -> None:
        """``flags[i]`` is 1 when step ``first_step + i`` (1-based) was bad.

        Raises :class:`NonFiniteError` when the limit is reached.
        """
        for i, flag in enumerate(flags):
            step = first_step + i
            if not flag:
                self.consecutive = 0
                continue
            self.consecutive += 1
            self.total += 1
            message = (f"step {step}: non-finite loss, gradient or updated "
                       "state, update "
                       f"skipped ({self.consecutive} in a row, "
                       f"{self.total} in this run).")
            logging.warning(message)
            print(f"WARNING: {message}", flush=True)
            if self.consecutive >= self.max_consecutive:
                raise NonFiniteError(
                    f"{self.consecutive} consecutive train steps (up to step "
                    f"{step}) had a non-finite loss, gradient or updated "
                    "state, reaching "
                    f"config.max_consecutive_nonfinite (="
                    f"{self.max_consecutive}); stopping. The last checkpoint "
                    "holds the state before them: lower the learning rate or "
                    "check the data, then resume.")
