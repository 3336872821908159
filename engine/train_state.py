"""Resumable training state: what a job needs to continue after a kill, saved as its ``latest`` checkpoint.

The file holds the model, optimiser, scheduler and AMP-scaler state dicts, the RNG states of Python,
NumPy, torch, CUDA (when present) and the loader's generator, the last finished epoch, the best metric,
the early-stopping counter and the epoch rows so far. Everything is stored as tensors, numbers, strings,
lists and dicts, so it loads with ``torch.load(..., weights_only=True)``; it is written atomically.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_path

STATE_FORMAT = 1


@dataclass
class TrainState:
    """Progress of one job's training. ``epoch`` is the last finished epoch (0 before the first)."""

    epoch: int = 0
    best_epoch: int | None = None
    best_metric: float = float("nan")
    stale: int = 0
    stopped: bool = False
    train_time_s: float = 0.0
    epoch_rows: list[dict[str, Any]] = field(default_factory=list)


def rng_states(generator: torch.Generator | None = None) -> dict[str, Any]:
    """RNG states of Python, NumPy, torch (CPU and every CUDA device) and ``generator``, as plain data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        states["generator"] = generator.get_state()
    return states


def set_rng_states(states: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_states` returned."""
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    nps = states["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None and "generator" in states:
        generator.set_state(states["generator"])


def save_train_state(path: Path, state: TrainState, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: torch.amp.GradScaler | None,
                     rng_by_rank: list[dict[str, Any]], build: dict[str, Any] | None = None) -> None:
    """Write the full training state to ``path`` atomically; ``rng_by_rank``: :func:`rng_states` of every
    process training this job (one entry without DDP), so each rank resumes its own random streams; ``build``:
    the model's build kwargs, checked on resume (:func:`load_train_state`)."""
    payload = {
        "format": STATE_FORMAT,
        "progress": _plain(asdict(state)),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": list(rng_by_rank),
        "build": None if build is None else _plain(build),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_train_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler | None, generator: torch.Generator | None = None,
                     rank: int = 0, build: dict[str, Any] | None = None) -> TrainState:
    """Restore model, optimiser, scheduler, scaler and this ``rank``'s RNGs from ``path``; returns the progress.

    Raises:
        ValueError: the file cannot be read with ``weights_only=True`` or is not a training state, or it was saved
            by a model built with other kwargs than ``build`` (e.g. a grid planned differently since: weights of the
            same shapes would load into another network). Files without a build record are not checked.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"training state {path} cannot be read safely (weights_only=True): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a volbench training state (format {STATE_FORMAT})")
    saved, now = payload.get("build"), None if build is None else _plain(build)
    if now is not None and saved is not None and saved != now:
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(f"training state {path} was saved by a model built otherwise ({', '.join(changed)}: "
                         f"{ {k: saved.get(k) for k in changed} } then, { {k: now.get(k) for k in changed} } "
                         f"now); delete it to train this job afresh")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])
    by_rank = payload["rng"]
    if rank >= len(by_rank):
        raise ValueError(f"training state {path} holds RNG states of {len(by_rank)} processes; rank {rank} cannot "
                         "resume from it (resume with the same number of processes)")
    set_rng_states(by_rank[rank], generator)
    progress = payload["progress"]
    progress["best_metric"] = float("nan") if progress["best_metric"] is None else progress["best_metric"]
    return TrainState(**progress)


def _plain(obj: Any) -> Any:
    """Plain data (NaN kept as float, NumPy scalars as Python numbers)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return float("nan")
    return obj
