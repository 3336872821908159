"""Dense segmentation tasks: BraTS multi-class (regions WT/TC/ET) and binary (one named region).

Training: patches (3D) or slices (2D/2.5D) from ``dataio.sampling`` and the registered loss on the
patch logits. Prediction: sliding-window logits of the whole case (``engine.inference``), argmax
labels. Metrics: ``metrics.segmentation.case_metrics`` over the task's ``MetricSpec`` (Dice, precision,
recall; HD95 in mm at test time only), plus the voxel confusion matrix of the test cases.
Binary tasks add the lesion metrics of ``engine.tasks.lesion_metrics`` (boxes from the components of the
predicted mask, scored by their highest foreground probability: the softmax of class 1 of the two-class
output); BraTS adds the lesion-wise Dice and HD95 per region of ``metrics.lesionwise`` at test time.
Selection: the highest validation ``dice_mean`` (mean Dice over the regions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from dataio.conventions import to_internal
from dataio.sampling import PatchDataset, SampleRules, SliceDataset
from dataio.types import CachedCase, DatasetInfo
from losses import LossSpec, create_loss, is_binary_loss
from losses.deep_supervision import deep_supervision_loss
from metrics.regions import BRATS_SPEC, MetricSpec, binary_spec
from metrics.segmentation import SegmentationMetricAccumulator
from utils.schema import DEFAULT_BINARY_REGION

from engine.inference import InferenceSettings, case_logits
from engine.tasks.base import Selection, Task
from engine.tasks.lesion_metrics import (LESION_FLAGS, LESION_RUN_COLUMNS, LesionAccumulator, LesionSettings,
                                         prediction_from_probability)
from engine.tasks.lesionwise import LESIONWISE_FLAGS, LESIONWISE_METRICS, LesionwiseAccumulator, LesionwiseSettings
from engine.tasks.registry import FolderEvaluation, TaskEntry, meta_region, register_task


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a network output (models with deep supervision or attention return a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class SegmentationAccumulator:
    """Per-case segmentation metrics of argmax labels, the summed confusion matrix, the mean loss."""

    def __init__(self, spec: MetricSpec, *, include_hd95: bool,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                 lesions: LesionAccumulator | None = None, lesionwise: LesionwiseAccumulator | None = None) -> None:
        self.metrics = SegmentationMetricAccumulator(spec=spec, include_hd95=include_hd95)
        self.loss_fn = loss_fn
        self.losses: dict[str, float] = {}
        self.lesions = lesions
        self.lesionwise = lesionwise
        self.extras = [a for a in (lesions, lesionwise) if a is not None]

    def update(self, case: CachedCase, prediction: torch.Tensor) -> None:
        label = torch.from_numpy(np.asarray(case.label, dtype=np.int64))
        if self.loss_fn is not None:
            with torch.no_grad():
                self.losses.setdefault(case.case_id, float(self.loss_fn(prediction[None], label[None])))
        labels = prediction.argmax(0).numpy()
        self.metrics.update(labels, label.numpy(), case.spacing, case.case_id, image_shape=case.original_shape)
        if self.lesions is not None:  # binary: class 1 is the foreground
            probability = torch.softmax(prediction.float(), dim=0)[1].numpy()
            self.lesions.update(case, prediction_from_probability(probability, labels == 1,
                                                                  self.lesions.settings.min_size))
        if self.lesionwise is not None:
            self.lesionwise.update(case, labels)

    def per_case(self) -> list[dict[str, Any]]:
        rows = self.metrics.per_case()
        for extra in self.extras:
            by_case = {r["case_id"]: r for r in extra.per_case()}
            rows = [dict(r, **by_case.get(r["case_id"], {})) for r in rows]
        return rows

    def aggregate(self) -> dict[str, float]:
        out = dict(self.metrics.aggregate())
        for extra in self.extras:
            out.update({k: v for k, v in extra.aggregate().items() if k != "n_cases"})
        return out  # type: ignore[return-value]

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """``confusion``: long-format rows (reference, prediction, voxels) of the summed matrix; on the lesion
        track also ``boxes`` (every test case's scored and reference boxes, :class:`LesionAccumulator`)."""
        matrix = self.metrics.confusion_matrix
        tables = {"confusion": [dict(reference=r, prediction=p, voxels=int(matrix[r, p]))
                                for r in range(matrix.shape[0]) for p in range(matrix.shape[1])]}
        if self.lesions is not None:
            tables.update(self.lesions.tables())
        return tables

    def mean_loss(self) -> float | None:
        return float(np.mean(list(self.losses.values()))) if self.losses else None

    def share(self) -> tuple[Any, dict[str, float], list[Any]]:
        """Plain, picklable state of this accumulator (metrics share, per-case losses, lesion shares)."""
        return self.metrics.share(), dict(self.losses), [extra.share() for extra in self.extras]

    def merge(self, shares: list[tuple[Any, dict[str, float], list[Any]]], order: list[str]) -> None:
        """Add other ranks' :meth:`share` of the same case list; rows and losses end in ``order``."""
        self.metrics.merge([metrics for metrics, _, _ in shares], order=order)
        for i, extra in enumerate(self.extras):
            extra.merge([extras[i] for _, _, extras in shares], order)
        losses = dict(self.losses)
        for _, other, _ in shares:
            for case_id, value in other.items():
                losses.setdefault(case_id, value)
        position = {c: i for i, c in enumerate(order)}
        self.losses = dict(sorted(losses.items(), key=lambda item: position.get(item[0], len(position))))


class SegmentationTask(Task):
    """Dense segmentation over the regions and classes of ``spec``, trained with loss ``loss``."""

    selection = Selection(metric="dice_mean", mode="max", column="best_val_dice")

    def __init__(self, spec: MetricSpec, *, loss: str | LossSpec = "nnunet", name: str = "segmentation",
                 lesions: LesionSettings | None = None, lesionwise: LesionwiseSettings | None = None) -> None:
        self.spec = spec
        self.loss_name = loss.name if isinstance(loss, LossSpec) else loss
        if is_binary_loss(self.loss_name) and spec.n_classes != 2:
            raise ValueError(f"--loss {self.loss_name} fits binary data (background and one foreground) only, not "
                             f"the {spec.n_classes} classes of this dataset; choose another --loss")
        self.loss_fn = create_loss(loss)
        self.name = name
        self.lesions = lesions
        self.lesionwise = lesionwise

    @property
    def n_outputs(self) -> int:
        return self.spec.n_classes

    def train_dataset(self, cases: list[CachedCase], *, modalities: tuple[str, ...], spatial_dims: int,
                      patch_size: tuple[int, ...], rules: SampleRules, samples_per_volume: int,
                      seed: int) -> Dataset:
        if spatial_dims == 3:
            return PatchDataset(cases, modalities, patch_size, samples_per_volume=samples_per_volume,  # type: ignore[arg-type]
                                foreground_fraction=rules.foreground_fraction, augment=True, seed=seed)
        return SliceDataset(cases, modalities, patch_size, context_slices=rules.context_slices,  # type: ignore[arg-type]
                            samples_per_volume=samples_per_volume, foreground_fraction=rules.foreground_fraction,
                            augment=True, seed=seed, centre_jitter=rules.centre_jitter)

    def train_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        output = model(image)
        if isinstance(output, list):  # deep supervision: logits per scale, full resolution first (tuples: logits first)
            return {"loss": deep_supervision_loss(self.loss_fn, output, label)}
        return {"loss": self.loss_fn(logits_of(output).float(), label)}

    def predict_case(self, model: nn.Module, case: CachedCase, settings: InferenceSettings) -> torch.Tensor:
        """Logits (K, D, H, W), float32 on the CPU."""
        return case_logits(model, case, settings)

    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> SegmentationAccumulator:
        test = stage == "test"
        lesions = LesionAccumulator(self.lesions) if self.lesions is not None else None
        lesionwise = (LesionwiseAccumulator(self.spec, self.lesionwise)
                      if self.lesionwise is not None and test else None)
        return SegmentationAccumulator(self.spec, include_hd95=test, loss_fn=self.loss_fn if with_loss else None,
                                       lesions=lesions, lesionwise=lesionwise)

    def result_columns(self) -> tuple[str, ...]:
        regions, classes = list(self.spec.regions), list(self.spec.classes)
        columns = ([f"dice_{r}" for r in regions + classes] + ["dice_mean"] + [f"hd95_{r}" for r in regions]
                   + [f"{m}_{r}" for r in regions + classes for m in ("precision", "recall")])
        if self.lesionwise is not None:
            columns += [f"{m}_{r}" for r in regions for m in LESIONWISE_METRICS]
        if self.lesions is not None:
            columns += list(LESION_RUN_COLUMNS)
        return tuple(columns)

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), regions={k: list(v) for k, v in self.spec.regions.items()})

    def write_prediction(self, case: CachedCase, prediction: torch.Tensor, out_dir: Path, *,
                         save_probabilities: bool = False, probability_format: str = "nifti") -> list[Path]:
        """The label map (and probabilities); binary tasks add the scored boxes of the mask's components."""
        written = super().write_prediction(case, prediction, out_dir, save_probabilities=save_probabilities,
                                           probability_format=probability_format)
        if self.lesions is not None:
            from engine.tasks.lesion_outputs import save_boxes

            probability = torch.softmax(prediction.float(), dim=0)[1].numpy()
            lesions = prediction_from_probability(probability, prediction.argmax(0).numpy() == 1, self.lesions.min_size)
            written += save_boxes(case, lesions, out_dir)
        return written


