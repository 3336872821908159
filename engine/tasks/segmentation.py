"""Dense segmentation tasks: BraTS multi-class (regions WT/TC/ET) and binary (one named region).

Training: patches (3D) or slices (2D/2.5D) from ``dataio.sampling`` and the registered loss on the
patch logits. Prediction: sliding-window logits of the whole case (``engine.inference``), argmax
labels. Metrics: ``metrics.segmentation.case_metrics`` over the task's ``MetricSpec`` (Dice, precision,
recall; HD95 in mm at test time only), plus the voxel confusion matrix of the test cases.
Selection: the highest validation ``dice_mean`` (mean Dice over the regions).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from dataio.sampling import PatchDataset, SliceDataset
from dataio.types import CachedCase
from losses import create_loss
from metrics.regions import BRATS_SPEC, MetricSpec, binary_spec
from metrics.segmentation import SegmentationMetricAccumulator

from ..evaluation import InferenceSettings, case_logits
from .base import Selection, Task


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a network output (models with deep supervision or attention return a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class SegmentationAccumulator:
    """Per-case segmentation metrics of argmax labels, the summed confusion matrix, the mean loss."""

    def __init__(self, spec: MetricSpec, *, include_hd95: bool,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> None:
        self.metrics = SegmentationMetricAccumulator(spec=spec, include_hd95=include_hd95)
        self.loss_fn = loss_fn
        self.losses: dict[str, float] = {}

    def update(self, case: CachedCase, prediction: torch.Tensor) -> None:
        label = torch.from_numpy(np.asarray(case.label, dtype=np.int64))
        if self.loss_fn is not None:
            with torch.no_grad():
                self.losses.setdefault(case.case_id, float(self.loss_fn(prediction[None], label[None])))
        self.metrics.update(prediction.argmax(0).numpy(), label.numpy(), case.spacing, case.case_id,
                            image_shape=case.original_shape)

    def per_case(self) -> list[dict[str, Any]]:
        return self.metrics.per_case()

    def aggregate(self) -> dict[str, float]:
        return self.metrics.aggregate()  # type: ignore[return-value]

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """``confusion``: long-format rows (reference, prediction, voxels) of the summed matrix."""
        matrix = self.metrics.confusion_matrix
        return {"confusion": [dict(reference=r, prediction=p, voxels=int(matrix[r, p]))
                              for r in range(matrix.shape[0]) for p in range(matrix.shape[1])]}

    def mean_loss(self) -> float | None:
        return float(np.mean(list(self.losses.values()))) if self.losses else None

    def share(self) -> tuple[Any, dict[str, float]]:
        """Plain, picklable state of this accumulator (metrics share and per-case losses)."""
        return self.metrics.share(), dict(self.losses)

    def merge(self, shares: list[tuple[Any, dict[str, float]]], order: list[str]) -> None:
        """Add other ranks' :meth:`share` of the same case list; rows and losses end in ``order``."""
        self.metrics.merge([metrics for metrics, _ in shares], order=order)
        losses = dict(self.losses)
        for _, other in shares:
            for case_id, value in other.items():
                losses.setdefault(case_id, value)
        position = {c: i for i, c in enumerate(order)}
        self.losses = dict(sorted(losses.items(), key=lambda item: position.get(item[0], len(position))))


class SegmentationTask(Task):
    """Dense segmentation over the regions and classes of ``spec``, trained with loss ``loss``."""

    selection = Selection(metric="dice_mean", mode="max", column="best_val_dice")

    def __init__(self, spec: MetricSpec, *, loss: str = "nnunet", name: str = "segmentation") -> None:
        self.spec = spec
        self.loss_name = loss
        self.loss_fn = create_loss(loss)
        self.name = name

    @property
    def n_outputs(self) -> int:
        return self.spec.n_classes

    def train_dataset(self, cases: list[CachedCase], *, modalities: tuple[str, ...], spatial_dims: int,
                      patch_size: tuple[int, ...], context_slices: int, samples_per_volume: int,
                      seed: int) -> Dataset:
        if spatial_dims == 3:
            return PatchDataset(cases, modalities, patch_size, samples_per_volume=samples_per_volume,
                                augment=True, seed=seed)  # type: ignore[arg-type]
        return SliceDataset(cases, modalities, patch_size, context_slices=context_slices,  # type: ignore[arg-type]
                            samples_per_volume=samples_per_volume, augment=True, seed=seed)

    def train_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        return {"loss": self.loss_fn(logits_of(model(image)).float(), label)}

    def predict_case(self, model: nn.Module, case: CachedCase, settings: InferenceSettings) -> torch.Tensor:
        """Logits (K, D, H, W), float32 on the CPU."""
        return case_logits(model, case, settings)

    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> SegmentationAccumulator:
        return SegmentationAccumulator(self.spec, include_hd95=stage == "test",
                                       loss_fn=self.loss_fn if with_loss else None)

    def result_columns(self) -> tuple[str, ...]:
        regions, classes = list(self.spec.regions), list(self.spec.classes)
        return tuple([f"dice_{r}" for r in regions + classes] + ["dice_mean"] + [f"hd95_{r}" for r in regions]
                     + [f"{m}_{r}" for r in regions + classes for m in ("precision", "recall")])

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), regions={k: list(v) for k, v in self.spec.regions.items()})


def brats_segmentation(loss: str = "nnunet") -> SegmentationTask:
    """BraTS multi-class segmentation: 4 labels, regions WT/TC/ET, classes NCR/ED."""
    return SegmentationTask(BRATS_SPEC, loss=loss, name="brats_segmentation")


def binary_segmentation(region: str, loss: str = "nnunet") -> SegmentationTask:
    """Binary segmentation of one foreground region named ``region`` (columns ``dice_<region>``, ...)."""
    return SegmentationTask(binary_spec(region), loss=loss, name="binary_segmentation")
