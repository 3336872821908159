"""Ranks of a DDP job agree on failure without waiting for a timeout.

Every synchronisation point inside a DDP job (the per-step loss check, the gather of each evaluation's shares, the
gather of RNG states before a state is saved, the end of training and the end of the job) first makes one
``all_reduce(MAX)`` of ``[failed, flag]`` (:func:`agree`). A rank that raised gives ``failed = 1`` there: either at
the point itself (the step and evaluation loops catch their errors and still reach it) or, for an error anywhere
else in the job, from the job runner's handler (:func:`announce`), whose collective meets the one the other ranks
are waiting in, since every such point is an ``agree``. When any rank failed, the ranks then gather one line per
failing rank and all raise :class:`RankFailed` at the same point: the job is recorded once, as ``failed`` (or
``oom``), with the failing ranks' errors, and every rank goes on to the next job.

Not covered (they still wait for the process group's timeout): an error inside a collective that is not an
``agree`` (DDP's gradient all-reduce in backward, SyncBatchNorm's gathers in a forward with ``--sync_bn``, DDP's
buffer broadcast at the start of a forward) on some ranks only. Hand-written: torch.distributed has no
failure-propagating collective on gloo (NCCL's error handling aborts the communicator instead).
"""

from __future__ import annotations

import logging
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class RankFailed(RuntimeError):
    """A DDP job failed on one or more ranks; every rank of the job raises it at the same collective.

    ``failures``: ``(rank, "Type: message")`` of each failing rank, in rank order."""

    def __init__(self, failures: list[tuple[int, str]]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"rank {rank} failed: {text}" for rank, text in failures))


def collective_device() -> torch.device:
    """Where the process group's tensors live: the current CUDA device under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(error: BaseException | None = None, flag: bool = False) -> bool:
    """One ``all_reduce(MAX)`` of ``[error is not None, flag]`` over the job's ranks (always two values, so any two
    agreements pair up); returns whether any rank set ``flag``. Raises :class:`RankFailed` (from ``error``) on
    every rank when any rank gave an error."""
    values = torch.tensor([int(error is not None), int(flag)], dtype=torch.int64, device=collective_device())
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    failed, flagged = (int(v) for v in values.tolist())
    if failed:
        own = None if error is None else (dist.get_rank(), f"{type(error).__name__}: {error}"[:400])
        failures = [f for f in _gather(own) if f is not None]
        log.error("DDP job stopped on every rank: %s", "; ".join(f"rank {r}: {t}" for r, t in failures))
        raise RankFailed(failures) from error
    return bool(flagged)


def announce(error: BaseException) -> RankFailed:
    """The :class:`RankFailed` agreed with the other ranks for an ``error`` raised on this rank outside an
    :func:`agree` (the others meet it at their next ``agree``); an error that already is one is returned as it is."""
    if isinstance(error, RankFailed):
        return error
    try:
        agree(error)
    except RankFailed as agreed:
        return agreed
    raise AssertionError("agree() with an error always raises")  # pragma: no cover


def _gather(obj: object) -> list[object]:
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
