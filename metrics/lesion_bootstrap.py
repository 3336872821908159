"""Dataset-level lesion metrics (AP, mAP, mAR, FROC) of resampled scan sets, and their scan bootstrap.

Why this module exists: ``model_comparison.csv`` gives AP/mAP/mAR/FROC intervals by bootstrapping scans, i.e.
recomputing every metric of every run on thousands of resamples of the test scans. ``detection_metrics`` on a
resample runs MONAI's ``matching_batch`` (a Python loop per box pair) and ``COCOMetric`` plus sklearn's
``roc_curve``: tens of milliseconds per call, minutes per model. COCO matching and the LUNA16 candidate list are
both per scan, so :class:`ScanSet` matches each scan once and a resample only pools the scans' rows.

Rules (a resample is a sequence of scan indices, duplicates allowed, taken in the order given; the result equals
``metrics.detection.detection_metrics`` on that list of scans to 1e-12, tests/test_lesion_bootstrap.py):

- COCO (as MONAI's ``COCOMetric._compute_statistics``): each scan's detections are MONAI's ``matching_batch``
  output (sorted by score descending within the scan with a stable sort, at most ``max_detections``, matched at
  IoU 0.10, 0.15, ..., 0.50); the detections of all scans of the resample are concatenated in resample order and
  stably sorted by score descending; cumulative TP/FP counts (float32, as MONAI), recall = TP / lesions,
  precision = TP / (TP + FP + eps) made non-increasing from the right (the envelope), read at the 101 recall
  points 0, 0.01, ..., 1 (first position with recall >= the point; 0 past the last one); AP = mean of the 101
  values per threshold, ``map`` = mean over the 9 x 101 values, ``mar`` = mean over the 9 thresholds of the
  final recall (0 without detections). No lesion in the resample: NaN.
- FROC (as ``metrics.froc.froc_metrics``): each scan's LUNA16 candidates (``froc_candidates``) are listed once;
  a resample concatenates them, sums the lesions, and counts every drawn scan (a scan drawn twice twice) in the
  false-positives-per-scan denominator; ``metrics.froc.froc_values`` gives the 7 sensitivities and the CPM. Under
  rule ``radius`` the candidates come from each scan's world references (``gt_centres``, excluded findings
  ignored) while COCO keeps matching its boxes (``gt_boxes``).
- Bootstrap (:func:`scan_bootstrap_ci`): the conventions of ``metrics.statistics.bootstrap_scans_ci`` (draws
  ``rng.integers(0, n, size=(n_resamples, n))`` of ``np.random.default_rng(seed)``, NaN resamples dropped,
  ``np.percentile`` "linear"; fewer than 2 scans or 2 finite resamples: NaN), with the statistic of a resample
  = the mean over the runs of each run's metric on that resample (the same drawn scans for every run).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .detection import LESION_COLUMNS, MAP_IOU_THRESHOLDS, CaseBoxes, HitRule, matching_results
from .froc import froc_candidates, froc_values

logger = logging.getLogger(__name__)

__all__ = ["BOX_COLUMNS", "BOX_KINDS", "ScanSet", "box_rows", "scan_bootstrap_ci", "scans_from_rows"]

_RECALL_POINTS = np.linspace(0.0, 1.00, 101, endpoint=True)  # COCOMetric.recall_thresholds
_AP_ROWS = tuple(MAP_IOU_THRESHOLDS.index(t) for t in (0.1, 0.3, 0.5))
_N_COCO = 5  # ap_10, ap_30, ap_50, map, mar: the first five LESION_COLUMNS

# the boxes table (utils.schema.TABLES["boxes"]): per scan one "case" row (the matching settings), then its rows:
# - "gt": a reference box (x1..z2 voxels, max exclusive): what AP/mAR match, and the lesions of rules iou/centre;
# - "nodule": a reference sphere of rule radius (cx, cy, cz, diameter: world mm; a CaseBoxes.gt_centres row), so
#   a scan's boxes and its radius references coexist, their counts free to differ;
# - "excluded": an excluded finding (cx, cy, cz, diameter: world mm; a CaseBoxes.excluded_centres row);
# - "pred": a predicted box with its score, and its world centre (cx, cy, cz) where the case has pred_centres.
# Columns a row kind does not use are empty. Tables written before cx..diameter existed read as before.
BOX_KINDS = ("case", "gt", "nodule", "excluded", "pred")
BOX_COLUMNS = ("case_id", "kind", "score", "x1", "y1", "z1", "x2", "y2", "z2", "hit_rule", "hit_iou",
               "max_detections", "cx", "cy", "cz", "diameter")
_COORDS = ["x1", "y1", "z1", "x2", "y2", "z2"]
_WORLD = ["cx", "cy", "cz", "diameter"]
_NAN = float("nan")


def _row(case_id: str, kind: str, *, score: float = _NAN, box: Sequence[float] = (_NAN,) * 6,
         world: Sequence[float] = (_NAN,) * 4, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the boxes table in ``BOX_COLUMNS`` order (``settings``: the "case" row's matching settings)."""
    head = settings or dict(hit_rule=None, hit_iou=_NAN, max_detections=None)
    return dict(case_id=case_id, kind=kind, score=float(score), **{c: float(v) for c, v in zip(_COORDS, box)},
                **head, **{c: float(v) for c, v in zip(_WORLD, world)})


