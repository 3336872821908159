"""The task interface: everything that differs between kinds of work (segmentation, detection, ...).

A task owns how training samples are made from cached cases, one training step (a dict of named
losses whose sum is optimised), how one whole case is predicted, the metric accumulator (per-case
rows, aggregate, extra tables), the metric that selects the best epoch and the result columns it adds.
The trainer and the runner call only these methods, so a new kind of model is one new task module
(registered in ``engine.tasks``), with no ``if task == ...`` anywhere else.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from dataio.sampling import SampleRules
from dataio.types import CachedCase


@dataclass(frozen=True)
class Selection:
    """The validation metric that picks the best epoch.

    Attributes:
        metric: key of the validation aggregate (e.g. ``dice_mean``).
        mode: ``max`` (higher is better) or ``min``.
        column: run-table column that records the best value (e.g. ``best_val_dice``).
    NaN never beats a number; the first validated epoch is kept when every value is NaN.
    """

    metric: str
    mode: str = "max"
    column: str = "best_val_dice"

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"selection mode must be 'max' or 'min', got {self.mode!r}")

    def improved(self, value: float, best: float, first: bool) -> bool:
        """Whether ``value`` beats ``best`` (``first``: no epoch has been validated yet)."""
        if first:
            return True
        if math.isnan(value):
            return False
        if math.isnan(best):
            return True
        return value > best if self.mode == "max" else value < best

    def score(self, value: float) -> float:
        """``value`` oriented so that higher is better (for the plateau scheduler, mode max)."""
        return value if self.mode == "max" else -value


class CaseAccumulator(Protocol):
    """Metrics over whole cases: fed one case at a time, read once at the end."""

    def update(self, case: CachedCase, prediction: Any) -> None:
        """Add one labelled case and the task's prediction for it."""

    def per_case(self) -> list[dict[str, Any]]:
        """One row per case (``case_id`` first)."""

    def aggregate(self) -> dict[str, float]:
        """Dataset-level values (means and ``n_<metric>`` counts, ``n_cases``)."""

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Extra per-job tables by name (e.g. ``confusion``), rows without run keys."""

    def mean_loss(self) -> float | None:
        """Mean loss over the cases, when the accumulator was asked to compute one."""

    def share(self) -> Any:
        """A plain, picklable copy of what was accumulated (sent to the other ranks)."""

    def merge(self, shares: list[Any], order: list[str]) -> None:
        """Add other ranks' :meth:`share` of the same cases; per-case rows end in ``order`` (the case ids
        in the unsharded order), so every rank holds what one process would."""


class Task(ABC):
    """Base class of tasks; see the module docstring. Subclasses set ``name`` and ``selection``."""

    name: str = "task"
    selection: Selection = Selection(metric="dice_mean")
    validation_prefixes: tuple[str, ...] = ("dice_",)
    may_skip_parameters: bool = False  # some parameters can get no gradient in a step (DDP must search for them)
    supports_tta: bool = True  # flip test-time augmentation of dense logits (``InferenceSettings.tta``)

    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """Output channels of the network (``out_channels`` of the registry builder)."""

    @abstractmethod
    def train_dataset(self, cases: list[CachedCase], *, modalities: tuple[str, ...], spatial_dims: int,
                      patch_size: tuple[int, ...], rules: SampleRules, samples_per_volume: int,
                      seed: int) -> Dataset:
        """Training samples of ``cases``; they must depend only on (seed, epoch, index) for resumability.
        ``rules``: the model's foreground share, centre jitter and context slices (``dataio.sampling``)."""

    @abstractmethod
    def train_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """Named losses of one batch (the trainer optimises their sum; a single loss is named ``loss``)."""

    @abstractmethod
    def predict_case(self, model: nn.Module, case: CachedCase, settings: Any) -> Any:
        """The task's prediction of one whole case (what its accumulator and ``on_prediction`` consume)."""

    @abstractmethod
    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> CaseAccumulator:
        """A fresh accumulator; ``stage`` is ``val`` (cheap metrics, each epoch) or ``test`` (all metrics)."""

    @abstractmethod
    def result_columns(self) -> tuple[str, ...]:
        """Test-metric columns this task adds to the run table (in order)."""

    def validation_row(self, aggregate: dict[str, float], mean_loss: float | None) -> dict[str, float]:
        """Epoch-table columns of one validation: ``val_loss`` and ``val_<metric>`` per selected metric."""
        row = {"val_loss": mean_loss if mean_loss is not None else float("nan")}
        row.update({f"val_{k}": v for k, v in aggregate.items() if k.startswith(self.validation_prefixes)})
        return row

    def run_labels(self) -> dict[str, str]:
        """Text columns of every run and per-case row: ``prompt_mode`` (the prompts a model was trained with) and
        ``click_mode`` (the click rule of its per-click columns); ``none`` for models that take no prompts."""
        return dict(prompt_mode="none", click_mode="none")

    def use_input_preprocessing(self, params: dict[str, Any]) -> None:
        """Feed the model its own preprocessing of the cases (``ModelInfo.preprocessing``); tasks that support it
        override this. Raises ``ValueError`` here: this task takes the dataset's preprocessing only."""
        raise ValueError(f"task {self.name!r} cannot give a model its own input preprocessing ({params})")

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint records so that re-evaluation rebuilds this task (:func:`engine.tasks.task_from_meta`)."""
        return {"task": self.name, "n_classes": self.n_outputs}

    def write_prediction(self, case: CachedCase, prediction: Any, out_dir: Path, *, save_probabilities: bool = False,
                         probability_format: str = "nifti") -> list[Path]:
        """Write one case's prediction in the image's original space; returns the files written (default: the
        label map of dense logits and optionally their softmax, ``engine.tasks.prediction_io``)."""
        from engine.tasks.prediction_io import save_case_prediction

        return save_case_prediction(case, prediction, out_dir, save_probabilities=save_probabilities,
                                    probability_format=probability_format)
