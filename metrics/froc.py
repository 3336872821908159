"""FROC by the LUNA16 evaluation rules (noduleCADEvaluationLIDC.py), with LUNA16's radius hits or box hits.

Rules, as LUNA16 applies them:
- A prediction hits a lesion when IoU >= ``iou_threshold`` (rule ``iou``), when its box centre lies in
  the lesion box (rule ``centre``), or when its world centre lies strictly inside the lesion's sphere (rule
  ``radius``, LUNA16's own: squared distance < (diameter / 2)^2, diameter < 0 counted as 10 mm, references
  ``CaseBoxes.gt_centres``/``gt_diameters``); see ``metrics.lesions.case_hits``.
- Rule ``radius`` only: a prediction hitting no lesion but lying in an excluded finding is ignored (neither
  a hit nor a false positive; ``metrics.lesions.case_ignored``), as LUNA16 deletes it from the candidates.
- A lesion hit by at least one prediction is one positive candidate scored by the highest score among
  the predictions hitting it; a prediction that hits any lesion is never a false positive (one hitting
  several lesions lends its score to each of them).
- A lesion no prediction hits is excluded from the candidate list and counts in the denominator only,
  so the curve's sensitivity tops out at (found lesions / all lesions).
- Every prediction hitting no lesion is a negative candidate (false positive) with its own score.
- Curve: ``sklearn.metrics.roc_curve`` over the candidates; FPs per scan = FP rate x (number of false
  positives) / (number of scans, every scan counted, lesion-free ones too); sensitivity = TP rate x
  (found lesions / all lesions). No false positives at all: FPs per scan 0 at every point (LUNA's rule).
- Operating points: the curve is linearly interpolated (``np.interp``, flat beyond its ends) onto LUNA's
  grid ``np.linspace(0.125, 8, 10001)``, and each of 0.125, 0.25, 0.5, 1, 2, 4, 8 FPs per scan takes the
  value at its nearest grid point (at most 0.0004 FPs/scan away); ``froc_cpm`` is their mean.
- No lesion in the whole set: every FROC value NaN. Lesions but no prediction hits any: sensitivity 0.

Hand-written: LUNA16's evaluation is a script, not an importable library; sklearn's ``roc_curve`` draws the
curve exactly as the script does.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from .lesions import CaseBoxes, HitRule, case_hits, case_ignored


logger = logging.getLogger(__name__)

FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
FROC_KEYS: tuple[str, ...] = tuple(f"froc_fp{r:g}" for r in FROC_FP_RATES) + ("froc_cpm",)
_LUNA_GRID = np.linspace(0.125, 8.0, num=10001)  # LUNA16's fps_itp


def froc_candidates(cases: Sequence[CaseBoxes], *, rule: HitRule = "iou",
                    iou_threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray, int]:
    """LUNA16 candidate list over all scans: ``(is_lesion (K,) bool, score (K,) float64, n_lesions)``.

    One positive per lesion hit (its best hitting score), one negative per prediction hitting no
    lesion and not ignored (``case_ignored``); ``n_lesions`` counts every lesion of the rule's references
    (``case_hits``), hit or not.
    """
    is_lesion: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    n_lesions = 0
    for case in cases:
        scores_c = np.asarray(case.pred_scores, dtype=np.float64)
        h = case_hits(case, rule=rule, iou_threshold=iou_threshold)  # (N, M)
        n_lesions += h.shape[1]
        found = h.any(axis=0)
        if found.any():
            best = np.where(h[:, found], scores_c[:, None], -np.inf).max(axis=0)
            is_lesion.append(np.ones(best.size, dtype=bool))
            scores.append(best)
        false_pos = ~h.any(axis=1) & ~case_ignored(case, rule=rule)
        is_lesion.append(np.zeros(int(false_pos.sum()), dtype=bool))
        scores.append(scores_c[false_pos])
    if not scores:
        return np.zeros(0, dtype=bool), np.zeros(0), 0
    return np.concatenate(is_lesion), np.concatenate(scores), n_lesions


def _sklearn_roc(is_lesion: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve`` (FP rate, TP rate); the reference ``froc_metrics`` draws its curve with."""
    from sklearn.metrics import roc_curve  # lazy: sklearn is only needed here

    fpr, tpr, _ = roc_curve(is_lesion.astype(np.int64), scores)
    return fpr, tpr


