"""Detect-then-segment (DetSeg3D): a detector proposes RoIs, a second network segments each RoI.

Training samples are the detection task's augmented patches (``engine.tasks.detection``); the model makes
its own targets from the label patch (heatmap, sizes, offsets, RoI masks) and returns its named losses
(``heatmap``, ``size``, ``offset``, ``seg`` already weighted by ``seg_lambda``); the trainer sums them.
Prediction: the model's ``predict`` over the whole scan gives the pasted foreground probability and
the RoIs with their confidences. Metrics: the mask's Dice, HD95 (mm), precision and recall of the binary
region (probability >= 0.5) plus the lesion metrics of the RoIs (``engine.tasks.lesion_metrics``).
Selection: the highest validation ``map_dice``, the mean of the validation mAP (IoU 0.10:0.50, what selects
a box detector's epoch, ``engine.tasks.detection``) and the region's Dice (``dice_mean``): a detector with masks
is chosen by its boxes and its masks, not by a Dice that stays flat while the detector has not yet found a
lesion (seen: an epoch-3 checkpoint picked by a Dice of 0.002). When one of the two is NaN (no lesion in the
validation scans: mAP NaN) the other is used; NaN when both are. Each validation also reports the RoIs per scan
(``proposals_mean``) and the highest heatmap probability (``max_score``, what a RoI must exceed the model's
``infer_threshold`` by).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dataio.types import CachedCase
from metrics.regions import binary_spec

from engine.inference import InferenceSettings, case_tensor
from engine.tasks.base import Selection
from engine.tasks.detection import DetectionTask, region_task_entry
from engine.tasks.registry import register_task
from engine.tasks.lesion_metrics import LESION_RUN_COLUMNS, LesionAccumulator, LesionPrediction, LesionSettings


SELECTION_METRIC = "map_dice"


def map_dice(aggregate: dict[str, float]) -> float:
    """Mean of ``map`` and ``dice_mean`` of a validation aggregate, ignoring a NaN one (NaN when both are)."""
    values = [float(aggregate.get(k, float("nan"))) for k in ("map", "dice_mean")]
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class DetectSegmentAccumulator(LesionAccumulator):
    """:class:`LesionAccumulator` with masks whose aggregate adds the selection metric ``map_dice``."""

    def aggregate(self) -> dict[str, float]:
        out = super().aggregate()
        out[SELECTION_METRIC] = map_dice(out)
        return out


class DetectSegmentTask(DetectionTask):
    """RoI detection plus RoI segmentation of one lesion class named ``region``."""

    name = "detect_segment"
    selection = Selection(metric=SELECTION_METRIC, mode="max", column=f"best_val_{SELECTION_METRIC}")
    validation_prefixes = ("dice_", *DetectionTask.validation_prefixes)
    may_skip_parameters = True  # a batch whose RoIs are all cut off can leave segmenter weights without gradient

    def __init__(self, region: str, lesions: LesionSettings | None = None) -> None:
        super().__init__(region, lesions)
        self.spec = binary_spec(region)

    def train_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        image = batch["image"].to(device, non_blocking=True)
        return model(image, batch["label"].to(device, non_blocking=True))

    def predict_case(self, model: nn.Module, case: CachedCase, settings: InferenceSettings) -> LesionPrediction:
        found = model.predict(case_tensor(case, settings.modalities))
        return LesionPrediction(boxes=np.asarray(found.boxes, dtype=np.float32),
                                scores=np.asarray(found.scores, dtype=np.float32),
                                probability=np.asarray(found.probability, dtype=np.float32), peak_score=found.peak)

    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> LesionAccumulator:
        if stage == "test":  # the selection metric is a validation column only: test rows keep their metrics
            return LesionAccumulator(self.lesions, mask_spec=self.spec, include_hd95=True)
        return DetectSegmentAccumulator(self.lesions, mask_spec=self.spec, include_hd95=False)

    def result_columns(self) -> tuple[str, ...]:
        r = self.region
        return (f"dice_{r}", "dice_mean", f"hd95_{r}", f"precision_{r}", f"recall_{r}", *LESION_RUN_COLUMNS)


register_task(region_task_entry(DetectSegmentTask, "detect_segment"))