def brats_segmentation(loss: str | LossSpec = "nnunet",
                       lesionwise: LesionwiseSettings | None = None) -> SegmentationTask:
    """BraTS multi-class segmentation: 4 labels, regions WT/TC/ET, classes NCR/ED, lesion-wise Dice/HD95 per
    region at test time (``lesionwise``, default BraTS 2023's rules)."""
    return SegmentationTask(BRATS_SPEC, loss=loss, name="brats_segmentation",
                            lesionwise=lesionwise or LesionwiseSettings())


def binary_segmentation(region: str, loss: str | LossSpec = "nnunet",
                        lesions: LesionSettings | None = None) -> SegmentationTask:
    """Binary segmentation of one foreground region named ``region`` (columns ``dice_<region>``, ...) with
    a two-class softmax output (Dice + CE), plus the lesion metrics (``lesions``, default settings)."""
    return SegmentationTask(binary_spec(region), loss=loss, name="binary_segmentation",
                            lesions=lesions or LesionSettings())


def internal_labels(array: np.ndarray, convention: str, source: str) -> np.ndarray:
    """BraTS folder evaluation maps the file's ``convention`` to internal labels (``ValueError`` naming ``source``)."""
    return to_internal(array, convention, source=source)


def foreground_labels(array: np.ndarray, convention: str, source: str) -> np.ndarray:
    """Binary folder evaluation reads every non-zero voxel as foreground, whatever the label convention."""
    return (np.asarray(array) != 0).astype(np.uint8)


