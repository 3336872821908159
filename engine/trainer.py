"""One training job: epochs of patch training, per-epoch sliding-window validation, best checkpoint.

The loop is a short sequence of named steps (train epoch, validate, keep best, schedule, stop early).
Loss: the registered loss on patch logits. Selection: mean validation Dice over the task's regions.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dataio.loaders import set_epoch
from dataio.types import CachedCase
from utils.checkpoint import save_checkpoint

from .config import ExperimentConfig
from .evaluation import InferenceSettings, evaluate_cases
from .optim import build_optimizer, build_scheduler, step_scheduler

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""


@dataclass
class FitResult:
    """What training produced: one row per epoch, the best epoch and its validation Dice."""

    epoch_rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_dice: float = float("nan")
    epochs_run: int = 0
    train_time_s: float = 0.0


def _loss_of(loss_fn: Callable[..., torch.Tensor], output: Any, target: torch.Tensor) -> torch.Tensor:
    logits = output[0] if isinstance(output, (tuple, list)) else output
    return loss_fn(logits.float(), target)


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: Callable[..., torch.Tensor],
                    optimizer: torch.optim.Optimizer, *, device: torch.device, config: ExperimentConfig,
                    scaler: torch.amp.GradScaler | None, desc: str) -> float:
    """Mean training loss of one epoch (gradient accumulation, clipping, AMP on CUDA)."""
    model.train()
    use_amp = scaler is not None
    total, count = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, leave=False, unit="batch")
    for step, batch in enumerate(bar, start=1):
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        ctx = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
        with ctx:
            loss = _loss_of(loss_fn, model(image), label)
        if not torch.isfinite(loss):
            raise DivergedError(f"non-finite training loss ({loss.item()}) at batch {step}")
        scaled = loss / config.grad_accum
        (scaler.scale(scaled) if scaler else scaled).backward()
        if step % config.grad_accum == 0 or step == len(loader):
            if scaler:
                scaler.unscale_(optimizer)
            if config.max_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach())
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def fit(model: nn.Module, loader: DataLoader, val_cases: list[CachedCase], settings: InferenceSettings, *,
        loss_fn: Callable[..., torch.Tensor], config: ExperimentConfig, checkpoint_path: Path,
        checkpoint_info: dict[str, Any], desc: str) -> FitResult:
    """Train for ``config.epochs`` epochs; the checkpoint at ``checkpoint_path`` holds the best epoch.

    ``checkpoint_info`` carries ``model_name``, ``model_kwargs`` and ``meta`` for the checkpoint file.
    """
    device = settings.device
    optimizer = build_optimizer(config.optimizer, model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = build_scheduler(config.scheduler, optimizer, epochs=config.epochs)
    scaler = torch.amp.GradScaler("cuda") if (config.amp and device.type == "cuda") else None
    result, stale = FitResult(), 0
    start = time.perf_counter()
    epochs = tqdm(range(1, config.epochs + 1), desc=desc, unit="epoch", leave=False)
    for epoch in epochs:
        t0 = time.perf_counter()
        set_epoch(loader, epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(model, loader, loss_fn, optimizer, device=device, config=config,
                                     scaler=scaler, desc=f"epoch {epoch}")
        val_dice, val_loss, val_means = float("nan"), float("nan"), {}
        if epoch % config.val_every == 0 or epoch == config.epochs:
            evaluation = evaluate_cases(model, val_cases, settings, include_hd95=False, loss_fn=loss_fn,
                                        desc="validate")
            val_means = {f"val_{k}": v for k, v in evaluation.aggregate.items()
                         if k.startswith("dice_") and not k.startswith("n_")}
            val_dice = evaluation.aggregate.get("dice_mean", float("nan"))
            val_loss = evaluation.mean_loss if evaluation.mean_loss is not None else float("nan")
            improved = result.best_epoch is None or (not math.isnan(val_dice) and
                                                     (math.isnan(result.best_val_dice) or val_dice > result.best_val_dice))
            if improved:
                result.best_epoch, result.best_val_dice, stale = epoch, val_dice, 0
                save_checkpoint(checkpoint_path, model.state_dict(), **_with_epoch(checkpoint_info, epoch, val_dice))
            else:
                stale += 1
        step_scheduler(scheduler, val_dice)
        result.epoch_rows.append(dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss, **val_means,
                                      lr=lr, epoch_time_s=time.perf_counter() - t0))
        result.epochs_run = epoch
        epochs.set_postfix(loss=f"{train_loss:.3f}", val_dice=f"{val_dice:.3f}")
        if config.patience and stale >= config.patience:
            log.info("%s: early stop at epoch %d (no improvement for %d validations)", desc, epoch, stale)
            break
    result.train_time_s = time.perf_counter() - start
    return result


def _with_epoch(info: dict[str, Any], epoch: int, val_dice: float) -> dict[str, Any]:
    meta = dict(info.get("meta", {}), epoch=epoch, val_dice_mean=val_dice)
    return dict(model_name=info["model_name"], model_kwargs=info["model_kwargs"], meta=meta)
