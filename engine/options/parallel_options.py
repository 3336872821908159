"""Flags of scaled-out sweeps: how processes share the work (``--parallel``, ``--shard``, ``--sync_bn``).

``--parallel ddp`` (the default under torchrun): all ranks train one job together (DistributedDataParallel).
``--parallel jobs``: ranks take disjoint jobs of the grid. ``--shard K/N`` without torchrun: this process
takes every job whose index is K modulo N (a scheduler job array passes its task id as K).
"""

from __future__ import annotations

import argparse
import re

PARALLEL_MODES = ("ddp", "jobs")
_SHARD = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with 0 <= K < N; ``None`` stays ``None``.

    Raises:
        ValueError: the text is not ``K/N`` or K is outside 0..N-1 (naming ``--shard``).
    """
    if text is None:
        return None
    match = _SHARD.match(text.strip())
    if not match:
        raise ValueError(f"--shard must be K/N (e.g. 0/4), got {text!r}")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard {text}: K must be 0..N-1 and N >= 1 (a job array numbered 0..N-1 passes its id)")
    return k, n


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``parallel`` argument group."""
    g = parser.add_argument_group("parallel and distributed runs")
    g.add_argument("--parallel", choices=PARALLEL_MODES, default=None,
                   help="under torchrun: ddp = all ranks train one job together, jobs = ranks take disjoint jobs "
                        "(default: ddp under torchrun; ignored in a single process)")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="without torchrun: run only the jobs whose index is K modulo N, into a shared --output_dir "
                        "(e.g. a job array with ids 0..N-1); default: every job")
    g.add_argument("--sync_bn", action="store_true",
                   help="with --parallel ddp: synchronise BatchNorm statistics across ranks (default: off)")
