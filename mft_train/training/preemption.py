"""Preemption: SIGTERM (or Ctrl-C) becomes a request to stop after the current step, with a checkpoint.

Why: clusters preempt jobs with SIGTERM and a grace period, and a default SIGTERM loses everything
since the last periodic checkpoint (hours at the paper preset). While training runs, the first
SIGTERM or SIGINT only sets `requested`; the Trainer reads it after each step (under DDP inside the
step's one all_reduce, so every rank stops after the same step), writes a checkpoint that also
records where its loader started, and stops with exit 130. `--resume` then continues with the very
batches the uninterrupted run would have seen. A second signal of the same kind acts at once, as it
would without us (for a run stuck outside the step loop).

DataLoader workers ignore both signals (`ignore_stop_signals` is their worker_init_fn): a scheduler
signals the whole process group, and a worker dying of SIGTERM would make the loader raise in the
middle of the step we want to finish. The workers still end with their parent (PyTorch's watchdog).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Set by a stop signal while `installed()` is active; read by the training loop after each step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Catch the stop signals for the duration (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

        def handle(signum: int, frame: object) -> None:
            if self.signal_name == signal.Signals(signum).name:  # the second one: act as before
                signal.signal(signum, previous[signum])
                signal.raise_signal(signum)
                return
            self.signal_name = signal.Signals(signum).name

        for sig in STOP_SIGNALS:
            signal.signal(sig, handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: leave SIGTERM/SIGINT to the training process (see module docstring)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