def box_rows(cases: Iterable[CaseBoxes], *, rule: HitRule, iou_threshold: float,
             max_detections: int) -> list[dict[str, Any]]:
    """Rows of the boxes table for ``cases``: per scan one "case" row (with the hit rule, its IoU and
    ``max_detections``), then its "gt" rows, its "nodule" and "excluded" rows (where the case has them), then its
    "pred" rows in their stored order (ties in score keep that order, which the COCO matching depends on). Floats
    are the float32 values widened to float64 (world mm: the float64 values), so a CSV round trip gives back the
    same boxes, scores, centres and diameters."""
    rows: list[dict[str, Any]] = []
    for case in cases:
        settings = dict(hit_rule=str(rule), hit_iou=float(iou_threshold), max_detections=int(max_detections))
        rows.append(_row(case.case_id, "case", settings=settings))
        rows += [_row(case.case_id, "gt", box=box) for box in case.gt_boxes]
        for kind, centres, diameters in (("nodule", case.gt_centres, case.gt_diameters),
                                         ("excluded", case.excluded_centres, case.excluded_diameters)):
            if centres is not None and diameters is not None:
                rows += [_row(case.case_id, kind, world=(*c, d)) for c, d in zip(centres, diameters)]
        centres = case.pred_centres if case.pred_centres is not None else [(_NAN,) * 3] * len(case.pred_boxes)
        rows += [_row(case.case_id, "pred", score=score, box=box, world=(*centre, _NAN))
                 for box, score, centre in zip(case.pred_boxes, case.pred_scores, centres)]
    return rows


def scans_from_rows(frame: pd.DataFrame) -> tuple[list[CaseBoxes], dict[str, Any]]:
    """One run's boxes table (rows of :func:`box_rows`, any extra columns ignored) back as scans in the order of
    their "case" rows, and the run's settings ``{"rule", "iou_threshold", "max_detections"}`` (from its first
    "case" row; the defaults iou / 0.1 / 100 where missing). A scan without a "case" row is left out.

    World fields: where the table has the cx..diameter columns and the run uses rule radius or holds any "nodule"
    or "excluded" row or "pred" centre, every scan gets ``gt_centres``/``gt_diameters`` (its "nodule" rows),
    ``excluded_centres``/``excluded_diameters`` (its "excluded" rows; both possibly empty) and ``pred_centres``
    (None for a scan whose "pred" rows have no centres). Otherwise the scans are boxes only, as before."""
    kind = frame["kind"].astype(str)
    ids = frame["case_id"].astype(str)
    order = list(dict.fromkeys(ids[kind == "case"]))
    coords = frame[_COORDS].to_numpy(dtype=np.float32)
    scores = pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=np.float32)
    groups: dict[str, dict[str, list[int]]] = {c: {k: [] for k in BOX_KINDS[1:]} for c in order}
    for i, (case_id, k) in enumerate(zip(ids, kind)):
        if k in BOX_KINDS[1:] and case_id in groups:
            groups[case_id][k].append(i)
    first = frame[kind == "case"].head(1).to_dict("records")
    head = first[0] if first else {}
    settings = dict(rule=_present(head.get("hit_rule"), "iou", str),
                    iou_threshold=_present(head.get("hit_iou"), 0.1, float),
                    max_detections=_present(head.get("max_detections"), 100, lambda v: int(float(v))))
    world = _world_values(frame, kind, settings["rule"])
    scans = [CaseBoxes(c, coords[g["pred"]], scores[g["pred"]], coords[g["gt"]])
             if world is None else _world_scan(c, g, coords, scores, world) for c, g in groups.items()]
    return scans, settings


