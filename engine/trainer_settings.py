"""The few settings the trainer reads, as one small dataclass (no torch import: the CLI config extends it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainerSettings:
    """Training settings: epochs, optimiser (lr per optimiser step), per-epoch scheduler, AMP (CUDA only),
    gradient accumulation and clipping, early-stopping ``patience`` (0 disables it), validation interval."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-5
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    amp: bool = True
    grad_accum: int = 1
    max_grad_norm: float | None = 12.0
    patience: int = 0
    val_every: int = 1

    @classmethod
    def of(cls, settings: Any) -> "TrainerSettings":
        """Just the trainer's fields of a larger settings object (e.g. ``ExperimentConfig``)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})
