"""One training job as a short loop of named hooks: train epoch, validate, keep best, save state, stop early.

The task (``engine.tasks``) makes the batches' losses and the validation metrics; the trainer only
optimises the sum of the named losses, validates every ``val_every`` epochs, keeps the best checkpoint
by the task's selection metric, and writes the full training state (``engine.train_state``) after every
epoch so that a killed job continues from the next epoch with the same result.

:func:`fit` takes its settings as objects: :class:`FitInputs` (model, task, loader, validation cases,
inference settings, DDP shard), :class:`TrainerSettings` (epochs, optimiser, schedule, ...) and
:class:`CheckpointFiles` (best weights, resumable state, whether this process writes).

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
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from utils.progress import progress

from dataio.loaders import set_epoch
from dataio.types import CachedCase
from engine.fine_tuning import parameter_groups
from utils.checkpoint import save_checkpoint
from utils.distributed import all_gather_objects
from utils.rank_agreement import agree

from engine.evaluation import EvaluationRequest, EvaluationResult, evaluate_cases
from engine.inference import InferenceSettings
from engine.optim import build_optimizer, build_scheduler, step_scheduler
from engine.tasks.base import Task
from engine.train_state import TrainState, load_train_state, rng_states, save_train_state
from engine.trainer_settings import TrainerSettings

__all__ = ["CheckpointFiles", "DivergedError", "FitInputs", "FitResult", "Optimisation", "TrainerHooks",
           "TrainerSettings", "fit", "train_one_epoch"]

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
    """How the weights are stepped: the optimiser, its per-epoch ``scheduler`` (None: constant lr), the AMP
    ``scaler`` (None: no AMP), one optimiser step per ``grad_accum`` batches, gradient-norm clipping at
    ``max_grad_norm`` (None: off)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    grad_accum: int = 1
    max_grad_norm: float | None = None

    @classmethod
    def build(cls, settings: TrainerSettings, params: Iterable[nn.Parameter], device: torch.device) -> "Optimisation":
        """Optimiser, scheduler and (on CUDA with ``settings.amp``) scaler of ``settings`` for ``params``."""
        optimizer = build_optimizer(settings.optimizer, params, lr=settings.lr, weight_decay=settings.weight_decay,
                                    momentum=settings.momentum)
        scheduler = build_scheduler(settings.scheduler, optimizer, epochs=settings.epochs,
                                    step_size=settings.lr_step_size)
        scaler = torch.amp.GradScaler("cuda") if (settings.amp and device.type == "cuda") else None
        return cls(optimizer, scheduler, scaler, settings.grad_accum, settings.max_grad_norm)


@dataclass
class FitInputs:
    """What one job trains on and how it validates.

    ``model``: the network (wrapped in DistributedDataParallel under DDP); ``loader``: the training batches;
    ``val_cases``: whole cases, predicted as ``inference`` says (its ``device`` is the training device too);
    ``shard=(rank, world_size)`` splits the validation cases across the ranks of a DDP job.
    """

    model: nn.Module
    task: Task
    loader: DataLoader
    val_cases: list[CachedCase]
    inference: InferenceSettings
    shard: tuple[int, int] = (0, 1)


@dataclass
class CheckpointFiles:
    """Where training writes: ``best`` gets the best epoch's weights with ``info`` (``model_name``,
    ``model_kwargs`` and ``meta`` of the checkpoint file); ``latest`` (None: not kept) gets the full training
    state after every epoch and is resumed from when found at the start. Only a process with ``writes``
    saves (rank 0 under DDP)."""

    best: Path
    info: dict[str, Any]
    latest: Path | None = None
    writes: bool = True


