"""One training job as a short loop of named hooks: train epoch, validate, keep best, save state, stop early.

The task (``engine.tasks``) makes the batches' losses and the validation metrics; the trainer only
optimises the sum of the named losses, validates every ``val_every`` epochs, keeps the best checkpoint
by the task's selection metric, and writes the full training state (``engine.train_state``) after every
epoch so that a killed job continues from the next epoch with the same result.

Hooks (:class:`TrainerHooks`, all optional): ``on_train_start``, ``on_train_step``, ``on_validation``,
``on_epoch_end`` (after the epoch's state is saved), ``on_train_end``.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from utils.progress import progress

from dataio.loaders import set_epoch
from dataio.types import CachedCase
from utils.checkpoint import save_checkpoint
from utils.distributed import all_gather_objects, is_distributed

from engine.evaluation import EvaluationResult, evaluate_cases
from engine.inference import InferenceSettings
from engine.optim import build_optimizer, build_scheduler, step_scheduler
from engine.tasks.base import Task
from engine.train_state import TrainState, load_train_state, rng_states, save_train_state
from engine.trainer_settings import TrainerSettings

__all__ = ["DivergedError", "FitResult", "Optimisation", "TrainerHooks", "TrainerSettings", "fit", "train_one_epoch"]

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""


class TrainerHooks:
    """No-op hooks; subclass and override what you need. ``state`` is the live :class:`TrainState`."""

    def on_train_start(self, state: TrainState) -> None:
        """Before the first epoch of this run (after a resume: before the next epoch)."""

    def on_train_step(self, state: TrainState, step: int, losses: dict[str, float]) -> None:
        """After each batch's backward pass (``losses``: the batch's named losses and ``total``)."""

    def on_validation(self, state: TrainState, evaluation: EvaluationResult) -> None:
        """After each validation."""

    def on_epoch_end(self, state: TrainState, row: dict[str, Any]) -> None:
        """After the epoch's row is recorded and the ``latest`` state is saved."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch (or the early stop)."""


@dataclass
class FitResult:
    """What training produced: one row per epoch, the best epoch and its selection metric."""

    epoch_rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float = float("nan")
    epochs_run: int = 0
    train_time_s: float = 0.0


@dataclass
class Optimisation:
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None


def train_one_epoch(model: nn.Module, loader: DataLoader, task: Task, opt: Optimisation, *,
                    device: torch.device, settings: TrainerSettings, state: TrainState,
                    hooks: Sequence[TrainerHooks], desc: str) -> dict[str, float]:
    """Mean of each named loss and of their sum (``loss``) over one epoch (accumulation, clipping, AMP)."""
    model.train()
    sums: dict[str, float] = {}
    count = 0
    opt.optimizer.zero_grad(set_to_none=True)
    bar = progress(loader, desc=desc, leave=False, unit="batch")
    for step, batch in enumerate(bar, start=1):
        ctx = torch.autocast("cuda", dtype=torch.float16) if opt.scaler is not None else nullcontext()
        with ctx:
            losses = task.train_step(model, batch, device)
        parts = list(losses.values())
        loss = parts[0] if len(parts) == 1 else torch.stack([p.float() for p in parts]).sum()
        total = float(loss.detach())  # the step's one host sync (on CUDA): the finite check and the epoch mean
        if not _finite_everywhere(total, loss.device):
            raise DivergedError(f"non-finite training loss ({total}) at batch {step}")
        scaled = loss / settings.grad_accum
        (opt.scaler.scale(scaled) if opt.scaler else scaled).backward()
        if step % settings.grad_accum == 0 or step == len(loader):
            _optimiser_step(model, opt, settings)
        values = {"loss": total}
        if len(parts) > 1 or "loss" not in losses:
            values.update({f"loss_{k}": float(v.detach()) for k, v in losses.items()})
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        for hook in hooks:
            hook.on_train_step(state, step, values)
    return {k: v / max(count, 1) for k, v in sums.items()}


