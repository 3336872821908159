"""Engine pieces of the lesion track: model recipes, lesion flags, the lesion accumulator (also across ranks),
box export, folder and box-file evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import evaluate_experiment
from dataio.types import CachedCase, CropBox
from engine.evaluate.boxes import evaluate_boxes_json
from engine.options.config import ExperimentConfig, parse_config
from engine.options.lesion_options import LesionOptions
from engine.tasks.lesion_outputs import box_records, save_lesion_prediction
from engine.tasks import binary_segmentation
from engine.tasks.detect_segment import DetectSegmentTask
from engine.tasks.detection import DetectionTask
from engine.tasks.lesion_metrics import LesionAccumulator, LesionPrediction, LesionSettings
from engine.trainer_settings import TrainerSettings
from metrics.detection import LESION_COLUMNS
from models import model_info

RECIPE = dict(optimizer="sgd", momentum=0.9, lr=1e-2, weight_decay=3e-5, scheduler="step", lr_step_size=50)


def _case(label: np.ndarray, case_id: str = "c0", crop_start: tuple[int, int, int] = (0, 0, 0),
          affine: np.ndarray | None = None) -> CachedCase:
    stop = tuple(a + s for a, s in zip(crop_start, label.shape))
    return CachedCase(case_id=case_id, patient_id=case_id, image=np.zeros((1, *label.shape), np.float32),
                      label=label.astype(np.uint8), spacing=(1.0, 1.0, 1.0),
                      affine=np.eye(4) if affine is None else affine, original_shape=tuple(s + 4 for s in stop),
                      crop=CropBox(start=crop_start, stop=stop), convention="internal", channel_names=("ct",))


def test_a_models_recipe_fills_only_the_training_flags_left_unset() -> None:
    config = parse_config(["--models", "unet3d_xs"])
    resolved = TrainerSettings.for_model(config, RECIPE, config.explicit_flags)
    assert (resolved.optimizer, resolved.momentum, resolved.lr, resolved.lr_step_size) == ("sgd", 0.9, 1e-2, 50)
    config = parse_config(["--models", "unet3d_xs", "--lr", "0.001", "--optim", "adamw"])  # abbreviated flag too
    assert set(config.explicit_flags) >= {"lr", "optimizer"}
    resolved = TrainerSettings.for_model(config, RECIPE, config.explicit_flags)
    assert (resolved.lr, resolved.optimizer, resolved.weight_decay) == (1e-3, "adamw", 3e-5)
    # programmatic configs: a value other than volbench's default counts as set by the user
    resolved = TrainerSettings.for_model(ExperimentConfig(lr=5e-4), RECIPE)
    assert resolved.lr == 5e-4 and resolved.optimizer == "sgd"
    with pytest.raises(ValueError, match="unknown trainer settings"):
        TrainerSettings.for_model(ExperimentConfig(), dict(learning_rate=1.0))


def test_lesion_flags_are_validated_and_reach_their_model_family() -> None:
    config = parse_config(["--max_rois", "12", "--roi_size", "16", "16", "16", "--anchor_shapes", "4", "4", "2",
                           "--min_lesion_size", "3"])
    flags = {name: model_info(name).flag_kwargs for name in ("detseg3d", "retinanet", "unet3d_xs")}
    assert config.model_flag_kwargs(flags["detseg3d"]) == dict(max_rois=12, roi_size=(16, 16, 16), min_lesion_size=3)
    assert config.model_flag_kwargs(flags["retinanet"]) == dict(anchor_shapes=[[4, 4, 2]])
    assert config.model_flag_kwargs(flags["unet3d_xs"]) == {}
    for bad, message in ((["--lesion_score_threshold", "2"], "lesion_score_threshold"),
                         (["--min_lesion_size", "0"], "min_lesion_size"), (["--roi_size", "4", "4", "4"], "roi_size")):
        with pytest.raises(SystemExit):
            parse_config(bad)
        assert any(message in m for m in LesionOptions(**_options(bad)).lesion_errors())


def _options(argv: list[str]) -> dict:
    name, values = argv[0].lstrip("-"), argv[1:]
    value = [int(v) for v in values] if len(values) > 1 else float(values[0])
    return {name: int(value) if name == "min_lesion_size" else value}


def _lesion_label() -> np.ndarray:
    label = np.zeros((16, 16, 8), np.uint8)
    label[2:5, 2:5, 2:4] = 1
    label[10:13, 10:14, 4:6] = 1
    return label


def test_lesion_accumulator_counts_lesions_and_sums_them_per_run() -> None:
    acc = LesionAccumulator(LesionSettings())
    hit = np.array([[2, 2, 2, 5, 5, 4]], np.float32)
    false = np.array([[7, 0, 0, 9, 2, 2]], np.float32)
    acc.update(_case(_lesion_label(), "a"), LesionPrediction(np.concatenate([hit, false]), np.array([0.9, 0.8])))
    acc.update(_case(np.zeros((16, 16, 8)), "b"), LesionPrediction(false, np.array([0.4])))  # below the count threshold
    rows = {r["case_id"]: r for r in acc.per_case()}
    assert (rows["a"]["lesions"], rows["a"]["lesions_found"], rows["a"]["lesions_missed"],
            rows["a"]["fp_components"]) == (2, 1, 1, 1)
    assert (rows["b"]["lesions"], rows["b"]["fp_components"], rows["b"]["n_pred_boxes"]) == (0, 0, 1)
    aggregate = acc.aggregate()
    assert aggregate["lesions"] == 2 and aggregate["fp_components"] == 1 and aggregate["n_cases"] == 2
    assert set(LESION_COLUMNS) <= set(aggregate)
    assert 0 < aggregate["ap_10"] <= 1 and 0 <= aggregate["froc_cpm"] <= 1
    assert aggregate["proposals_mean"] == 1.5 and aggregate["max_score"] == pytest.approx(0.9)


def test_detector_validation_rows_show_the_proposals_per_scan_and_the_highest_score() -> None:
    """A detector that proposes nothing still shows how far its best score is from its threshold."""
    acc = LesionAccumulator(LesionSettings())
    acc.update(_case(_lesion_label(), "a"), LesionPrediction(np.zeros((0, 6), np.float32), np.zeros(0, np.float32),
                                                             peak_score=0.07))
    acc.update(_case(np.zeros((16, 16, 8)), "b"), LesionPrediction(np.array([[7, 0, 0, 9, 2, 2]], np.float32),
                                                                   np.array([0.04], np.float32)))
    aggregate = acc.aggregate()
    assert aggregate["proposals_mean"] == 0.5 and aggregate["max_score"] == pytest.approx(0.07)
    for task in (DetectionTask("ich"), DetectSegmentTask("ich")):
        row = task.validation_row(aggregate, None)
        assert row["val_proposals_mean"] == 0.5 and row["val_max_score"] == pytest.approx(0.07)
        assert "val_map" in row and "val_n_pred_boxes" not in row
    assert math.isnan(LesionAccumulator(LesionSettings()).aggregate()["proposals_mean"])


def test_lesion_accumulator_shares_equal_one_process() -> None:
    cases = [(_case(_lesion_label(), f"c{i}"), LesionPrediction(np.array([[2, 2, 2, 5, 5, 4]], np.float32),
                                                                 np.array([0.3 + 0.1 * i]))) for i in range(4)]
    whole = LesionAccumulator(LesionSettings())
    for case, pred in cases:
        whole.update(case, pred)
    ranks = [LesionAccumulator(LesionSettings()) for _ in range(2)]
    for i, (case, pred) in enumerate(cases):
        ranks[i % 2].update(case, pred)
    ranks[0].merge([ranks[1].share()], [c.case_id for c, _ in cases])
    assert ranks[0].per_case() == whole.per_case()
    assert ranks[0].aggregate() == pytest.approx(whole.aggregate(), nan_ok=True)


def test_a_set_without_lesions_gives_nan_not_minus_one() -> None:
    acc = LesionAccumulator(LesionSettings())
    acc.update(_case(np.zeros((8, 8, 8))), LesionPrediction(np.array([[0, 0, 0, 2, 2, 2]], np.float32), np.array([0.9])))
    aggregate = acc.aggregate()
    assert all(math.isnan(aggregate[k]) for k in LESION_COLUMNS)


def test_binary_segmentation_scores_components_by_their_highest_probability() -> None:
    task = binary_segmentation("ich")
    label = _lesion_label()
    logits = torch.zeros((2, *label.shape))
    logits[1][torch.from_numpy(label > 0)] = 3.0  # p = sigmoid(3) inside both lesions
    logits[1, 3, 3, 3] = 5.0
    acc = task.new_accumulator(stage="test")
    acc.update(_case(label), logits)
    row = acc.per_case()[0]
    assert row["dice_ich"] == pytest.approx(1.0) and row["lesions_found"] == 2 and row["fp_components"] == 0
    assert acc.aggregate()["ap_50"] == pytest.approx(1.0)
    assert "map" in task.result_columns() and "dice_ich" in task.result_columns()


def test_boxes_are_written_in_original_voxels_and_world_mm(tmp_path: Path) -> None:
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, -30.0)
    case = _case(_lesion_label(), "scan", crop_start=(4, 6, 1), affine=affine)
    probability = np.zeros(case.label.shape, np.float32)
    probability[2:5, 2:5, 2:4] = 0.8
    pred = LesionPrediction(np.array([[2, 2, 2, 5, 5, 4]], np.float32), np.array([0.8], np.float32), probability)
    record = box_records(pred, case)[0]
    assert record["voxel"] == [6, 8, 3, 9, 11, 5]
    assert record["world_mm"] == pytest.approx([10 + 0.5 * 5.5, 20 + 0.5 * 7.5, -30 + 5 * 2.5,
                                                10 + 0.5 * 8.5, 20 + 0.5 * 10.5, -30 + 5 * 4.5])
    written = save_lesion_prediction(case, pred, tmp_path)
    assert {p.name for p in written} == {"scan.nii.gz", "scan_boxes.json", "scan_boxes.csv"}
    mask = np.asarray(nib.load(str(tmp_path / "scan.nii.gz")).dataobj)
    assert mask.shape == case.original_shape and mask[6:9, 8:11, 3:5].all() and mask.sum() == 18
    table = pd.read_csv(tmp_path / "scan_boxes.csv")
    assert table.loc[0, "voxel_x1"] == 6 and table.loc[0, "world_z2_mm"] == pytest.approx(-30 + 5 * 4.5)
    assert json.loads((tmp_path / "scan_boxes.json").read_text())["boxes"][0]["score"] == pytest.approx(0.8)


def _boxes_file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(data))
    return path


def test_boxes_json_is_scored_with_the_table_names(tmp_path: Path) -> None:
    data = {"a": {"pred_boxes": [[10, 20, 30, 11, 21, 31], [0, 0, 0, 2, 2, 2]], "pred_scores": [0.9, 0.5],
                  "gt_boxes": [[10, 20, 30, 11, 21, 31]]},
            "b": {"pred_boxes": [], "pred_scores": [], "gt_boxes": []}}
    out = evaluate_boxes_json(_boxes_file(tmp_path, data), LesionSettings())
    assert out["ap_10"] == pytest.approx(1.0) and out["map"] == pytest.approx(1.0)
    assert out["froc_fp8"] == pytest.approx(1.0) and out["lesions_found"] == 1 and out["n_cases"] == 2
    assert set(LESION_COLUMNS) <= set(out)
    target = tmp_path / "out.json"
    assert evaluate_experiment.main(["--boxes_json", str(tmp_path / "boxes.json"), "--output_json", str(target)]) == 0
    assert json.loads(target.read_text())["ap_50"] == pytest.approx(1.0)


@pytest.mark.parametrize("entry, message", [
    ({"pred_boxes": [[1, 2, 3]], "pred_scores": [1.0], "gt_boxes": []}, "pred_boxes"),
    ({"pred_boxes": [[1, 1, 1, 2, 2, 2]], "pred_scores": [], "gt_boxes": []}, "pred_scores"),
    ({"pred_boxes": [], "pred_scores": [], "gt_boxes": [[5, 5, 5, 4, 6, 6]]}, "max is not above its min"),
    ({"pred_boxes": []}, "gt_boxes"),
])
def test_bad_boxes_json_names_the_case_and_key(tmp_path: Path, entry: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        evaluate_boxes_json(_boxes_file(tmp_path, {"case7": entry}), LesionSettings())
    assert "case7" in str(info.value)


def test_box_mode_refuses_flags_of_other_modes(tmp_path: Path) -> None:
    path = _boxes_file(tmp_path, {"a": {"pred_boxes": [], "pred_scores": [], "gt_boxes": []}})
    assert evaluate_experiment.main(["--boxes_json", str(path)]) == 2
    assert evaluate_experiment.main(["--boxes_json", str(path), "--output_json", str(tmp_path / "o.json"),
                                     "--tta"]) == 2


def test_folder_evaluation_adds_lesion_metrics_scored_by_probability_maps(tmp_path: Path) -> None:
    pred_dir, label_dir, prob_dir = (tmp_path / n for n in ("pred", "label", "prob"))
    for folder in (pred_dir, label_dir, prob_dir):
        folder.mkdir()
    label = _lesion_label()
    pred = np.zeros_like(label)
    pred[2:5, 2:5, 2:4] = 1  # the first lesion found
    pred[12:14, 0:2, 0:2] = 1  # a false positive, after the hit in scan order
    probability = np.where(pred > 0, 0.6, 0.0).astype(np.float32)
    probability[12:14, 0:2, 0:2] = 0.9  # scored: the false positive ranks first
    for folder, array in ((pred_dir, pred), (label_dir, label), (prob_dir, probability)):
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(folder / "c1.nii.gz"))
    out = tmp_path / "eval.csv"
    argv = ["--pred_dir", str(pred_dir), "--label_dir", str(label_dir), "--task", "binary",
            "--label_convention", "internal", "--output_csv", str(out)]
    assert evaluate_experiment.main([*argv, "--prob_dir", str(prob_dir)]) == 0
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    row = pd.read_csv(out).iloc[0]
    assert (row["lesions"], row["lesions_found"], row["fp_components"]) == (2, 1, 1)
    ranked = summary["lesion_metrics"]["ap_10"]
    assert evaluate_experiment.main(argv) == 0  # unscored: every component 1.0, kept in scan order
    tied = json.loads((tmp_path / "eval_summary.json").read_text())["lesion_metrics"]["ap_10"]
    assert ranked < tied  # the false positive ranked above the hit costs precision
    assert evaluate_experiment.main([*argv[:4], "--prob_dir", str(prob_dir), *argv[6:]]) == 2  # --task brats


def test_brats_test_rows_carry_the_lesion_wise_scores_of_each_region() -> None:
    from engine.tasks import brats_segmentation
    from metrics.lesionwise import lesionwise_scores
    from metrics.regions import BRATS_SPEC, region_mask

    reference = np.zeros((24, 24, 24), np.uint8)
    reference[2:8, 2:8, 2:8] = 2  # oedema
    reference[3:6, 3:6, 3:6] = 3  # enhancing core inside it
    reference[15:20, 15:20, 15:20] = 1  # a second tumour, necrotic only
    prediction = np.zeros_like(reference)
    prediction[2:8, 2:8, 2:8] = 3
    prediction[20:23, 0:3, 0:3] = 2  # a false positive far away
    logits = torch.nn.functional.one_hot(torch.from_numpy(prediction).long(), 4).permute(3, 0, 1, 2).float() * 9
    case = CachedCase("b", "b", np.zeros((4, 24, 24, 24), np.float32), reference, (1.0, 1.0, 2.0), np.eye(4),
                      (24, 24, 24), CropBox((0, 0, 0), (24, 24, 24)), "internal")
    acc = brats_segmentation().new_accumulator(stage="test")
    acc.update(case, logits)
    row = acc.per_case()[0]
    for region, members in BRATS_SPEC.regions.items():
        want = lesionwise_scores(region_mask(prediction, members), region_mask(reference, members), (1.0, 1.0, 2.0),
                                 dilation_iterations=3, min_lesion_size=50)
        assert row[f"lesion_dice_{region}"] == pytest.approx(want["lesion_dice"]), region
        assert row[f"lesion_hd95_{region}"] == pytest.approx(want["lesion_hd95"]), region
    assert row["lesions_wt"] == 2 and row["lesion_fp_wt"] == 1 and row["lesion_dice_wt"] < row["dice_wt"]
    assert acc.aggregate()["lesion_dice_tc"] == pytest.approx(row["lesion_dice_tc"])
    assert brats_segmentation().new_accumulator(stage="val").lesionwise is None  # test time only


def test_lesion_training_patches_zoom_image_and_label_together() -> None:
    from monai.transforms import RandZoomd

    from engine.tasks.detection import lesion_patches

    label = _lesion_label()
    image = (label[None] * 1.0).astype(np.float32)
    case = CachedCase("z", "z", image, label, (1.0, 1.0, 1.0), np.eye(4), label.shape, CropBox((0, 0, 0), label.shape),
                      "internal", channel_names=("ct",))
    dataset = lesion_patches([case], ("ct",), (16, 16, 8), samples_per_volume=4, seed=3)
    zoom = dataset.augment.transforms[0]
    assert isinstance(zoom, RandZoomd) and zoom.prob == 0.2
    assert (zoom.rand_zoom.min_zoom, zoom.rand_zoom.max_zoom) == ((0.8,), (1.2,))
    for index in range(40):  # every sample: label values stay 0/1 and follow the image (same spatial transform)
        sample = dataset[(index % 5, index % 4)]
        values = set(np.unique(sample["label"].numpy()).tolist())
        assert values <= {0, 1}
        if 1 in values:
            assert sample["image"][0][sample["label"] > 0].mean() > sample["image"][0][sample["label"] == 0].mean()