def train_one_epoch(model: nn.Module, loader: DataLoader, task: Task, opt: Optimisation, *,
                    device: torch.device, state: TrainState, hooks: Sequence[TrainerHooks] = (),
                    desc: str = "train") -> dict[str, float]:
    """Mean of each named loss and of their sum (``loss``) over one epoch (accumulation, clipping, AMP).

    For a model in DistributedDataParallel (a DDP job) each step's loss check is one agreement of every rank
    (``utils.rank_agreement``): an error on any rank in the step's forward pass stops the job on every rank."""
    model.train()
    peers = isinstance(model, nn.parallel.DistributedDataParallel)
    sums: dict[str, float] = {}
    count = 0
    opt.optimizer.zero_grad(set_to_none=True)
    bar = progress(loader, desc=desc, leave=False, unit="batch")
    for step, batch in enumerate(bar, start=1):  # an error loading a batch is announced by the job runner
        error: Exception | None = None
        try:
            ctx = torch.autocast("cuda", dtype=torch.float16) if opt.scaler is not None else nullcontext()
            with ctx:
                losses = task.train_step(model, batch, device)
            parts = list(losses.values())
            loss = parts[0] if len(parts) == 1 else torch.stack([p.float() for p in parts]).sum()
            total = float(loss.detach())  # the step's one host sync (on CUDA): the finite check and the epoch mean
        except Exception as exc:  # noqa: BLE001 - under DDP the other ranks must hear of it (below)
            if not peers:
                raise
            error, total = exc, float("nan")
        finite = math.isfinite(total)
        if peers:  # one agreement per step: an error on any rank stops every rank (RankFailed), so does a NaN
            finite = not agree(error, flag=not finite)
        if not finite:
            raise DivergedError(f"non-finite training loss ({total}) at batch {step}")
        scaled = loss / opt.grad_accum
        (opt.scaler.scale(scaled) if opt.scaler else scaled).backward()
        if step % opt.grad_accum == 0 or step == len(loader):
            _optimiser_step(model, opt)
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


def _optimiser_step(model: nn.Module, opt: Optimisation) -> None:
    if opt.scaler:
        opt.scaler.unscale_(opt.optimizer)
    if opt.max_grad_norm:
        nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
    if opt.scaler:
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        opt.optimizer.step()
    opt.optimizer.zero_grad(set_to_none=True)


def fit(inputs: FitInputs, settings: TrainerSettings, files: CheckpointFiles, *,
        hooks: Sequence[TrainerHooks] = (), desc: str = "train") -> FitResult:
    """Train for ``settings.epochs`` epochs; ``files.best`` holds the best epoch's weights.

    A state found at ``files.latest`` is resumed from (the job continues with the next epoch). Under DDP
    every rank reaches the same decisions (best epoch, early stop) because every rank sees the gathered
    metrics. ``desc`` labels the progress bars and log lines. ``settings.epochs`` 0 (zero-shot evaluation of
    loaded weights): nothing is trained, the weights as they are become ``files.best`` (epoch 0).
    """
    if settings.epochs == 0:
        if files.writes:
            info = files.info
            save_checkpoint(files.best, _bare(inputs.model).state_dict(), model_name=info["model_name"],
                            model_kwargs=info["model_kwargs"], meta=dict(info.get("meta", {}), epoch=0))
        return FitResult(epoch_rows=[], best_epoch=None, best_metric=float("nan"), epochs_run=0, train_time_s=0.0)
    run = _Training(inputs, settings, files, hooks, desc)
    run.notify("on_train_start")
    epochs = progress(range(run.state.epoch + 1, settings.epochs + 1), desc=desc, unit="epoch", leave=False)
    for epoch in epochs if not run.state.stopped else ():
        start = time.perf_counter()
        row = run.run_epoch(epoch)
        run.end_epoch(row, time.perf_counter() - start)
        epochs.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{run.state.best_metric:.3f}")
        if run.state.stopped:
            log.info("%s: early stop at epoch %d (no improvement for %d validations)", desc, epoch, run.state.stale)
            break
    run.notify("on_train_end")
    state = run.state
    return FitResult(epoch_rows=list(state.epoch_rows), best_epoch=state.best_epoch, best_metric=state.best_metric,
                     epochs_run=state.epoch, train_time_s=state.train_time_s)


