"""A new kind of work added by this test module alone: a model of kind ``toy`` and a task serving it, both
registered here (in copies of the registries, restored afterwards), run through a sweep, re-evaluated from
their checkpoints with ``evaluate_experiment.py checkpoints`` and scored on a prediction folder with
``evaluate_experiment.py folders --task toy``, with no edit anywhere else in the project."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
import torch.nn as nn

import evaluate_experiment
import integrated_experiment
import models._registry as model_registry
from engine.tasks import SegmentationTask, registry
from engine.tasks.registry import TaskEntry, folder_evaluation, register_task
from metrics.regions import BRATS_SPEC
from models import register_model
from data_fixtures import write_nifti
from sweep_helpers import tiny_flags
from utils.schema import PER_CASE_CSV, RUNS_CSV

TOY_COLUMN = "toy_voxels"  # a result column that no metric prefix of the reducer names


def toy_unet(*, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """A test-only network of the kind ``toy``: two 3x3x3 convolutions."""
    return nn.Sequential(nn.Conv3d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, out_channels, 3, padding=1))


class ToyTask(SegmentationTask):
    """BraTS segmentation under another name, adding the predicted tumour volume (voxels) as a result column."""

    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> Any:
        return _VoxelCount(super().new_accumulator(stage=stage, with_loss=with_loss))

    def result_columns(self) -> tuple[str, ...]:
        return (*super().result_columns(), TOY_COLUMN)


class _VoxelCount:
    """The segmentation accumulator plus the mean predicted foreground volume over the cases."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.volumes = inner, []

    def update(self, case: Any, prediction: Any) -> None:
        self.inner.update(case, prediction)
        self.volumes.append(float((prediction.argmax(0) > 0).sum()))

    def aggregate(self) -> dict[str, float]:
        return dict(self.inner.aggregate(), **{TOY_COLUMN: float(np.mean(self.volumes)) if self.volumes else np.nan})

    def share(self) -> Any:
        return self.inner.share(), self.volumes

    def merge(self, shares: list[Any], order: list[str]) -> None:
        self.inner.merge([s for s, _ in shares], order)
        self.volumes += [v for _, volumes in shares for v in volumes]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def toy_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[TaskEntry]:
    """Model ``toy_unet`` of kind ``toy`` and task ``toy_segmentation`` (BraTS labels; folder task ``toy``)."""
    for module, name in ((model_registry, "_BUILDERS"), (model_registry, "_INFO"),
                         (model_registry, "_DEFAULT_OUTPUTS"), (registry, "TASK_ENTRIES")):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    register_model(family="toy", task="toy", divisibility=8, default_patch_size=(32, 32, 32))(toy_unet)
    yield register_task(TaskEntry(
        name="toy_segmentation", model_kinds=("toy",), label_kinds=("brats",), default_outputs=4,
        build=lambda dataset, loss, lesions: ToyTask(BRATS_SPEC, loss=loss, name="toy_segmentation"),
        rebuild=lambda meta, lesions: ToyTask(BRATS_SPEC, name="toy_segmentation"),
        folder=dataclasses.replace(folder_evaluation("brats"), name="toy")))


def test_a_toy_kind_runs_through_sweep_checkpoint_and_folder_evaluation(toy_kind: TaskEntry, tmp_path: Path) -> None:
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    assert integrated_experiment.main(tiny_flags(out, cache, "--models", "toy_unet", "--epochs", "1")) == 0
    runs = pd.read_csv(out / RUNS_CSV)
    assert runs["status"].tolist() == ["ok"], runs.get("error")
    assert runs[TOY_COLUMN].iloc[0] >= 0
    job = json.loads(next((out / "jobs").glob("toy_unet_*/job.json")).read_text())
    assert TOY_COLUMN in job["result_columns"]
    assert f"{TOY_COLUMN}_mean" in pd.read_csv(out / "model_comparison.csv").columns  # from job.json, not a prefix

    again = tmp_path / "again"
    assert evaluate_experiment.main(["checkpoints", "--results_dir", str(out), "--output_dir", str(again)]) == 0
    evaluated = pd.read_csv(again / RUNS_CSV)
    assert evaluated["dice_mean"].iloc[0] == pytest.approx(runs["dice_mean"].iloc[0], nan_ok=True)
    assert evaluated[TOY_COLUMN].iloc[0] == pytest.approx(runs[TOY_COLUMN].iloc[0])
    assert len(pd.read_csv(again / PER_CASE_CSV)) == len(pd.read_csv(out / PER_CASE_CSV))
    assert f"{TOY_COLUMN}_mean" in pd.read_csv(again / "model_comparison.csv").columns  # the task's columns again

    label = np.zeros((8, 8, 4), dtype=np.uint8)
    label[2:6, 2:6, 1:3] = 2
    label[3:5, 3:5, 1:3] = 4
    pred = label.copy()
    pred[3:5, 3:5, 1:3] = 2  # the enhancing core predicted as oedema: WT perfect, ET missed
    write_nifti(tmp_path / "labels" / "c1.nii.gz", label)
    write_nifti(tmp_path / "preds" / "c1.nii.gz", pred)
    csv = tmp_path / "toy.csv"
    assert evaluate_experiment.main(["folders", "--task", "toy", "--pred_dir", str(tmp_path / "preds"), "--label_dir",
                                     str(tmp_path / "labels"), "--output_csv", str(csv)]) == 0
    row = pd.read_csv(csv).iloc[0]
    assert row["dice_wt"] == 1.0 and row["dice_et"] == 0.0
