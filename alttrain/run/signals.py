"""Stop when asked: SIGTERM, SIGUSR1 (what SLURM sends before it kills or requeues a job) and SIGINT.

The first signal asks the trainer to stop at the end of the current step (``trainer.stop_requested``);
the trainer agrees on that step with the other ranks, writes an atomic checkpoint there and ends, and
the run exits with :func:`exit_code` (128 + the signal's number, as a shell reports a process the signal
ended: 130 for SIGINT, 138 for SIGUSR1, 143 for SIGTERM). A second SIGINT stops at once with
:class:`KeyboardInterrupt`; the last checkpoint is intact (checkpoints are written atomically).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The exit code of a run stopped by ``signum``."""
    return 128 + int(signum)


@contextlib.contextmanager
def graceful_stop(trainer) -> Iterator[None]:
    """Route the stop signals to ``trainer.stop_requested`` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread (e.g. not in a notebook worker)
        return

    def handle(signum, frame):
        if trainer.stop_requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        if trainer.stop_requested is None:
            trainer.stop_requested = signal.Signals(signum).name

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