class _Training:
    """One call of :func:`fit`: the live optimisation and :class:`TrainState`, and the named steps of an epoch
    (train, validate, keep the best weights, step the scheduler, save the state, tell the hooks)."""

    def __init__(self, inputs: FitInputs, settings: TrainerSettings, files: CheckpointFiles,
                 hooks: Sequence[TrainerHooks], desc: str) -> None:
        self.inputs, self.settings, self.files, self.hooks, self.desc = inputs, settings, files, hooks, desc
        self.opt = Optimisation.build(settings, parameter_groups(inputs.model, settings.lr_decoder),
                                      inputs.inference.device)
        self.generator: torch.Generator | None = getattr(inputs.loader, "generator", None)
        self.state = self._resume()

    def _resume(self) -> TrainState:
        """The state saved at ``files.latest`` (model, optimiser, RNGs restored), or a fresh one."""
        latest = self.files.latest
        if latest is None or not latest.is_file():
            return TrainState()
        state = load_train_state(latest, model=_bare(self.inputs.model), optimizer=self.opt.optimizer,
                                 scheduler=self.opt.scheduler, scaler=self.opt.scaler, generator=self.generator,
                                 rank=self.inputs.shard[0], build=self.files.info.get("model_kwargs"))
        log.info("%s: resuming after epoch %d from %s", self.desc, state.epoch, latest)
        return state

    def notify(self, event: str, *args: Any) -> None:
        """Call hook method ``event`` (e.g. ``on_train_start``) of every hook with the state and ``args``."""
        for hook in self.hooks:
            getattr(hook, event)(self.state, *args)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch, validate when due, step the scheduler; returns the epoch row (``lr``: at its start)."""
        inputs = self.inputs
        set_epoch(inputs.loader, epoch)
        lr = self.opt.optimizer.param_groups[0]["lr"]
        losses = train_one_epoch(inputs.model, inputs.loader, inputs.task, self.opt, device=inputs.inference.device,
                                 state=self.state, hooks=self.hooks, desc=f"epoch {epoch}")
        value, val_row = float("nan"), {"val_loss": float("nan")}
        if epoch % self.settings.val_every == 0 or epoch == self.settings.epochs:
            value, val_row = self.validate(epoch)
        step_scheduler(self.opt.scheduler, inputs.task.selection.score(value))
        extra = {f"train_{k}": v for k, v in losses.items() if k != "loss"}
        return dict(epoch=epoch, train_loss=losses["loss"], **extra, **val_row, lr=lr)

    def validate(self, epoch: int) -> tuple[float, dict[str, Any]]:
        """Evaluate the validation cases and keep the best weights; the selection metric and the row's
        validation columns."""
        inputs = self.inputs
        request = EvaluationRequest(stage="val", with_loss=True, desc="validate", shard=inputs.shard)
        evaluation = evaluate_cases(_bare(inputs.model), inputs.val_cases, inputs.task, inputs.inference, request)
        self.notify("on_validation", evaluation)
        val_row = inputs.task.validation_row(evaluation.aggregate, evaluation.mean_loss)
        value = evaluation.aggregate.get(inputs.task.selection.metric, float("nan"))
        self.keep_best(epoch, value)
        return value, val_row

    def keep_best(self, epoch: int, value: float) -> None:
        """Count a validation without improvement, or make ``epoch`` the best and save its weights."""
        state, selection = self.state, self.inputs.task.selection
        if not selection.improved(value, state.best_metric, first=state.best_epoch is None):
            state.stale += 1
            return
        state.best_epoch, state.best_metric, state.stale = epoch, value, 0
        if self.files.writes:
            info = self.files.info
            meta = dict(info.get("meta", {}), epoch=epoch, **{f"val_{selection.metric}": value})
            save_checkpoint(self.files.best, _bare(self.inputs.model).state_dict(), model_name=info["model_name"],
                            model_kwargs=info["model_kwargs"], meta=meta)

    def end_epoch(self, row: dict[str, Any], seconds: float) -> None:
        """Record the epoch's row and time (s), decide the early stop, save the state, call ``on_epoch_end``."""
        state = self.state
        row["epoch_time_s"] = seconds
        state.epoch, state.train_time_s = row["epoch"], state.train_time_s + seconds
        state.epoch_rows.append(row)
        state.stopped = bool(self.settings.patience and state.stale >= self.settings.patience)
        self.save_state()
        self.notify("on_epoch_end", row)

    def save_state(self) -> None:
        """Write the full training state to ``files.latest`` (with every rank's RNG states under DDP)."""
        if self.files.latest is None:
            return
        own = rng_states(self.generator)
        if self.inputs.shard[1] > 1:
            agree()  # a rank that failed since the last agreement announces it here, not in the gather
        rngs = all_gather_objects(own) if self.inputs.shard[1] > 1 else [own]
        if self.files.writes:
            save_train_state(self.files.latest, self.state, model=_bare(self.inputs.model),
                             optimizer=self.opt.optimizer, scheduler=self.opt.scheduler, scaler=self.opt.scaler,
                             rng_by_rank=rngs, build=self.files.info.get("model_kwargs"))
