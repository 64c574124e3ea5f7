"""Preemption: SIGTERM, SIGINT or SIGUSR1 make the run checkpoint at the next step boundary and exit with EXIT_CODE.

The handler only records the signal. After each step the loop asks `stop_requested(sync_point)`:
- one process: the recorded signal is a Python attribute, free to read, so the run stops after the very next step;
- several processes: all must stop after the same step, or their collective checkpoint write would deadlock. The
  processes' flags are combined by a tiny all-gather, and only at the loop's sync points (log, evaluation and
  checkpoint steps): these are the same steps on every process and the loop reads the device there anyway, so no
  step pays for an extra host sync, and a multi-host run stops within `log_every_steps` steps of the signal.
A second SIGINT (Ctrl-C twice) interrupts at once. EXIT_CODE is 75 (EX_TEMPFAIL, "try again"): the checkpoint is
written, and re-running the same command resumes exactly. Slurm: see the README (`--signal=USR1@<seconds>`).
"""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
EXIT_CODE = 75


class Preempted(Exception):
    """The run was asked to stop by a signal and saved a checkpoint; re-running the same command resumes it."""


class PreemptionGuard:
    """A context in which SIGNALS request a stop at the next step boundary instead of killing the process."""

    def __init__(self):
        self.signal: signal.Signals | None = None
        self._previous = {}

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum)

    def stop(self, what_was_done: str) -> None:
        """Say which signal stopped the run and what was saved, and raise Preempted."""
        who = self.signal.name if self.signal else "a signal to another process"
        print(f"{who}: {what_was_done}")
        raise Preempted(f"{who}: {what_was_done}")

    def stop_requested(self, sync_point: bool) -> bool:
        """Whether every process stops after this step (the same answer on all of them)."""
        if jax.process_count() == 1:
            return self.signal is not None
        if not sync_point:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.signal is not None))))