def fast_roc(is_lesion: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FP rate, TP rate) exactly as ``sklearn.metrics.roc_curve(..., drop_intermediate=True)`` computes them.

    Hand-written for speed only: the scan bootstrap (``metrics.lesion_bootstrap``) draws thousands of curves, and
    sklearn's input validation costs more than the curve. Same steps as sklearn 1.x: scores sorted descending
    (stable), one point per distinct score (counts at the last candidate of each tie), collinear middle points
    dropped (second differences of both counts zero), (0, 0) prepended, counts divided by their totals. Counts
    are exact integers in float64, so the points equal sklearn's bit for bit (tests/test_froc.py). Both classes
    must be present (``_curve_from_candidates`` handles the rest).
    """
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores = scores[order]
    truth = is_lesion[order].astype(np.float64)
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), truth.size - 1]
    tps = np.cumsum(truth)[ends]
    fps = 1 + ends.astype(np.float64) - tps
    if fps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps = fps[keep], tps[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    return fps / fps[-1], tps / tps[-1]


def _curve_from_candidates(is_lesion: np.ndarray, scores: np.ndarray, n_lesions: int, n_scans: int, *,
                           roc: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] = _sklearn_roc
                           ) -> tuple[np.ndarray, np.ndarray]:
    """LUNA16's ``computeFROC``: (FPs per scan, sensitivity) points, FPs per scan non-decreasing."""
    n_found = int(is_lesion.sum())
    n_fp = int(is_lesion.size - n_found)
    if n_found == 0:  # no lesion hit (sklearn's TP rate would be NaN): sensitivity 0 everywhere
        return np.array([0.0, n_fp / n_scans]), np.zeros(2)
    if n_fp == 0:  # LUNA: "this system has no false positives" -> FPs per scan 0 at every point
        return np.zeros(2), np.array([0.0, n_found / n_lesions])
    fpr, tpr = roc(is_lesion, scores)
    return fpr * n_fp / n_scans, tpr * n_found / n_lesions


def froc_curve(cases: Sequence[CaseBoxes], *, rule: HitRule = "iou",
               iou_threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """FROC curve ``(fps_per_scan, sensitivity)`` over all score thresholds (for plotting).

    Both arrays are empty when the set holds no lesion (the curve is undefined).
    """
    is_lesion, scores, n_lesions = froc_candidates(cases, rule=rule, iou_threshold=iou_threshold)
    if n_lesions == 0:
        return np.zeros(0), np.zeros(0)
    return _curve_from_candidates(is_lesion, scores, n_lesions, len(cases))


def froc_at(fps_per_scan: np.ndarray, sensitivity: np.ndarray,
            fp_rates: Sequence[float] = FROC_FP_RATES) -> np.ndarray:
    """Sensitivity at each FP rate: LUNA's ``np.interp`` onto its 10001-point grid, nearest grid point."""
    on_grid = np.interp(_LUNA_GRID, fps_per_scan, sensitivity)
    idx = [int(np.argmin(np.abs(_LUNA_GRID - r))) for r in fp_rates]
    return on_grid[idx]


def froc_metrics(cases: Sequence[CaseBoxes], *, rule: HitRule = "iou",
                 iou_threshold: float = 0.1) -> dict[str, float]:
    """``froc_fp0.125`` ... ``froc_fp8`` (sensitivity at those mean FPs per scan) and ``froc_cpm`` (their mean).

    Every value is NaN when the set holds no lesion; see the module docstring for the LUNA16 rules.
    """
    fps, sens = froc_curve(cases, rule=rule, iou_threshold=iou_threshold)
    if fps.size == 0:
        return {k: float("nan") for k in FROC_KEYS}
    values = froc_at(fps, sens)
    out = {f"froc_fp{r:g}": float(v) for r, v in zip(FROC_FP_RATES, values)}
    out["froc_cpm"] = float(np.mean(values))
    return out


_RATE_POINTS = _LUNA_GRID[[int(np.argmin(np.abs(_LUNA_GRID - r))) for r in FROC_FP_RATES]]  # froc_at's grid points


def froc_values(is_lesion: np.ndarray, scores: np.ndarray, n_lesions: int, n_scans: int) -> np.ndarray:
    """``froc_metrics`` from a pooled candidate list: (8,) float64, the 7 sensitivities then ``froc_cpm``.

    ``is_lesion``/``scores``/``n_lesions``: ``froc_candidates`` of the scans (the concatenation of each scan's own
    candidates, a scan drawn twice counted twice); ``n_scans``: how many scans (lesion-free ones too). All NaN
    without a lesion. Hand-written for speed (the scan bootstrap calls it thousands of times): ``fast_roc``
    instead of sklearn and ``np.interp`` at the 7 grid points ``froc_at`` picks instead of the whole
    10001-point grid (pointwise, so the same values); equal to ``froc_metrics`` to 1e-12 (tests/test_froc.py).
    """
    if n_lesions == 0:
        return np.full(len(FROC_KEYS), np.nan)
    fps, sens = _curve_from_candidates(is_lesion, scores, n_lesions, n_scans, roc=fast_roc)
    values = np.interp(_RATE_POINTS, fps, sens)
    return np.r_[values, np.mean(values)]
