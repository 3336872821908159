"""The task registry (``engine.tasks.registry``): registration, dispatch by model kind and label kind, checkpoints,
folder and box evaluation, create_model's default outputs, model flags, and a brand-new kind of work added by a
test alone (a toy model of kind ``toy`` and a toy task serving it, removed again after the test)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import engine.tasks.registry as registry
import models._registry as model_registry
from dataio.types import CachedCase, CropBox, DatasetInfo
from engine.options.config import parse_config
from engine.options.lesion_options import LesionOptions
from engine.results.job_results import JobFolder
from engine.results.reducer import metric_columns, reduce_results
from engine.sweep_plan import SweepData, plan_models
from engine.tasks import (TASK_ENTRIES, DetectionTask, SegmentationTask, TaskEntry, box_file_task, folder_evaluation,
                          folder_task_names, register_task, served_model_kinds, task_flags, task_for, task_from_meta)
from engine.tasks.lesion_metrics import LesionPrediction, LesionSettings
from metrics.regions import BRATS_SPEC, binary_spec
from models import ModelInfo, create_model, default_out_channels, model_info, register_model
from utils.schema import COMPARISON_CSV, JOBS_DIR

# what the registry serves today: (model kind, label kind) -> task
SERVED = {("segmentation", "brats"): "brats_segmentation", ("segmentation", "binary"): "binary_segmentation",
          ("detection", "binary"): "detection", ("detect_segment", "binary"): "detect_segment",
          ("promptable", "binary"): "promptable_segmentation", ("promptable", "brats"): "promptable_segmentation",
          ("segmentation", "multiclass"): "multiclass_segmentation"}
# create_model's default out_channels per kind (those before the registry owned them, models/_registry.py, and the
# promptable models' two-class prompt-free output)
TODAY_OUTPUTS = {"segmentation": 4, "detection": 1, "detect_segment": 1, "promptable": 2}


def _dataset(label_kind: str) -> DatasetInfo:
    return DatasetInfo(name="d", channels=("ct",), label_kind=label_kind, region="ich", labels=("ich",))


def _info(kind: str, name: str = "m") -> ModelInfo:
    return ModelInfo(name=name, family="f", task=kind)


def test_registration_refuses_every_kind_of_duplicate() -> None:
    before = dict(TASK_ENTRIES)
    brats, detection = TASK_ENTRIES["brats_segmentation"], TASK_ENTRIES["detection"]
    bare = dict(legacy_n_classes=(), default_outputs=None, flags=(), folder=None, box_files=False)
    clashes = [
        (brats, "a task named 'brats_segmentation' is already registered"),
        (dataclasses.replace(brats, name="other", **bare), "already registered for 'segmentation' models on 'brats'"),
        (dataclasses.replace(brats, name="other", label_kinds=("x",), **dict(bare, folder=brats.folder)),
         "already evaluates folders as --task brats"),
        (dataclasses.replace(detection, name="other", model_kinds=("x",), **dict(bare, box_files=True)),
         "already scores box files"),
        (dataclasses.replace(brats, name="other", model_kinds=("detection",), label_kinds=("x",),
                             **dict(bare, default_outputs=3)), "'detection' models already default to out_channels=1"),
        (dataclasses.replace(brats, name="other", label_kinds=("x",), **dict(bare, flags=(dataclasses.replace(
            task_flags()[0], default=7),))), "declares --min_lesion_size differently"),
    ]
    for entry, message in clashes:
        with pytest.raises(ValueError, match=message):
            register_task(entry)
    assert TASK_ENTRIES == before and default_out_channels("detection") == 1


@pytest.mark.parametrize("pair", sorted(SERVED), ids=lambda p: "-".join(p))
def test_task_for_each_registered_pair(pair: tuple[str, str]) -> None:
    assert {p: e.name for e in TASK_ENTRIES.values() for p in e.pairs()} == SERVED
    task = task_for(_info(pair[0]), _dataset(pair[1]), lesions=LesionOptions(min_lesion_size=3, lesionwise_min_size=9))
    assert task.name == SERVED[pair]
    if pair[1] == "brats":  # the lesion flags reach the task's settings
        assert task.lesionwise.min_lesion_size == 9
    elif pair[1] == "multiclass":  # no lesion metrics (yet) on multi-class data
        assert task.lesions is None
    else:
        assert task.lesions.min_size == 3


def test_registered_models_find_their_task() -> None:
    ct = _dataset("binary")
    assert [task_for(model_info(m), ct).name for m in ("unet3d_xs", "retinanet", "detseg3d")] == [
        "binary_segmentation", "detection", "detect_segment"]
    assert task_for(model_info("unet3d_xs"), DatasetInfo(name="brats")).name == "brats_segmentation"


def test_an_unserved_kind_is_a_clear_error_naming_model_kind_and_served_kinds() -> None:
    assert served_model_kinds() == ("detect_segment", "detection", "promptable", "segmentation")
    with pytest.raises(ValueError, match=r"model 'reg' is of kind 'registration', which no registered task serves "
                                         r"\(served kinds: detect_segment, detection, promptable, segmentation\)"):
        task_for(_info("registration", "reg"), _dataset("binary"))
    with pytest.raises(ValueError, match="no task for that pair"):
        task_for(_info("detection"), _dataset("brats"))


@pytest.mark.parametrize("pair", sorted(SERVED), ids=lambda p: "-".join(p))
def test_task_from_meta_rebuilds_every_task_from_its_checkpoint_meta(pair: tuple[str, str]) -> None:
    task = task_for(_info(pair[0]), _dataset(pair[1]))
    again = task_from_meta(task.checkpoint_meta(), LesionOptions(min_lesion_size=4))
    assert type(again) is type(task) and again.name == task.name
    assert again.result_columns() == task.result_columns()  # the region (ich) comes back too
    if pair[1] == "binary":
        assert again.lesions.min_size == 4


def test_task_from_meta_of_checkpoints_that_record_no_task() -> None:
    assert task_from_meta({}).name == task_from_meta({"n_classes": 4}).name == "brats_segmentation"
    binary = task_from_meta({"n_classes": 2})
    assert binary.name == "binary_segmentation" and binary.spec == binary_spec("lesion")
    assert task_from_meta({"n_classes": 2, "regions": {"ich": [1]}}).spec == binary_spec("ich")
    for meta, message in (({"n_classes": 3}, "no task for a checkpoint of task None with 3 classes"),
                          ({"task": "nope"}, "no task for a checkpoint of task 'nope'"),
                          ({"task": "brats_segmentation", "n_classes": 2}, "records 2 classes")):
        with pytest.raises(ValueError, match=message):
            task_from_meta(meta)


def test_folder_and_box_evaluations_come_from_the_registry() -> None:
    assert folder_task_names() == ("brats", "binary")
    assert folder_evaluation("brats").spec is BRATS_SPEC and not folder_evaluation("brats").lesions
    binary = folder_evaluation("binary")
    assert binary.spec == binary_spec("lesion") and binary.lesions
    assert binary.read_labels(np.array([[[0, 2, 255]]]), "brats2021", "f").tolist() == [[[0, 1, 1]]]
    assert folder_evaluation("brats").read_labels(np.array([[[0, 4]]]), "brats2021", "f").tolist() == [[[0, 3]]]
    with pytest.raises(ValueError, match=r"--task 'toy' is not one of \('brats', 'binary'\)"):
        folder_evaluation("toy")
    boxes = box_file_task(LesionSettings(min_size=2))
    assert isinstance(boxes, DetectionTask) and boxes.lesions.min_size == 2


def test_task_flags_are_the_sweep_options_with_their_defaults() -> None:
    flags = task_flags()
    assert [f.name for f in flags] == ["min_lesion_size", "lesion_hit", "lesion_score_threshold",
                                       "lesionwise_dilation", "lesionwise_min_size", "lesion_labels", "clicks", "click_mode"]
    assert all(getattr(LesionOptions(), f.name) == f.default for f in flags)


@pytest.mark.parametrize("kind", sorted(TODAY_OUTPUTS))
def test_create_model_defaults_out_channels_per_kind_as_before(kind: str) -> None:
    assert default_out_channels(kind) == TODAY_OUTPUTS[kind]
    name = next(n for n in ("unet3d_xs", "retinanet", "detseg3d", "vista3d") if model_info(n).task == kind)
    tiny = model_info(name).tiny_kwargs
    default, explicit = create_model(name, **tiny), create_model(name, out_channels=TODAY_OUTPUTS[kind], **tiny)
    assert sum(p.numel() for p in default.parameters()) == sum(p.numel() for p in explicit.parameters())


def test_create_model_without_the_task_registry_names_the_remedy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_registry, "_DEFAULT_OUTPUTS", {})  # as in a process that imported models alone
    with pytest.raises(ValueError, match=r"no default out_channels for 'segmentation' models; pass out_channels, "
                                         r"or import engine.tasks"):
        create_model("unet3d_xs")
    assert create_model("unet3d_xs", out_channels=2, base=2) is not None


def test_model_flags_reach_the_builder_through_model_info() -> None:
    config = parse_config(["--tiny", "--max_rois", "5", "--roi_batch_size", "3", "--anchor_shapes", "4", "4", "2"])
    data = SweepData(cases={}, splits={}, extent=(32, 32, 32), info=_dataset("binary"))
    plans = plan_models(["detseg3d", "retinanet", "unet3d_xs"], config, data)
    assert plans["detseg3d"].setup.model_kwargs["max_rois"] == 5
    assert plans["detseg3d"].setup.model_kwargs["min_lesion_size"] == 1  # passed through whatever its value
    detseg = plans["detseg3d"].setup.build()
    assert (detseg.max_rois, detseg.roi_batch_size) == (5, 3)
    assert plans["retinanet"].setup.model_kwargs["anchor_shapes"] == [[4, 4, 2]]
    assert not {"max_rois", "anchor_shapes", "min_lesion_size"} & set(plans["unet3d_xs"].setup.model_kwargs)
    with pytest.raises(ValueError, match="a model takes flag --no_such_flag"):
        config.model_flag_kwargs({"no_such_flag": "x"})


def _case(label: np.ndarray, channels: int) -> CachedCase:
    return CachedCase(case_id="c0", patient_id="c0", image=np.zeros((channels, *label.shape), np.float32),
                      label=label.astype(np.uint8), spacing=(1.0, 1.0, 1.0), affine=np.eye(4),
                      original_shape=label.shape, crop=CropBox(start=(0, 0, 0), stop=label.shape),
                      convention="internal", channel_names=("ct",) * channels)


def _prediction(task: Any, label: np.ndarray) -> Any:
    if isinstance(task, SegmentationTask):
        return torch.nn.functional.one_hot(torch.from_numpy(label.astype(np.int64)), task.n_outputs).permute(
            3, 0, 1, 2).float()
    probability = (label > 0).astype(np.float32) if task.name == "detect_segment" else None
    return LesionPrediction(boxes=np.array([[2, 2, 2, 5, 5, 4]], np.float32), scores=np.array([0.9], np.float32),
                            probability=probability)


@pytest.mark.parametrize("pair", sorted(SERVED), ids=lambda p: "-".join(p))
def test_recorded_result_columns_pick_the_metric_columns_the_prefixes_did(pair: tuple[str, str]) -> None:
    task = task_for(_info(pair[0]), _dataset(pair[1]))
    label = np.zeros((8, 8, 6), np.uint8)
    label[2:5, 2:5, 2:4] = 3 if pair[1] == "brats" else 1
    accumulator = task.new_accumulator(stage="test")
    accumulator.update(_case(label, 4 if pair[1] == "brats" else 1), _prediction(task, label))
    # the run row as experiment_runner.run_job writes it (aggregate values other than the n_ counts)
    row = dict(model="m", seed=1, status="ok", **{task.selection.column: 0.5}, n_test_cases=1,
               **{k: v for k, v in accumulator.aggregate().items() if not k.startswith("n_")}, params=1)
    runs = pd.DataFrame([row])
    assert metric_columns(runs, task.result_columns()) == metric_columns(runs)
    assert len(metric_columns(runs)) >= 5


def toy_net(*, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """A test-only network of the brand-new kind ``toy``."""
    return nn.Conv3d(in_channels, out_channels, 1)


class ToyTask(SegmentationTask):
    """A test-only task serving ``toy`` models on binary data, with a result column no prefix names."""

    def result_columns(self) -> tuple[str, ...]:
        return (*super().result_columns(), "toy_score")


@pytest.fixture
def toy_kind(monkeypatch: pytest.MonkeyPatch) -> TaskEntry:
    """A model ``toy_net`` of kind ``toy`` and a task ``toy`` serving it, in copies of both registries that the
    test's end puts back (so no other test sees them)."""
    for module, name in ((model_registry, "_BUILDERS"), (model_registry, "_INFO"),
                         (model_registry, "_DEFAULT_OUTPUTS"), (registry, "TASK_ENTRIES")):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    register_model(family="toy", task="toy", modalities=("ct",), num_params=4)(toy_net)  # 1 -> 2 channels, 1x1x1
    return register_task(TaskEntry(
        name="toy", model_kinds=("toy",), label_kinds=("binary",), default_outputs=2,
        build=lambda dataset, loss, lesions: ToyTask(binary_spec(dataset.region), loss=loss, name="toy"),
        rebuild=lambda meta, lesions: ToyTask(binary_spec(registry.meta_region(meta)), name="toy")))


