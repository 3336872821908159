"""COCO AP/AR and per-case lesion counts (metrics.detection): hand-computed cases, a brute-force COCO
re-implementation and independent MONAI COCOMetric runs on random case sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou as monai_box_iou

from lesion_helpers import random_cases
from metrics.detection import (LESION_CASE_COLUMNS, LESION_COLUMNS, MAP_IOU_THRESHOLDS, CaseBoxes,
                               coco_metrics, detection_metrics, lesion_counts)

CUBE = [0, 0, 0, 10, 10, 10]
FAR = [50, 50, 50, 60, 60, 60]
OTHER = [20, 20, 20, 30, 30, 30]


def case(preds, scores, gts, case_id="c"):
    return CaseBoxes(case_id, np.array(preds, dtype=np.float32), np.array(scores), np.array(gts, dtype=np.float32))


def test_column_names_are_fixed():
    assert LESION_COLUMNS == ("ap_10", "ap_30", "ap_50", "map", "mar", "froc_fp0.125", "froc_fp0.25",
                              "froc_fp0.5", "froc_fp1", "froc_fp2", "froc_fp4", "froc_fp8", "froc_cpm")
    assert LESION_CASE_COLUMNS == ("lesions", "lesions_found", "lesions_missed", "fp_components")
    assert MAP_IOU_THRESHOLDS == (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    out = detection_metrics([case([CUBE], [0.9], [CUBE])])
    assert tuple(out) == LESION_COLUMNS


def test_case_boxes_validation_names_the_case():
    with pytest.raises(ValueError, match="'bad'.*2 pred_boxes but 1 pred_scores"):
        CaseBoxes("bad", np.zeros((2, 6)), np.zeros(1), np.zeros((0, 6)))
    with pytest.raises(ValueError, match="'bad4'.*gt_boxes must have shape"):
        CaseBoxes("bad4", np.zeros((0, 6)), np.zeros(0), np.zeros((2, 4)))
    c = CaseBoxes("empty", [], [], [])
    assert c.pred_boxes.shape == (0, 6) and c.gt_boxes.shape == (0, 6) and c.pred_scores.shape == (0,)


def test_one_perfect_prediction():
    out = coco_metrics([case([CUBE], [0.9], [CUBE])])
    for key in ("ap_10", "ap_30", "ap_50", "map", "mar"):
        assert out[key] == pytest.approx(1.0)


def test_false_positive_ranked_above_true_positives():
    # ranks: FP (0.9), L1 (0.8), L2 (0.7): precision 0, 1/2, 2/3 -> envelope 2/3 at every recall
    out = coco_metrics([case([FAR, CUBE, OTHER], [0.9, 0.8, 0.7], [CUBE, OTHER])])
    for key in ("ap_10", "ap_30", "ap_50", "map"):
        assert out[key] == pytest.approx(2 / 3)
    assert out["mar"] == pytest.approx(1.0)


def test_known_ranks_101_point_ap():
    # ranks: L1 (0.9), FP (0.8), L2 (0.7): recall .5 at precision 1 (recall points 0..0.50: 51 of 101),
    # then recall 1 at precision 2/3 (recall points 0.51..1.00: 50 of 101)
    out = coco_metrics([case([CUBE, FAR, OTHER], [0.9, 0.8, 0.7], [CUBE, OTHER])])
    assert out["ap_10"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert out["map"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)


def test_iou_dependent_ap_and_recall_count_each_threshold_once():
    # IoU 0.42: a hit at 0.10 ... 0.40 (7 of the 9 thresholds), a miss at 0.45 and 0.50
    out = coco_metrics([case([[0, 0, 0, 10, 10, 4.2]], [0.9], [CUBE])])
    assert out["ap_10"] == pytest.approx(1.0) and out["ap_30"] == pytest.approx(1.0)
    assert out["ap_50"] == 0.0
    assert out["map"] == pytest.approx(7 / 9)
    assert out["mar"] == pytest.approx(7 / 9)   # MONAI with iou_list (0.1, 0.3, 0.5) would give 8/10


def test_lesion_free_case_adds_its_false_positives():
    with_lesion = case([CUBE], [0.5], [CUBE], "a")
    lesion_free = case([FAR], [0.9], [], "b")
    assert coco_metrics([with_lesion])["ap_10"] == pytest.approx(1.0)
    out = coco_metrics([with_lesion, lesion_free])
    assert out["ap_10"] == pytest.approx(0.5) and out["mar"] == pytest.approx(1.0)
    out = coco_metrics([with_lesion, case([], [], [], "empty")])
    assert out["ap_10"] == pytest.approx(1.0)


def test_max_detections_per_case():
    c = case([CUBE, OTHER], [0.9, 0.8], [CUBE, OTHER])
    out = coco_metrics([c], max_detections=1)
    assert out["ap_10"] == pytest.approx(51 / 101)   # recall 0.5: recall points above 0.5 get precision 0
    assert out["mar"] == pytest.approx(0.5)
    assert coco_metrics([c])["mar"] == pytest.approx(1.0)


def test_no_lesions_gives_nan_and_no_predictions_gives_zero():
    for cases in ([], [case([CUBE], [0.9], [])], [case([], [], [])]):
        out = detection_metrics(cases)
        assert all(math.isnan(out[k]) for k in LESION_COLUMNS), out
    out = detection_metrics([case([], [], [CUBE]), case([], [], [])])
    assert all(out[k] == 0.0 for k in LESION_COLUMNS), out


# ---- brute-force COCO (pycocotools rules) and independent MONAI runs on random case sets ----

def _iou64(a, b):
    lo, hi = np.maximum(a[:, None, :3], b[None, :, :3]), np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    vol = lambda x: np.prod(x[:, 3:] - x[:, :3], axis=-1)  # noqa: E731
    return inter / (vol(a)[:, None] + vol(b)[None] - inter)


def _brute_ap_recall(cases, t, max_det=100):
    scores, is_tp, n_gt = [], [], 0
    for c in cases:
        order = np.argsort(-c.pred_scores, kind="mergesort")[:max_det]
        iou = _iou64(c.pred_boxes.astype(np.float64), c.gt_boxes.astype(np.float64))
        taken = np.zeros(len(c.gt_boxes), dtype=bool)
        for d in order:
            free = np.where(~taken & (iou[d] >= t))[0] if len(c.gt_boxes) else []
            if len(free):
                taken[free[np.argmax(iou[d, free])]] = True
            scores.append(c.pred_scores[d])
            is_tp.append(len(free) > 0)
        n_gt += len(c.gt_boxes)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    # float32 cumulative counts as in MONAI/nnDetection: recall k/n is compared in float32 with the
    # 101 recall points (e.g. 7/10 lies just below 0.70)
    tp = np.cumsum(np.asarray(is_tp, dtype=float)[order]).astype(np.float32)
    fp = np.cumsum(1.0 - np.asarray(is_tp, dtype=float)[order]).astype(np.float32)
    rc, pr = tp / n_gt, tp / (tp + fp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]
    idx = np.searchsorted(rc, np.linspace(0, 1, 101), side="left")
    ap = np.mean([pr[i] if i < len(pr) else 0.0 for i in idx])
    return ap, (rc[-1] if len(rc) else 0.0)


def _monai_reference(cases):
    """MONAI as documented: one metric for the three APs and mAP, one with iou_list (0.1,) for mAR."""
    args = lambda thresholds: dict(  # noqa: E731
        iou_fn=monai_box_iou, iou_thresholds=thresholds, pred_boxes=[c.pred_boxes for c in cases],
        pred_classes=[np.zeros(len(c.pred_boxes), int) for c in cases], pred_scores=[c.pred_scores for c in cases],
        gt_boxes=[c.gt_boxes for c in cases], gt_classes=[np.zeros(len(c.gt_boxes), int) for c in cases])
    ap_metric = COCOMetric(classes=["lesion"], iou_list=(0.1, 0.3, 0.5), max_detection=(100,), verbose=False)
    ap_values, _ = ap_metric(matching_batch(**args(ap_metric.iou_thresholds)))
    ar_metric = COCOMetric(classes=["lesion"], iou_list=(0.1,), max_detection=(100,), verbose=False)
    ar_values, _ = ar_metric(matching_batch(**args(ar_metric.iou_thresholds)))
    return {"ap_10": ap_values["AP_IoU_0.10_MaxDet_100"], "ap_30": ap_values["AP_IoU_0.30_MaxDet_100"],
            "ap_50": ap_values["AP_IoU_0.50_MaxDet_100"], "map": ap_values["mAP_IoU_0.10_0.50_0.05_MaxDet_100"],
            "mar": ar_values["mAR_IoU_0.10_0.50_0.05_MaxDet_100"]}


def test_random_sets_agree_with_brute_force_and_monai():
    rng = np.random.default_rng(2024)
    checked = 0
    for _ in range(20):
        cases = random_cases(rng, max_cases=4, hit_share=0.8, jitter=1.0)
        if sum(len(c.gt_boxes) for c in cases) == 0:
            assert math.isnan(coco_metrics(cases)["map"])
            continue
        ours = coco_metrics(cases)
        singles = [_brute_ap_recall(cases, t) for t in MAP_IOU_THRESHOLDS]
        aps = [ap for ap, _ in singles]
        for key, t in (("ap_10", 0.1), ("ap_30", 0.3), ("ap_50", 0.5)):
            assert ours[key] == pytest.approx(aps[MAP_IOU_THRESHOLDS.index(t)], abs=1e-6)
        assert ours["map"] == pytest.approx(np.mean(aps), abs=1e-6)
        assert ours["mar"] == pytest.approx(np.mean([r for _, r in singles]), abs=1e-6)
        reference = _monai_reference(cases)
        for key in ("ap_10", "ap_30", "ap_50", "map", "mar"):
            assert ours[key] == pytest.approx(reference[key], abs=1e-6), key
        checked += 1
    assert checked >= 15


def test_lesion_counts_on_a_crafted_case():
    big_around_other = [10, 10, 10, 40, 40, 40]    # centre (25, 25, 25) in OTHER, IoU 1000/27000 < 0.1
    c = case([CUBE, CUBE, [60, 0, 0, 70, 10, 10], FAR, big_around_other, [80, 80, 80, 90, 90, 90]],
             [0.9, 0.6, 0.4, 0.7, 0.8, 0.2], [CUBE, [60, 0, 0, 70, 10, 10], OTHER])
    assert lesion_counts(c) == {"lesions": 3, "lesions_found": 1, "lesions_missed": 2, "fp_components": 2}
    assert lesion_counts(c, score_threshold=0.4) == {"lesions": 3, "lesions_found": 2, "lesions_missed": 1,
                                                     "fp_components": 2}
    assert lesion_counts(c, score_threshold=0.2)["fp_components"] == 3
    assert lesion_counts(c, rule="centre") == {"lesions": 3, "lesions_found": 2, "lesions_missed": 1,
                                               "fp_components": 1}
    assert lesion_counts(case([], [], [])) == {"lesions": 0, "lesions_found": 0, "lesions_missed": 0,
                                               "fp_components": 0}