def _bare(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _finite_everywhere(loss: float, device: torch.device) -> bool:
    """Whether the loss value is finite on this rank and (under DDP) on every other, so all ranks stop together
    (``device``: where the process group's collectives run, the loss tensor's device)."""
    finite = math.isfinite(loss)
    if is_distributed():
        flag = torch.tensor([int(finite)], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())
    return finite


def _optimiser_step(model: nn.Module, opt: Optimisation, settings: TrainerSettings) -> None:
    if opt.scaler:
        opt.scaler.unscale_(opt.optimizer)
    if settings.max_grad_norm:
        nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
    if opt.scaler:
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        opt.optimizer.step()
    opt.optimizer.zero_grad(set_to_none=True)


def fit(model: nn.Module, loader: DataLoader, val_cases: list[CachedCase], task: Task,
        inference: InferenceSettings, settings: TrainerSettings, *, best_checkpoint: Path,
        checkpoint_info: dict[str, Any], latest_checkpoint: Path | None = None,
        hooks: Sequence[TrainerHooks] = (), desc: str = "train", shard: tuple[int, int] = (0, 1),
        writes: bool = True) -> FitResult:
    """Train for ``settings.epochs`` epochs; ``best_checkpoint`` holds the best epoch's weights.

    ``checkpoint_info`` carries ``model_name``, ``model_kwargs`` and ``meta`` for the checkpoint file.
    With ``latest_checkpoint`` the full training state is saved there after every epoch, and a state
    found there at the start is resumed from (the job continues with the next epoch).
    Under DDP (``model`` wrapped in DistributedDataParallel) ``shard=(rank, world_size)`` splits the
    validation cases across the ranks, and only the process with ``writes`` saves checkpoints; every rank
    reaches the same decisions (best epoch, early stop) because every rank sees the gathered metrics.
    """
    device = inference.device
    optimizer = build_optimizer(settings.optimizer, model.parameters(), lr=settings.lr,
                                weight_decay=settings.weight_decay, momentum=settings.momentum)
    scheduler = build_scheduler(settings.scheduler, optimizer, epochs=settings.epochs, step_size=settings.lr_step_size)
    opt = Optimisation(optimizer, scheduler,
                        torch.amp.GradScaler("cuda") if (settings.amp and device.type == "cuda") else None)
    generator = getattr(loader, "generator", None)
    state = TrainState()
    if latest_checkpoint is not None and latest_checkpoint.is_file():
        state = load_train_state(latest_checkpoint, model=_bare(model), optimizer=opt.optimizer,
                                 scheduler=opt.scheduler, scaler=opt.scaler, generator=generator, rank=shard[0])
        log.info("%s: resuming after epoch %d from %s", desc, state.epoch, latest_checkpoint)
    for hook in hooks:
        hook.on_train_start(state)
    epochs = progress(range(state.epoch + 1, settings.epochs + 1), desc=desc, unit="epoch", leave=False)
    for epoch in epochs if not state.stopped else ():
        t0 = time.perf_counter()
        row = _run_epoch(model, loader, val_cases, task, inference, settings, opt, state, epoch, hooks,
                         best_checkpoint if writes else None, checkpoint_info, shard)
        row["epoch_time_s"] = time.perf_counter() - t0
        state.epoch, state.train_time_s = epoch, state.train_time_s + row["epoch_time_s"]
        state.epoch_rows.append(row)
        state.stopped = bool(settings.patience and state.stale >= settings.patience)
        if latest_checkpoint is not None:
            rngs = all_gather_objects(rng_states(generator)) if shard[1] > 1 else [rng_states(generator)]
            if writes:
                save_train_state(latest_checkpoint, state, model=_bare(model), optimizer=opt.optimizer,
                                 scheduler=opt.scheduler, scaler=opt.scaler, rng_by_rank=rngs)
        for hook in hooks:
            hook.on_epoch_end(state, row)
        epochs.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{state.best_metric:.3f}")
        if state.stopped:
            log.info("%s: early stop at epoch %d (no improvement for %d validations)", desc, epoch, state.stale)
            break
    for hook in hooks:
        hook.on_train_end(state)
    return FitResult(epoch_rows=list(state.epoch_rows), best_epoch=state.best_epoch, best_metric=state.best_metric,
                     epochs_run=state.epoch, train_time_s=state.train_time_s)


def _run_epoch(model: nn.Module, loader: DataLoader, val_cases: list[CachedCase], task: Task,
               inference: InferenceSettings, settings: TrainerSettings, opt: Optimisation, state: TrainState,
               epoch: int, hooks: Sequence[TrainerHooks], best_checkpoint: Path | None,
               checkpoint_info: dict[str, Any], shard: tuple[int, int]) -> dict[str, Any]:
    """Train one epoch, validate when due, keep the best weights (saved when ``best_checkpoint`` is given),
    step the scheduler; returns the epoch row."""
    set_epoch(loader, epoch)
    lr = opt.optimizer.param_groups[0]["lr"]
    losses = train_one_epoch(model, loader, task, opt, device=inference.device, settings=settings, state=state,
                             hooks=hooks, desc=f"epoch {epoch}")
    value, val_row = float("nan"), {"val_loss": float("nan")}
    if epoch % settings.val_every == 0 or epoch == settings.epochs:
        evaluation = evaluate_cases(_bare(model), val_cases, task, inference, stage="val", with_loss=True,
                                    desc="validate", shard=shard)
        for hook in hooks:
            hook.on_validation(state, evaluation)
        val_row = task.validation_row(evaluation.aggregate, evaluation.mean_loss)
        value = evaluation.aggregate.get(task.selection.metric, float("nan"))
        if task.selection.improved(value, state.best_metric, first=state.best_epoch is None):
            state.best_epoch, state.best_metric, state.stale = epoch, value, 0
            meta = dict(checkpoint_info.get("meta", {}), epoch=epoch, **{f"val_{task.selection.metric}": value})
            if best_checkpoint is not None:
                save_checkpoint(best_checkpoint, _bare(model).state_dict(), model_name=checkpoint_info["model_name"],
                                model_kwargs=checkpoint_info["model_kwargs"], meta=meta)
        else:
            state.stale += 1
    step_scheduler(opt.scheduler, task.selection.score(value))
    extra = {f"train_{k}": v for k, v in losses.items() if k != "loss"}
    return dict(epoch=epoch, train_loss=losses["loss"], **extra, **val_row, lr=lr)
