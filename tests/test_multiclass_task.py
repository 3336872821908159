"""The multi-class segmentation task: per-label and per-region metrics, columns, checkpoint meta, dispatch; label,
region and channel names read from dataset descriptions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from dataio.label_names import channel_names, parse_labels
from dataio.types import DatasetInfo
from engine.tasks import task_for, task_from_meta
from engine.tasks.multiclass import MulticlassSegmentationTask
from metrics.regions import multiclass_spec
from metrics.segmentation import case_metrics
from models import model_info


def _maps() -> tuple[np.ndarray, np.ndarray]:
    """Reference: 4 voxels of label 1, 2 of label 2; prediction: label 1 right on 2 of them, label 2 on all 4."""
    ref = np.zeros((4, 4, 4), dtype=np.uint8)
    ref[0, 0, :4] = 1
    ref[1, 0, :2] = 2
    pred = np.zeros_like(ref)
    pred[0, 0, :2] = 1
    pred[0, 0, 2:4] = 2
    pred[1, 0, :2] = 2
    return pred, ref


def test_per_label_and_per_region_metrics_and_the_mean_over_regions() -> None:
    pred, ref = _maps()
    spec = multiclass_spec(("a", "b"), [("ab", (1, 2))])
    out = case_metrics(pred, ref, (1.0, 1.0, 1.0), spec, include_hd95=False)
    assert out["dice_a"] == pytest.approx(2 * 2 / (2 + 4))  # tp 2, pred 2, ref 4
    assert out["dice_b"] == pytest.approx(2 * 2 / (4 + 2))  # tp 2, pred 4, ref 2
    assert out["precision_b"] == pytest.approx(0.5) and out["recall_b"] == pytest.approx(1.0)
    assert out["dice_ab"] == pytest.approx(1.0)  # the union is exact
    assert out["dice_mean"] == pytest.approx(out["dice_ab"])  # named regions only
    plain = case_metrics(pred, ref, (1.0, 1.0, 1.0), multiclass_spec(("a", "b")), include_hd95=True)
    assert plain["dice_mean"] == pytest.approx((out["dice_a"] + out["dice_b"]) / 2)  # labels when no regions
    assert math.isfinite(plain["hd95_a"]) and math.isfinite(plain["hd95_b"])


def test_task_columns_outputs_and_checkpoint_round_trip() -> None:
    task = MulticlassSegmentationTask(("liver", "tumour"), (("wt", (1, 2)),))
    assert task.n_outputs == 3
    columns = task.result_columns()
    for name in ("liver", "tumour", "wt"):
        assert {f"dice_{name}", f"hd95_{name}", f"precision_{name}", f"recall_{name}"} <= set(columns)
    rebuilt = task_from_meta(task.checkpoint_meta())
    assert isinstance(rebuilt, MulticlassSegmentationTask) and rebuilt.result_columns() == columns


def test_dispatch_multiclass_data_and_brats_keeps_its_own_task() -> None:
    info = DatasetInfo(name="nnunet", channels=("ct",), label_kind="multiclass", labels=("kidney", "cyst"))
    task = task_for(model_info("unet3d_xs"), info)
    assert isinstance(task, MulticlassSegmentationTask) and task.n_outputs == 3
    brats = task_for(model_info("unet3d_xs"), DatasetInfo(name="brats2021"))
    assert brats.name == "brats_segmentation"
    assert [c for c in brats.result_columns() if c.startswith("dice_")] == [
        "dice_wt", "dice_tc", "dice_et", "dice_ncr", "dice_ed", "dice_mean"]


def test_parse_labels_names_regions_and_refuses_bad_declarations() -> None:
    scheme = parse_labels({"background": 0, "Left Kidney": 1, "mean": 2, "2tumour": 3}, "d.json")
    assert scheme.labels == ("left_kidney", "mean_label", "l2tumour") and scheme.values == (0, 1, 2, 3)
    brats = parse_labels({"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]},
                         "d.json", [1, 2, 3])
    assert brats.labels == ("label1", "label2", "label3")
    assert brats.regions == (("wt", (1, 2, 3)), ("tc", (2, 3)), ("et", (3,)))
    msd = parse_labels({"0": "background", "1": "edema", "2": "tumour"}, "d.json")
    assert msd.labels == ("edema", "tumour")
    with pytest.raises(ValueError, match="d.json: label values must be consecutive"):
        parse_labels({"background": 0, "a": 2}, "d.json")
    with pytest.raises(ValueError, match="d.json: 'labels' defines regions .* no 'regions_class_order'"):
        parse_labels({"background": 0, "wt": [1, 2]}, "d.json")


def test_channel_names_map_mri_modalities_and_keep_others_generic() -> None:
    assert channel_names(["T1w", "T1Gd", "T2w", "FLAIR"]) == ("t1", "t1ce", "t2", "flair")
    assert channel_names(["t1n", "t1c", "t2f", "CT"]) == ("t1", "t1ce", "flair", "ct")
    assert channel_names(["ADC map", "adc_map", "!!"]) == ("adc_map", "ch1", "ch2")


def _lesion_case() -> "CachedCase":
    """Label 2 ("b"): two lesions, label 1 ("a"): one, on a 16^3 grid."""
    from dataio.types import CachedCase, CropBox

    label = np.zeros((16, 16, 16), dtype=np.uint8)
    label[1:4, 1:4, 1:4] = 2
    label[10:13, 10:13, 10:13] = 2
    label[1:4, 10:13, 1:4] = 1
    return CachedCase("c0", "c0", np.zeros((1, 16, 16, 16), np.float32), label, (1.0, 1.0, 1.0), np.eye(4),
                      (16, 16, 16), CropBox((0, 0, 0), (16, 16, 16)), "identity", channel_names=("ct",))


def test_lesion_labels_score_each_chosen_label_as_the_binary_lesion_track_does() -> None:
    import torch

    from engine.tasks.lesion_metrics import LesionAccumulator, LesionSettings, prediction_from_probability

    case = _lesion_case()
    predicted = np.zeros_like(case.label)
    predicted[1:4, 1:4, 1:4] = 2  # the first label-2 lesion found, the second missed
    predicted[6:8, 1:3, 12:14] = 2  # a false positive of label 2
    predicted[1:4, 10:13, 1:4] = 1  # label 1 exact
    logits = torch.nn.functional.one_hot(torch.from_numpy(predicted.astype(np.int64)), 3).permute(3, 0, 1, 2).float()
    task = MulticlassSegmentationTask(("a", "b"), lesion_labels=("b",))
    accumulator = task.new_accumulator(stage="test")
    accumulator.update(case, logits)
    row, = accumulator.per_case()
    assert (row["lesions_b"], row["lesions_found_b"], row["lesions_missed_b"], row["fp_components_b"]) == (2, 1, 1, 1)
    assert "lesions_a" not in row and row["dice_a"] == pytest.approx(1.0)
    binary = LesionAccumulator(LesionSettings())  # the same case as the binary track sees label 2
    binary.update(dataclasses.replace(case, label=(case.label == 2).astype(np.uint8)),
                  prediction_from_probability(torch.softmax(logits, 0)[2].numpy(), predicted == 2, 1))
    want = {k: v for k, v in binary.aggregate().items() if k != "n_cases"}
    got = accumulator.aggregate()
    for key, value in want.items():
        assert got[f"{key}_b"] == pytest.approx(value, nan_ok=True), key
    assert set(f"{k}_b" for k in ("map", "froc_cpm", "lesions_found")) <= set(task.result_columns())
    assert task_from_meta(task.checkpoint_meta()).result_columns() == task.result_columns()
    assert task.new_accumulator(stage="val").per_case() == []  # validation: no lesion metrics, no cost


def test_lesion_labels_must_name_foreground_labels() -> None:
    with pytest.raises(ValueError, match="--lesion_labels"):
        MulticlassSegmentationTask(("a", "b"), lesion_labels=("c",))
