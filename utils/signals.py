"""Stopping on SIGTERM or SIGINT at once, without a half-written file.

The handler records the signal and raises :class:`SweepStopped` at the next bytecode: the current epoch is
abandoned, files being written atomically keep their old content (``utils.atomic`` removes the temporary file),
and each job's ``latest`` state stays at its last completed epoch, which ``--resume`` continues from.

A signal sent to the whole process group (SLURM's pre-emption and ``scancel``, Ctrl-C in a terminal) also reaches
the DataLoader workers, which die at the same moment; the error that reports their death ("DataLoader worker (pid
...) is killed by signal") can then replace :class:`SweepStopped` while the stack unwinds. Such an error is part of
the stop: :func:`stop_requested` says a stop signal arrived, and the job runner turns the error back into the stop
(:func:`raise_if_stopping`), so the job is never recorded as failed and the sweep exits 143 / 130.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the stop signals received inside stop_on_signals (main thread)


class SweepStopped(BaseException):
    """The process was asked to stop (not an error of a job, so no job records it as failed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


def _raise(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise SweepStopped(signum)


def stop_requested() -> int | None:
    """The first stop signal received inside :func:`stop_on_signals`, or ``None``."""
    return _received[0] if _received else None


def raise_if_stopping(error: BaseException) -> None:
    """Raise :class:`SweepStopped` (from ``error``) when a stop signal arrived: an error met while stopping, e.g.
    a DataLoader worker killed by the same signal, is the stop, not a failure of the job."""
    signum = stop_requested()
    if signum is not None and not isinstance(error, SweepStopped):
        raise SweepStopped(signum) from error


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block SIGTERM and SIGINT raise :class:`SweepStopped` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _raise) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()  # a later block (or library use without one) starts with no stop recorded


def exit_code(exc: BaseException) -> int:
    """Shell convention: 128 + signal number (SIGTERM 143, SIGINT 130)."""
    return 128 + (exc.signum if isinstance(exc, SweepStopped) else signal.SIGINT)