def _brats(dataset: DatasetInfo, loss: str | LossSpec, lesions: Any) -> SegmentationTask:
    return brats_segmentation(loss, LesionwiseSettings.of(lesions))


def _brats_from_meta(meta: dict[str, Any], lesions: Any) -> SegmentationTask:
    return brats_segmentation(lesionwise=LesionwiseSettings.of(lesions))


def _binary(dataset: DatasetInfo, loss: str | LossSpec, lesions: Any) -> SegmentationTask:
    return binary_segmentation(dataset.region, loss, LesionSettings.of(lesions))


def _binary_from_meta(meta: dict[str, Any], lesions: Any) -> SegmentationTask:
    return binary_segmentation(meta_region(meta), lesions=LesionSettings.of(lesions))


register_task(TaskEntry(
    name="brats_segmentation", model_kinds=("segmentation",), label_kinds=("brats",), build=_brats,
    rebuild=_brats_from_meta, legacy_n_classes=(BRATS_SPEC.n_classes, None), default_outputs=BRATS_SPEC.n_classes,
    flags=LESIONWISE_FLAGS, folder=FolderEvaluation("brats", BRATS_SPEC, internal_labels)))
register_task(TaskEntry(
    name="binary_segmentation", model_kinds=("segmentation",), label_kinds=("binary",), build=_binary,
    rebuild=_binary_from_meta, legacy_n_classes=(2,), flags=LESION_FLAGS,
    folder=FolderEvaluation("binary", binary_spec(DEFAULT_BINARY_REGION), foreground_labels, lesions=True)))
