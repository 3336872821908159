"""Evaluate a model on whole cases: sliding-window logits -> argmax labels -> per-case metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from dataio.types import CachedCase
from metrics.regions import BRATS_SPEC, MetricSpec
from metrics.segmentation import SegmentationMetricAccumulator

from .inference import AttentionRecorder, flip_tta_logits, predict_logits


@dataclass
class InferenceSettings:
    """How a model is applied to a whole case (sizes in voxels)."""

    modalities: tuple[str, ...]
    roi_size: tuple[int, ...]
    overlap: float
    device: torch.device
    spatial_dims: int = 3
    context_slices: int = 0
    amp: bool = False
    tta: bool = False

    def predict_kwargs(self) -> dict[str, Any]:
        return dict(roi_size=self.roi_size, overlap=self.overlap, device=self.device,
                    spatial_dims=self.spatial_dims, context_slices=self.context_slices, amp=self.amp)


@dataclass
class EvaluationResult:
    """Per-case metric rows, their aggregate, the mean loss, modality weights (attention models) and the
    voxel confusion matrix summed over cases (rows = reference label, columns = predicted label)."""

    per_case: list[dict[str, Any]]
    aggregate: dict[str, float]
    mean_loss: float | None = None
    attention: list[dict[str, Any]] = field(default_factory=list)
    confusion: np.ndarray | None = None

    def confusion_rows(self) -> list[dict[str, int]]:
        """The confusion matrix as long-format rows: reference, prediction, voxels."""
        if self.confusion is None:
            return []
        return [dict(reference=r, prediction=p, voxels=int(self.confusion[r, p]))
                for r in range(self.confusion.shape[0]) for p in range(self.confusion.shape[1])]


def case_tensor(case: CachedCase, modalities: tuple[str, ...]) -> torch.Tensor:
    """Image channels of ``case`` for ``modalities`` as a float32 tensor (C, D, H, W)."""
    return torch.from_numpy(np.array(case.channels(modalities), dtype=np.float32))  # copy: the cache is read-only


def case_logits(model: nn.Module, case: CachedCase, settings: InferenceSettings) -> torch.Tensor:
    """Logits (K, D, H, W) of one cached case, with flip TTA when ``settings.tta``."""
    image = case_tensor(case, settings.modalities)
    if settings.tta:
        return flip_tta_logits(model, image, **settings.predict_kwargs())
    return predict_logits(model, image, **settings.predict_kwargs())


def evaluate_cases(model: nn.Module, cases: list[CachedCase], settings: InferenceSettings, *,
                   spec: MetricSpec = BRATS_SPEC, include_hd95: bool = True,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                   record_attention: bool = False, desc: str = "eval",
                   on_logits: Callable[[CachedCase, torch.Tensor], None] | None = None) -> EvaluationResult:
    """Predict every case, compute per-case metrics (``metrics.segmentation.case_metrics`` rules).

    ``loss_fn`` (optional) is applied to the whole-volume logits and labels; its mean is reported.
    With ``record_attention`` the model is called with ``return_attention=True`` and the mean
    weight per stage and modality is returned for every case. ``on_logits(case, logits)`` sees every
    case's logits (K, D, H, W), labelled or not (e.g. to write predictions).
    """
    accumulator = SegmentationMetricAccumulator(spec=spec, include_hd95=include_hd95)
    predictor: nn.Module = AttentionRecorder(model) if record_attention else model
    losses: list[float] = []
    attention_rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc=desc, leave=False, unit="case"):
        logits = case_logits(predictor, case, settings)
        if on_logits is not None:
            on_logits(case, logits)
        if case.label is None:
            continue
        label = torch.from_numpy(np.asarray(case.label, dtype=np.int64))
        if loss_fn is not None:
            with torch.no_grad():
                losses.append(float(loss_fn(logits[None], label[None])))
        accumulator.update(logits.argmax(0).numpy(), label.numpy(), case.spacing, case.case_id,
                           image_shape=case.original_shape)
        if record_attention:
            for stage, weights in predictor.mean_weights().items():  # type: ignore[union-attr]
                for modality, weight in zip(settings.modalities, weights):
                    attention_rows.append(dict(case_id=case.case_id, stage=stage, modality=modality, weight=weight))
    return EvaluationResult(per_case=accumulator.per_case(), aggregate=accumulator.aggregate(),
                            mean_loss=float(np.mean(losses)) if losses else None, attention=attention_rows,
                            confusion=accumulator.confusion_matrix)
