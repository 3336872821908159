"""Shared entry point of the benchmarks that write data: run in ``--workdir`` (kept) or in a temporary folder."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable


def run_in_workdir(run: Callable[[argparse.Namespace, Path], None], args: argparse.Namespace) -> None:
    """``run(args, folder)`` with ``args.workdir`` when given (data and cache stay there), else a temporary folder."""
    if args.workdir is not None:
        run(args, Path(args.workdir))
        return
    with tempfile.TemporaryDirectory(prefix="volbench_bench_") as tmp:
        run(args, Path(tmp))