def _world_values(frame: pd.DataFrame, kind: pd.Series, rule: str) -> np.ndarray | None:
    """(rows, 4) float64 cx, cy, cz, diameter of the table, or None when its scans are boxes only."""
    if not set(_WORLD) <= set(frame.columns):
        return None
    world = frame[_WORLD].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    spheres = kind.isin(("nodule", "excluded")).to_numpy()
    pred_centres = np.isfinite(world[(kind == "pred").to_numpy(), :3]).any()
    return world if rule == "radius" or spheres.any() or pred_centres else None


def _world_scan(case_id: str, rows: dict[str, list[int]], coords: np.ndarray, scores: np.ndarray,
                world: np.ndarray) -> CaseBoxes:
    """One scan with its world fields (see :func:`scans_from_rows`)."""
    pred = world[rows["pred"], :3]
    present = np.isfinite(pred).all(axis=1)
    if present.any() and not present.all():
        raise ValueError(f"boxes table, case {case_id!r}: {int((~present).sum())} of its {present.size} pred rows "
                         "lack a world centre (cx, cy, cz)")
    return CaseBoxes(case_id, coords[rows["pred"]], scores[rows["pred"]], coords[rows["gt"]],
                     pred_centres=pred if present.all() else None,
                     gt_centres=world[rows["nodule"], :3], gt_diameters=world[rows["nodule"], 3],
                     excluded_centres=world[rows["excluded"], :3], excluded_diameters=world[rows["excluded"], 3])


