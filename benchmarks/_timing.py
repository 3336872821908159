"""Shared pieces of the CPU benchmarks: a clock that keeps this process's CPU share, and the common flags."""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch


class CpuClock:
    """Wall and CPU seconds of everything timed, for this process's CPU share (CPU s / (wall s x threads)):
    below ~0.8 other processes took the cores while timing."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.last_best: list[float] = []  # minima of the last series a caller timed (free for its use)

    def time(self, fn: Callable[[], Any]) -> float:
        """Wall seconds of ``fn()``; wall and CPU time are added to the totals."""
        c, w = time.process_time(), time.perf_counter()
        fn()
        dw = time.perf_counter() - w
        self.wall, self.cpu = self.wall + dw, self.cpu + time.process_time() - c
        return dw

    def share(self) -> float:
        """CPU time / (wall time x torch intra-op threads) over everything timed so far."""
        return self.cpu / max(self.wall * torch.get_num_threads(), 1e-9)


def quick_threads_parser(description: str, quick_help: str, threads_help: str = "torch intra-op threads"
                         ) -> argparse.ArgumentParser:
    """A parser with ``--quick`` (minutes on 2 cores) and ``--threads`` (default 2) for a CPU benchmark."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--threads", type=int, default=2, help=threads_help)
    return p


def machine_busy(loads: tuple[float, float], share: float) -> bool:
    """Whether other processes held the cores while timing: the load per core beyond this run's threads
    (``loads``: before / after) above ``BUSY_LOAD``, or this process's CPU share below ``BUSY_SHARE``."""
    import os

    from metrics.efficiency import BUSY_LOAD, BUSY_SHARE

    return max(loads) - torch.get_num_threads() / (os.cpu_count() or 1) > BUSY_LOAD or share < BUSY_SHARE
