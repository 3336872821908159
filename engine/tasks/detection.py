"""Lesion detection (RetinaNet): patches with boxes in training, scored boxes of whole scans at inference.

Training samples are image + label patches (``dataio.sampling.PatchDataset``) augmented by flips,
90-degree rotations and a zoom applied to image and label together; the ground-truth boxes are taken from
the augmented label (26-connected components of at least ``min_lesion_size`` voxels) inside the train
step, so every box matches its lesion exactly after any spatial transform (no box-corner arithmetic).
Boxes are MONAI's ``[x1, y1, z1, x2, y2, z2]`` over array axes 0, 1, 2, max exclusive, in voxels.
Prediction: the model's ``detect`` over the whole scan (sliding windows of the training patch).
Metrics: ``engine.tasks.lesion_metrics`` (AP/mAP/mAR, FROC, per-case counts); no mask, so no Dice.
Selection: the highest validation ``map``. Validation reports no loss (``val_loss`` NaN): a detector's
loss over a whole scan depends on its anchor sampling, not on the prediction being scored; it reports the
boxes per scan (``proposals_mean``) and the highest box score (``max_score``) beside AP/mAR/FROC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.transforms import Compose, RandZoomd
from torch.utils.data import Dataset

from dataio.augment import KEYS, build_augmentation
from dataio.sampling import PatchDataset, SampleRules
from dataio.sampling import SampleRules
from dataio.types import CachedCase
from metrics.lesions import boxes_from_mask

from engine.inference import InferenceSettings, case_tensor
from engine.tasks.base import Selection, Task
from engine.tasks.lesion_metrics import (LESION_FLAGS, LESION_RUN_COLUMNS, LesionAccumulator, LesionPrediction,
                                         LesionSettings)
from engine.tasks.registry import TaskEntry, meta_region, register_task

ZOOM = dict(prob=0.2, min_zoom=0.8, max_zoom=1.2)  # the RetinaNet seed's zoom range


def lesion_patches(cases: list[CachedCase], modalities: tuple[str, ...], patch_size: tuple[int, ...],
                   samples_per_volume: int, seed: int) -> PatchDataset:
    """Training patches of the lesion track: the segmentation patches plus a random zoom (image trilinear,
    label nearest, size kept) before the flips, rotations and intensity changes."""
    dataset = PatchDataset(cases, modalities, patch_size, samples_per_volume=samples_per_volume,  # type: ignore[arg-type]
                           augment=True, seed=seed)
    zoom = RandZoomd(keys=KEYS, mode=("trilinear", "nearest"), keep_size=True, **ZOOM)
    dataset.augment = Compose([zoom, *build_augmentation(3, patch_size).transforms])
    return dataset


def label_boxes(labels: torch.Tensor, min_size: int, device: torch.device) -> list[torch.Tensor]:
    """Ground-truth boxes (float32 (N_i, 6), on ``device``) of each label patch of a batch (B, *patch)."""
    masks = labels.detach().cpu().numpy() > 0
    return [torch.as_tensor(boxes_from_mask(m, min_size=min_size), dtype=torch.float32, device=device)
            for m in masks]


class DetectionTask(Task):
    """Box detection of one lesion class (``region`` names the dataset's foreground, e.g. ``ich``)."""

    name = "detection"
    selection = Selection(metric="map", mode="max", column="best_val_map")
    validation_prefixes = ("map", "mar", "ap_", "froc_cpm", "proposals_mean", "max_score")
    supports_tta = False  # boxes of flipped scans would need merging (weighted box fusion): not offered

    def __init__(self, region: str, lesions: LesionSettings | None = None) -> None:
        self.region = region
        self.lesions = lesions or LesionSettings()

    @property
    def n_outputs(self) -> int:
        return 1  # foreground classes

    def train_dataset(self, cases: list[CachedCase], *, modalities: tuple[str, ...], spatial_dims: int,
                      patch_size: tuple[int, ...], rules: SampleRules, samples_per_volume: int,
                      seed: int) -> Dataset:
        if spatial_dims != 3:
            raise ValueError(f"the {self.name} task trains 3D models only, got spatial_dims {spatial_dims}")
        return lesion_patches(cases, modalities, patch_size, samples_per_volume, seed)

    def train_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        image = batch["image"].to(device, non_blocking=True)
        return model(image, label_boxes(batch["label"], self.lesions.min_size, device))

    def predict_case(self, model: nn.Module, case: CachedCase, settings: InferenceSettings) -> LesionPrediction:
        boxes, scores = model.detect(case_tensor(case, settings.modalities), roi_size=tuple(settings.roi_size),
                                     overlap=settings.overlap)
        return LesionPrediction(boxes=np.asarray(boxes, dtype=np.float32), scores=np.asarray(scores, dtype=np.float32))

    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> LesionAccumulator:
        return LesionAccumulator(self.lesions)

    def result_columns(self) -> tuple[str, ...]:
        return LESION_RUN_COLUMNS

    def write_prediction(self, case: CachedCase, prediction: LesionPrediction, out_dir: Path, *,
                         save_probabilities: bool = False, probability_format: str = "nifti") -> list[Path]:
        """Boxes as JSON and CSV (voxel and world mm), plus the mask NIfTI of models that output one
        (``engine.tasks.lesion_outputs``; probabilities are written as NIfTI whatever ``probability_format``)."""
        from engine.tasks.lesion_outputs import save_lesion_prediction

        return save_lesion_prediction(case, prediction, out_dir, save_probabilities=save_probabilities)

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), regions={self.region: [1]})


def region_task_entry(cls: type[DetectionTask], kind: str, **extra: Any) -> TaskEntry:
    """The registry entry of lesion task ``cls`` (one foreground region, one output) for ``kind`` models on
    binary data, owning the lesion flags; ``extra``: further :class:`TaskEntry` fields."""
    return TaskEntry(name=cls.name, model_kinds=(kind,), label_kinds=("binary",),
                     build=lambda dataset, loss, lesions: cls(dataset.region, LesionSettings.of(lesions)),
                     rebuild=lambda meta, lesions: cls(meta_region(meta), LesionSettings.of(lesions)),
                     default_outputs=1, flags=LESION_FLAGS, **extra)


register_task(region_task_entry(DetectionTask, "detection", box_files=True))
