"""Optimizers and learning-rate schedulers by name. Schedulers step once per epoch."""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (CosineAnnealingLR, LambdaLR, LRScheduler, ReduceLROnPlateau, StepLR)


SGD_MOMENTUM = 0.99  # nnU-Net's; RetinaNet's train_defaults set 0.9


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float,
                    weight_decay: float, momentum: float | None = None) -> Optimizer:
    """``adamw`` (default), ``adam`` or ``sgd`` (Nesterov; ``momentum`` None = 0.99, as nnU-Net).

    ``momentum`` applies to SGD only; it is refused for the Adam family (whose betas play that role)."""
    if momentum is not None and name != "sgd":
        raise ValueError(f"--momentum applies to --optimizer sgd only, not {name!r}")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay,
                               momentum=SGD_MOMENTUM if momentum is None else momentum, nesterov=True)
    raise ValueError(f"--optimizer {name!r} is not one of adamw, adam, sgd")


def build_scheduler(name: str, optimizer: Optimizer, *, epochs: int,
                    step_size: int | None = None) -> LRScheduler | ReduceLROnPlateau | None:
    """Per-epoch scheduler.

    ``cosine``: cosine annealing to 1% of the initial lr over ``epochs``; ``plateau``: halve the lr
    when the validation metric has not improved for 5 epochs (mode max); ``step``: x0.1 every
    ``step_size`` epochs (None: every third of the run); ``poly``: (1 - epoch/epochs)^0.9 (nnU-Net); ``none``: constant.
    """
    if name == "cosine":
        base = optimizer.param_groups[0]["lr"]
        return CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=base * 0.01)
    if name == "plateau":
        return ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=5)
    if name == "step":
        return StepLR(optimizer, step_size=max(1, epochs // 3) if step_size is None else int(step_size), gamma=0.1)
    if name == "poly":
        return LambdaLR(optimizer, lambda e: max(0.0, 1.0 - e / max(1, epochs)) ** 0.9)
    if name == "none":
        return None
    raise ValueError(f"--scheduler {name!r} is not one of cosine, plateau, step, poly, none")


# torch's warning when a scheduler steps before any optimizer step; the schedule here is per epoch, so an
# epoch without an optimizer step (AMP's scaler skipping steps with inf gradients) still advances it.
_STEP_ORDER_WARNING = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"


def step_scheduler(scheduler: LRScheduler | ReduceLROnPlateau | None, val_metric: float | None) -> None:
    """Advance one epoch; the plateau scheduler needs the validation metric (skipped when unknown).

    The schedule counts epochs, not optimizer steps: an epoch whose optimizer steps were all skipped (AMP on
    inf gradients) advances it too, without torch's step-order warning.
    """
    if scheduler is None:
        return
    if isinstance(scheduler, ReduceLROnPlateau):
        if val_metric is not None and val_metric == val_metric:
            scheduler.step(val_metric)
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_STEP_ORDER_WARNING, category=UserWarning)
        scheduler.step()