def _present(value: Any, default: Any, cast: Any) -> Any:
    """``cast(value)``, or ``default`` for a missing value (None, NaN, empty)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return default
    return cast(value)


def _positions(starts: np.ndarray, lengths: np.ndarray, scans: np.ndarray) -> np.ndarray:
    """Indices into a flat array holding the blocks ``starts[s]:starts[s] + lengths[s]`` of ``scans``, in order."""
    lens = lengths[scans]
    offsets = starts[scans] - (np.cumsum(lens) - lens)
    return np.repeat(offsets, lens) + np.arange(int(lens.sum()))


class ScanSet:
    """One run's test scans, matched once, for fast dataset-level metrics of any resample (module docstring).

    Args:
        cases: the scans (their order defines the indices a resample draws).
        rule, iou_threshold: FROC hit rule (``metrics.lesions.case_hits``; ``radius`` needs the scans' world
            centres); COCO always matches the boxes by IoU.
        max_detections: detections per scan kept by the COCO matching.
    """

    def __init__(self, cases: Sequence[CaseBoxes], *, rule: HitRule = "iou", iou_threshold: float = 0.1,
                 max_detections: int = 100) -> None:
        self.case_ids = [c.case_id for c in cases]
        results = matching_results(cases, max_detections) if cases else []
        matched = [r.get(0) for r in results]
        self._scores = np.concatenate([np.zeros(0, np.float32)]
                                      + [m["dtScores"].astype(np.float32) for m in matched if m is not None])
        self._matches = np.concatenate([np.zeros((len(MAP_IOU_THRESHOLDS), 0), bool)]
                                       + [m["dtMatches"] > 0 for m in matched if m is not None], axis=1)
        det_len = np.array([0 if m is None else m["dtScores"].size for m in matched], dtype=np.int64)
        self._det = (np.cumsum(det_len) - det_len, det_len)
        self._n_gt = np.array([len(c.gt_boxes) for c in cases], dtype=np.int64)
        candidates = [froc_candidates([c], rule=rule, iou_threshold=iou_threshold) for c in cases]
        self._cand_lesion = np.concatenate([np.zeros(0, bool)] + [lesion for lesion, _, _ in candidates])
        self._cand_score = np.concatenate([np.zeros(0)] + [score for _, score, _ in candidates])
        cand_len = np.array([lesion.size for lesion, _, _ in candidates], dtype=np.int64)
        self._cand = (np.cumsum(cand_len) - cand_len, cand_len)
        self._n_lesions = np.array([n for _, _, n in candidates], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.case_ids)

    def metrics(self, scans: Sequence[int] | np.ndarray) -> np.ndarray:
        """(13,) float64 in ``LESION_COLUMNS`` order on the scans ``scans`` (indices, duplicates allowed)."""
        scans = np.asarray(scans, dtype=np.int64)
        det = _positions(*self._det, scans)
        coco = _coco_values(self._scores[det], self._matches[:, det], int(self._n_gt[scans].sum()))
        cand = _positions(*self._cand, scans)
        froc = froc_values(self._cand_lesion[cand], self._cand_score[cand], int(self._n_lesions[scans].sum()),
                           scans.size)
        return np.concatenate([coco, froc])

    def metrics_dict(self, scans: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
        """:meth:`metrics` by column name; ``None``: every scan once, in order (the run's own values)."""
        scans = np.arange(len(self)) if scans is None else scans
        return {k: float(v) for k, v in zip(LESION_COLUMNS, self.metrics(scans))}


def _coco_values(scores: np.ndarray, matches: np.ndarray, num_gt: int) -> np.ndarray:
    """``ap_10``, ``ap_30``, ``ap_50``, ``map``, ``mar`` of pooled detections (scores (R,), matches (9, R) bool in
    pooled order), as MONAI's ``COCOMetric`` computes them (module docstring); NaN for ``num_gt`` 0."""
    if num_gt == 0:
        return np.full(_N_COCO, np.nan)
    n_thresholds, n_det = matches.shape
    if n_det == 0:  # MONAI: recall 0, precision 0 at every recall point
        return np.zeros(_N_COCO)
    # MONAI's float32 cumulative TP/FP counts (exact integers below 2**24 detections, so summed in float32 here)
    tp = np.cumsum(matches[:, np.argsort(-scores, kind="mergesort")], axis=1, dtype=np.float32)
    fp = np.arange(1, n_det + 1, dtype=np.float32) - tp
    precision = np.zeros((n_thresholds, _RECALL_POINTS.size))
    rc = tp / num_gt  # the same expressions (and dtypes) as MONAI's _compute_stats_single_threshold
    pr = (tp / (fp + tp + np.spacing(1))).astype(np.float64)
    envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(n_thresholds):
        idx = np.searchsorted(rc[t], _RECALL_POINTS, side="left")
        inside = idx < n_det
        precision[t, inside] = envelope[t, idx[inside]]
    ap = precision.mean(axis=1)
    return np.array([ap[_AP_ROWS[0]], ap[_AP_ROWS[1]], ap[_AP_ROWS[2]], precision.mean(),
                     rc[:, -1].astype(np.float64).mean()])


def scan_bootstrap_ci(runs: Sequence[ScanSet], *, n_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI over scans of the mean over ``runs`` of every ``LESION_COLUMNS`` metric.

    ``runs``: one :class:`ScanSet` per run, all over the same scans in the same order (``ValueError`` otherwise).
    Each resample draws ``n`` scan indices with replacement (the draws of ``bootstrap_scans_ci`` for the same
    seed); every run's metrics are computed on them and averaged over the runs (NaN runs skipped); resamples whose
    mean is NaN (no lesion drawn) are dropped for that metric (count logged); the CI is the ``np.percentile``
    ("linear") interval of the rest. Fewer than 2 scans or 2 finite resamples: ``(nan, nan)``.
    """
    nan_ci = {k: (float("nan"), float("nan")) for k in LESION_COLUMNS}
    if not runs:
        return nan_ci
    ids = runs[0].case_ids
    if any(r.case_ids != ids for r in runs[1:]):
        raise ValueError("scan_bootstrap_ci: every run must hold the same scans in the same order")
    n = len(ids)
    if n < 2:
        return nan_ci
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    values = np.array([[run.metrics(row) for run in runs] for row in draws])  # (resamples, runs, metrics)
    finite = ~np.isnan(values)
    counts = finite.sum(axis=1)
    means = np.where(counts > 0, np.where(finite, values, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, tuple[float, float]] = {}
    for j, key in enumerate(LESION_COLUMNS):
        kept = means[~np.isnan(means[:, j]), j]
        if kept.size < n_resamples:
            logger.info("scan_bootstrap_ci: %s: %d of %d resamples gave NaN and were dropped", key,
                        n_resamples - kept.size, n_resamples)
        if kept.size < 2:
            out[key] = (float("nan"), float("nan"))
            continue
        low, high = np.percentile(kept, [100 * alpha, 100 * (1 - alpha)])
        out[key] = (float(low), float(high))
    return out