def test_a_new_kind_of_work_registered_by_a_test_alone(toy_kind: TaskEntry) -> None:
    info = model_info("toy_net")
    task = task_for(info, _dataset("binary"))
    assert isinstance(task, ToyTask) and "toy" in served_model_kinds()
    model = create_model("toy_net")
    assert sum(p.numel() for p in model.parameters()) == info.num_params  # out_channels 2, from the toy task
    assert isinstance(task_from_meta(task.checkpoint_meta()), ToyTask)
    with pytest.raises(ValueError, match="already registered"):
        register_task(toy_kind)


def test_the_toy_kind_is_gone_after_its_test() -> None:
    assert "toy" not in served_model_kinds() and default_out_channels("toy") is None
    with pytest.raises(ValueError, match="unknown model"):
        model_info("toy_net")


def test_the_reducer_takes_metric_columns_from_job_json(tmp_path: Path) -> None:
    """A job that records its result columns gets each of them averaged (even ``toy_score``, which no prefix
    names); a job folder written before jobs recorded them goes by the prefixes."""
    jobs = tmp_path / JOBS_DIR
    for index, (model, recorded) in enumerate((("toy_net", ["dice_ich", "toy_score"]), ("old_net", None))):
        folder = JobFolder.of(jobs, model, 1, None)
        folder.write_job(dict(model=model, seed=1, fold=None, index=index,
                              **({} if recorded is None else {"result_columns": recorded})))
        folder.write_table("runs", [dict(model=model, seed=1, fold=None, status="ok", error="", dice_ich=0.5,
                                         toy_score=0.25, best_val_dice=0.4)])
    reduce_results(tmp_path)
    comparison = pd.read_csv(tmp_path / COMPARISON_CSV).set_index("model")
    assert comparison.at["toy_net", "toy_score_mean"] == 0.25 and comparison.at["toy_net", "dice_ich_mean"] == 0.5
    assert "best_val_dice_mean" not in comparison.columns
