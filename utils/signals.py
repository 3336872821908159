"""Stopping on SIGTERM or SIGINT at once, without a half-written file.

The handler raises :class:`SweepStopped` (SIGINT raises Python's ``KeyboardInterrupt`` as usual) at the
next bytecode: the current epoch is abandoned, files being written atomically keep their old content
(``utils.atomic`` removes the temporary file), and each job's ``latest`` state stays at its last
completed epoch, which ``--resume`` continues from.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


class SweepStopped(BaseException):
    """The process was asked to stop (not an error of a job, so no job records it as failed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


def _raise(signum: int, frame: Any) -> None:
    raise SweepStopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`SweepStopped` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(exc: BaseException) -> int:
    """Shell convention: 128 + signal number (SIGTERM 143, SIGINT 130)."""
    return 128 + (exc.signum if isinstance(exc, SweepStopped) else signal.SIGINT)
