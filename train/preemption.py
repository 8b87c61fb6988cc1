"""SIGTERM (preemption) and Ctrl-C handling: finish the step, checkpoint,
exit.

Cloud schedulers and TPU/GPU cluster managers send SIGTERM some seconds
before they kill a preempted host (often 30 s); a user stops a run with
Ctrl-C (SIGINT). Either handler only sets a flag; the loop checks it after
every step, saves a checkpoint and returns, and ``python -m train`` then
exits with :data:`EXIT_PREEMPTED` (SIGTERM) or :data:`EXIT_INTERRUPTED`
(Ctrl-C). A second Ctrl-C aborts at once (``KeyboardInterrupt``), losing
the steps since the last checkpoint.

A single process reads its flag, which costs nothing. Several processes
must stop at the same step: every :data:`SYNC_EVERY_STEPS` steps they
all-gather their flags (a host round trip that waits for the steps in
flight, so not every step).
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

# 128 + SIGTERM, what a shell reports for a process ended by SIGTERM: job
# schedulers treat it as "requeue", not as a failure of the program.
EXIT_PREEMPTED = 143
# 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
# Steps between the agreements of a multi-process run: a few seconds at
# most even for ImageNet-sized steps.
SYNC_EVERY_STEPS = 5


class PreemptionWatcher:
    """Installs SIGTERM and SIGINT handlers for the duration of a ``with``
    block. ``signal_name`` is the first signal received (None before)."""

    def __init__(self):
        self._requested = False
        self.signal_name = None
        self._previous = {}

    def __enter__(self) -> "PreemptionWatcher":
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        del frame
        if signum == signal.SIGINT and self._requested:
            raise KeyboardInterrupt  # The second Ctrl-C: abort at once.
        if not self._requested:
            self.signal_name = signal.Signals(signum).name
        self._requested = True

    def requested(self, step: int) -> bool:
        """True once any process got SIGTERM or SIGINT, checked after step
        ``step``.

        With several processes this is a collective at every
        :data:`SYNC_EVERY_STEPS`-th step (all processes call it after every
        step), so that all of them stop at one step.
        """
        if jax.process_count() == 1:
            return self._requested
        if step % SYNC_EVERY_STEPS:
            return False
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(
            np.asarray(self._requested, np.int32))
        return bool(np.any(flags))
