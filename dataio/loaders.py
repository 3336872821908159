"""Training DataLoaders: validated settings, seeded shuffling, per-epoch reseeding, DDP.

Conventions:
- The shuffle order of epoch e is a permutation drawn from a torch Generator seeded with
  (seed, e), so it is the same after a resume and independent of the worker count. A rank of a
  DDP job (``distributed=True``) takes its share of that same permutation (:class:`SeededDistributedSampler`,
  padded by repeating samples so that every rank gets the same count and steps together).
- Call :func:`set_epoch` (loader, epoch) before each epoch. For datasets with a ``set_epoch``
  method (``PatchDataset``, ``SliceDataset``) the sampler yields ``(epoch, index)`` pairs, so the
  epoch reaches the sample RNG even in persistent worker processes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)


@dataclass
class LoaderSettings:
    """DataLoader flags (CLI names in brackets).

    Attributes:
        batch_size: samples per batch (``--batch_size``), >= 1.
        num_workers: worker processes (``--num_workers``), >= 0; 0 loads in the main process.
        sharing_strategy: ``torch.multiprocessing`` sharing strategy (``--sharing_strategy``), set
            only when ``num_workers > 0``.
        pin_memory: page-locked batches (useful only with a GPU).
        persistent_workers: keep workers between epochs; ignored when ``num_workers == 0``.
    """

    batch_size: int = 1
    num_workers: int = 0
    sharing_strategy: str = "file_descriptor"
    pin_memory: bool = False
    persistent_workers: bool = False

    def validate(self) -> "LoaderSettings":
        """Raise ``ValueError`` naming the flag when a value is out of range; return ``self``."""
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"--num_workers must be >= 0, got {self.num_workers}")
        allowed = sorted(mp.get_all_sharing_strategies())
        if self.sharing_strategy not in allowed:
            raise ValueError(f"--sharing_strategy must be one of {allowed}, got {self.sharing_strategy!r}")
        return self


class SeededShuffleSampler(Sampler[int]):
    """Random permutation of ``range(n)`` per epoch, from a Generator seeded with (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class SeededDistributedSampler(SeededShuffleSampler):
    """One rank's share of :class:`SeededShuffleSampler`'s permutation: positions ``rank::world_size`` of it,
    padded (by repeating its start) to a multiple of ``world_size`` so every rank takes the same number of
    steps. With batch b per rank, step k of the ranks together holds exactly the samples of step k of one
    process at batch b * world_size (the same global order), which is what makes DDP runs comparable."""

    def __init__(self, n: int, seed: int, rank: int, world_size: int) -> None:
        super().__init__(n, seed)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.total = -(-self.n // self.world_size) * self.world_size

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        order += order[: self.total - len(order)]
        return iter(order[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.total // self.world_size


class EpochTaggedSampler(Sampler):
    """Wraps a sampler; yields ``(epoch, index)`` pairs when ``tag`` else plain indices."""

    def __init__(self, inner: Sampler, tag: bool) -> None:
        self.inner, self.tag, self.epoch = inner, tag, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        epoch = self.epoch
        for i in self.inner:
            yield (epoch, i) if self.tag else i

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed (base seed + id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_train_loader(dataset: Dataset, settings: LoaderSettings, *, seed: int,
                      distributed: bool = False) -> DataLoader:
    """A shuffling training DataLoader (drop_last=False); see the module docstring for the order.

    ``distributed``: this process is one rank of a DDP job (needs an initialised process group) and gets
    its :class:`SeededDistributedSampler` share. Call :func:`set_epoch` before every epoch.
    """
    settings.validate()
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("a distributed training loader needs an initialised torch.distributed process group")
        inner: Sampler = SeededDistributedSampler(len(dataset), seed, dist.get_rank(),  # type: ignore[arg-type]
                                                  dist.get_world_size())
    else:
        inner = SeededShuffleSampler(len(dataset), seed)  # type: ignore[arg-type]
    sampler = EpochTaggedSampler(inner, tag=hasattr(dataset, "set_epoch"))
    workers = settings.num_workers
    if workers > 0 and mp.get_sharing_strategy() != settings.sharing_strategy:
        mp.set_sharing_strategy(settings.sharing_strategy)
        logger.info("torch.multiprocessing sharing strategy set to %s", settings.sharing_strategy)
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=settings.pin_memory,
        persistent_workers=settings.persistent_workers and workers > 0,
        drop_last=False,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(int(seed)),
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Select ``epoch`` for the loader's sampler (shuffle order) and dataset (sample RNG)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
