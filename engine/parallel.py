"""How the processes of a sweep share its jobs: the mode, which jobs a process runs, the DDP wrapper.

Modes: ``single`` (one process; with ``--shard K/N`` it runs every job whose grid index is K modulo N),
``jobs`` (torchrun ranks take the pending jobs round-robin, each on its own device) and ``ddp`` (every
rank trains every job together: DistributedDataParallel, a DistributedSampler share of the patches,
validation and test cases split across ranks and gathered).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence, TypeVar

import torch
import torch.nn as nn

from utils.distributed import DistEnv

from engine.options.parallel_options import parse_shard

log = logging.getLogger(__name__)
J = TypeVar("J")


def resolve_mode(parallel: str | None, shard: str | None, env: DistEnv) -> str:
    """``single``, ``jobs`` or ``ddp`` for these flags in this launch.

    Raises:
        ValueError: ``--shard`` under torchrun (a launch shares its jobs by ``--parallel`` instead).
    """
    if not env.launched:
        if parallel is not None:
            log.info("--parallel %s has no effect in a single process (launch with torchrun)", parallel)
        return "single"
    if shard is not None:
        raise ValueError("--shard is for separate processes without torchrun; under torchrun use --parallel jobs")
    return parallel or "ddp"


def select_jobs(pending: Sequence[J], *, shard: str | None, mode: str, rank: int, world_size: int,
                index_of: Any = lambda job: job.index) -> list[J]:
    """The pending jobs this process runs: its ``--shard`` (grid index K mod N), then, in ``jobs`` mode,
    every ``world_size``-th of those starting at ``rank``."""
    chosen = list(pending)
    parsed = parse_shard(shard)
    if parsed is not None:
        k, n = parsed
        chosen = [j for j in chosen if index_of(j) % n == k]
    if mode == "jobs":
        chosen = chosen[rank::world_size]
    return chosen


def wrap_for_ddp(model: nn.Module, device: torch.device, *, sync_bn: bool, find_unused: bool) -> nn.Module:
    """``model`` in DistributedDataParallel (BatchNorm synchronised across ranks with ``sync_bn``).

    ``find_unused``: the task may leave parameters without gradient in a step (DDP then searches for them).
    """
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
