"""The few settings the trainer reads, as one small dataclass (no torch import: the CLI config extends it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass
class TrainerSettings:
    """Training settings: epochs, batch size (samples per optimiser step per process), the loss by registry name
    (the task builds it; a setting here so that a model's recipe can name its own, e.g. ``luna_dice``), optimiser (lr per optimiser step; ``momentum`` None = the optimiser's own
    default), per-epoch scheduler (``lr_step_size`` epochs per x0.1 step of ``step``; None = a third of the
    run), AMP (CUDA only), gradient accumulation and clipping, early-stopping ``patience`` (0 disables it),
    validation interval."""

    epochs: int = 10
    batch_size: int = 1
    loss: str = "nnunet"
    lr: float = 1e-3
    lr_decoder: float | None = None  # models with a declared encoder: lr of everything else (engine.fine_tuning)
    weight_decay: float = 1e-5
    optimizer: str = "adamw"
    momentum: float | None = None
    scheduler: str = "cosine"
    lr_step_size: int | None = None
    amp: bool = True
    grad_accum: int = 1
    max_grad_norm: float | None = 12.0
    patience: int = 0
    val_every: int = 1

    @classmethod
    def of(cls, settings: Any) -> "TrainerSettings":
        """Just the trainer's fields of a larger settings object (e.g. ``ExperimentConfig``)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def for_model(cls, settings: Any, model_defaults: dict[str, Any],
                  explicit: Iterable[str] = ()) -> "TrainerSettings":
        """The trainer's fields of ``settings`` with a model's own defaults (``ModelInfo.train_defaults``,
        e.g. RetinaNet's SGD) in place of every field the user left alone.

        A field counts as set by the user when it is named in ``explicit`` (the flags given on the command
        line) or differs from volbench's default; only the other fields take the model's value.
        """
        base = cls.of(settings)
        unknown = sorted(set(model_defaults) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"train_defaults name unknown trainer settings {unknown}")
        given = set(explicit)
        defaults = cls()
        replace = {k: v for k, v in model_defaults.items()
                   if k not in given and getattr(base, k) == getattr(defaults, k)}
        merged = dataclasses.replace(base, **replace)
        if "momentum" in replace and merged.optimizer != "sgd":  # the recipe's SGD momentum, the user's Adam(W)
            merged = dataclasses.replace(merged, momentum=base.momentum)
        return merged
