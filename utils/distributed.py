"""torchrun helpers: read the launcher's environment, start and end the process group, gather objects.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them
this is a single process (rank 0 of 1) and every helper is a no-op. Backend: NCCL when the process
drives a CUDA device (one device per local rank), gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process among the launched ones (rank 0 of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def launched(self) -> bool:
        """Whether torchrun started several processes."""
        return self.world_size > 1


def dist_env() -> DistEnv:
    """The torchrun environment of this process."""
    return DistEnv(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                   world_size=int(os.environ.get("WORLD_SIZE", 1)))


def process_device(env: DistEnv, device: torch.device) -> torch.device:
    """Under torchrun on CUDA each local rank drives its own GPU (``cuda:<local_rank>``)."""
    if env.launched and device.type == "cuda":
        index = env.local_rank % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Start the process group (NCCL on CUDA, gloo on the CPU) when launched; returns whether it did."""
    if not env.launched or (dist.is_available() and dist.is_initialized()):
        return bool(env.launched)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s))
    log.info("process group started: rank %d of %d, backend %s", env.rank, env.world_size, backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_of() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
