"""Lesion detection metrics over a set of cases: COCO AP/AR (MONAI), LUNA16 FROC, per-case lesion counts.

Conventions:
- Boxes: ``[x1, y1, z1, x2, y2, z2]`` over array axes 0, 1, 2, voxel indices, max exclusive
  (``metrics.lesions``); one foreground class (label 0).
- AP / AR: MONAI's ``matching_batch`` (greedy COCO matching, highest score first, at most
  ``max_detections`` per case) and ``COCOMetric`` (101-point interpolated precision). IoU thresholds
  are the exact decimals 0.10, 0.15, ..., 0.50 (9 of them); a prediction matches at IoU >= threshold.
  ``ap_10`` / ``ap_30`` / ``ap_50``: AP at IoU 0.1 / 0.3 / 0.5; ``map``: mean of the 9 APs;
  ``mar``: mean over the 9 thresholds of the recall at ``max_detections`` per case.
- Cases without lesions still add their predictions as false positives; a set without any lesion
  gives NaN for every AP / AR / FROC value (never MONAI's -1 placeholder).
- FROC: ``metrics.froc`` (LUNA16 rules); per-case counts: ``lesion_counts`` (same hit rule as FROC). Under
  rule ``radius`` both use the case's world references (``CaseBoxes.gt_centres``/``gt_diameters``) and ignore
  predictions on excluded findings, while AP/AR keep matching the boxes by IoU.
- Resampled scan sets (the scan bootstrap of ``model_comparison.csv``): ``metrics.lesion_bootstrap`` computes
  the same values from each case's matching, computed once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .froc import froc_metrics
from .lesions import CaseBoxes, HitRule, box_iou, case_hits, case_ignored, hits

logger = logging.getLogger(__name__)

__all__ = ["LESION_COLUMNS", "LESION_CASE_COLUMNS", "MAP_IOU_THRESHOLDS", "CaseBoxes", "HitRule",
           "case_hits", "coco_metrics", "detection_metrics", "hits", "lesion_counts", "matching_results"]

LESION_COLUMNS: tuple[str, ...] = (
    "ap_10", "ap_30", "ap_50", "map", "mar", "froc_fp0.125", "froc_fp0.25", "froc_fp0.5", "froc_fp1",
    "froc_fp2", "froc_fp4", "froc_fp8", "froc_cpm",
)
LESION_CASE_COLUMNS: tuple[str, ...] = ("lesions", "lesions_found", "lesions_missed", "fp_components")
MAP_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.10 + 0.05 * i, 2) for i in range(9))
_AP_KEYS: dict[str, float] = {"ap_10": 0.1, "ap_30": 0.3, "ap_50": 0.5}


def matching_results(cases: Sequence[CaseBoxes], max_detections: int) -> list[dict]:
    """MONAI's ``matching_batch`` of ``cases`` (one dict per case, class 0 only; absent when the case has neither
    predictions nor lesions) at the 9 ``MAP_IOU_THRESHOLDS``, boxes compared by ``metrics.lesions.box_iou``."""
    from monai.apps.detection.metrics.matching import matching_batch

    return matching_batch(
        iou_fn=box_iou, iou_thresholds=MAP_IOU_THRESHOLDS,
        pred_boxes=[c.pred_boxes for c in cases], pred_scores=[c.pred_scores for c in cases],
        pred_classes=[np.zeros(len(c.pred_boxes), dtype=np.int64) for c in cases],
        gt_boxes=[c.gt_boxes for c in cases],
        gt_classes=[np.zeros(len(c.gt_boxes), dtype=np.int64) for c in cases],
        max_detections=max_detections,
    )


def _at_threshold(results: list[dict], t_idx: int) -> list[dict]:
    """Matching results restricted to IoU threshold ``t_idx`` (row ``t_idx`` of every [T, ...] array)."""
    keep = ("dtMatches", "gtMatches", "dtIgnore")
    return [{c: {k: (v[t_idx:t_idx + 1] if k in keep else v) for k, v in r.items()} for c, r in res.items()}
            for res in results]


def coco_metrics(cases: Sequence[CaseBoxes], *, max_detections: int = 100) -> dict[str, float]:
    """``ap_10``, ``ap_30``, ``ap_50``, ``map`` (IoU 0.10:0.50:0.05) and ``mar`` over a set of cases.

    One ``COCOMetric`` over the 9 thresholds gives ``map`` and ``mar`` (0.10 is both its list and range
    start, so no threshold is counted twice); one single-threshold ``COCOMetric`` per AP column, fed that
    threshold's rows of the same matching. NaN for every value when no case has a lesion.
    """
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    if sum(len(c.gt_boxes) for c in cases) == 0:
        return {k: float("nan") for k in (*_AP_KEYS, "map", "mar")}
    from monai.apps.detection.metrics.coco import COCOMetric

    results = matching_results(cases, max_detections)
    overall = COCOMetric(classes=["lesion"], iou_list=(0.1,), iou_range=(0.1, 0.5, 0.05),
                         max_detection=(max_detections,), per_class=False, verbose=False)
    if len(overall.iou_thresholds) != len(MAP_IOU_THRESHOLDS):  # guard against a MONAI change
        raise RuntimeError(f"COCOMetric built {len(overall.iou_thresholds)} IoU thresholds, expected 9")
    values, _ = overall(results)
    out = {"map": _pick(values, "mAP_IoU"), "mar": _pick(values, "mAR_IoU")}
    for key, t in _AP_KEYS.items():
        single = COCOMetric(classes=["lesion"], iou_list=(t,), iou_range=(t, t, 1.0),
                            max_detection=(max_detections,), per_class=False, verbose=False)
        single_values, _ = single(_at_threshold(results, MAP_IOU_THRESHOLDS.index(t)))
        out[key] = _pick(single_values, "AP_IoU")
    return {k: out[k] for k in (*_AP_KEYS, "map", "mar")}


def _pick(values: dict[str, float], prefix: str) -> float:
    (value,) = [v for k, v in values.items() if k.startswith(prefix)]
    return float("nan") if value == -1 else float(value)


def detection_metrics(cases: Sequence[CaseBoxes], *, rule: HitRule = "iou", iou_threshold: float = 0.1,
                      max_detections: int = 100) -> dict[str, float]:
    """Every ``LESION_COLUMNS`` value: ``coco_metrics`` (IoU matching of the boxes, whatever ``rule``) plus
    ``froc_metrics`` (``rule``; ``radius`` needs the cases' world centres, see ``metrics.lesions.CaseBoxes``)."""
    out = coco_metrics(cases, max_detections=max_detections)
    out.update(froc_metrics(cases, rule=rule, iou_threshold=iou_threshold))
    return {k: out[k] for k in LESION_COLUMNS}


def lesion_counts(case: CaseBoxes, *, rule: HitRule = "iou", iou_threshold: float = 0.1,
                  score_threshold: float = 0.5) -> dict[str, int]:
    """Per-case lesion counts among the predictions scored >= ``score_threshold`` (the others are ignored).

    ``lesions``: the rule's reference lesions (``gt_boxes``; ``gt_centres`` under ``radius``);
    ``lesions_found``: lesions hit by at least one kept prediction; ``lesions_missed``: the rest;
    ``fp_components``: kept predictions hitting no lesion and not ignored (``case_ignored``: under ``radius``,
    those on an excluded finding). Hit rule as FROC (``metrics.lesions.case_hits``).
    """
    keep = case.pred_scores >= score_threshold
    h = case_hits(case, rule=rule, iou_threshold=iou_threshold)[keep]
    false_pos = ~h.any(axis=1) & ~case_ignored(case, rule=rule)[keep]
    n = h.shape[1]
    found = int(h.any(axis=0).sum())
    return {"lesions": n, "lesions_found": found, "lesions_missed": n - found,
            "fp_components": int(false_pos.sum())}
