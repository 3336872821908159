"""The run context handed to whatever writes files or logs: who this process is and where it writes.

With world size 1 (a plain ``python integrated_experiment.py``) it describes today's single process;
under torchrun the distributed setup fills in rank and world size, and only the main rank writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from utils.schema import JOBS_DIR, job_name


@dataclass(frozen=True)
class RunContext:
    """Rank, world size, device and folders of one process of a sweep.

    Attributes:
        output_dir: the sweep's results folder (sweep-level tables, best checkpoints, charts).
        device: where this process trains and evaluates.
        rank, world_size: this process among the sweep's processes (0 of 1 without torchrun).
        job_dir: the current job's own folder (``jobs/<model>_seed_<s>[_fold_<k>]``), ``None`` between jobs.
        mode: ``single`` (one process, or a ``--shard``), ``ddp`` (every rank trains the same job) or
            ``jobs`` (each rank runs its own jobs).
    """

    output_dir: Path
    device: torch.device
    rank: int = 0
    world_size: int = 1
    job_dir: Path | None = None
    mode: str = "single"

    @property
    def job_shard(self) -> tuple[int, int]:
        """(rank, world size) among the processes sharing one job: ``(0, 1)`` unless DDP."""
        return (self.rank, self.world_size) if self.mode == "ddp" else (0, 1)

    @property
    def writes_job_files(self) -> bool:
        """Whether this process writes the current job's files (under DDP rank 0 only)."""
        return self.mode != "ddp" or self.is_main

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    @property
    def jobs_root(self) -> Path:
        return Path(self.output_dir) / JOBS_DIR

    def for_job(self, model: str, seed: int, fold: int | None) -> "RunContext":
        """The same context with ``job_dir`` set to that job's folder."""
        return replace(self, job_dir=self.jobs_root / job_name(model, seed, fold))
