"""Lesion-level metrics over whole cases, shared by every task of the lesion track.

A case's prediction becomes scored boxes (:class:`LesionPrediction`): a detector's own boxes, DetSeg3D's
RoIs, or the 26-connected components of a segmentation model's mask scored by their highest foreground
probability. Ground-truth lesions are the 26-connected components of the reference of at least
``min_lesion_size`` voxels (the same size rule for predicted components). Boxes are MONAI's
``[x1, y1, z1, x2, y2, z2]`` over array axes 0, 1, 2, max exclusive, in voxels of the cached case.

Per case: ``lesions``, ``lesions_found``, ``lesions_missed``, ``fp_components`` (predictions scored at
least ``score_threshold``, matched by the FROC hit rule) and ``n_pred_boxes``; the run's value of each
count is its sum over the cases. Per dataset: AP/mAP/mAR and FROC over every case (``metrics.detection``),
NaN when the cases hold no lesion, and what shows at once whether a detector proposes anything:
``proposals_mean`` (predicted boxes per case) and ``max_score`` (the highest confidence over the cases: the
prediction's ``peak_score`` where the model gives one, e.g. DetSeg3D's heatmap peak, else its highest box
score, 0 without boxes). Table ``boxes`` (:meth:`LesionAccumulator.tables`): each case's boxes, for the
scan bootstrap of those dataset-level metrics in the comparison statistics. Models that output a mask also get Dice, HD95 (mm), precision and
recall of the mask per case (``mask_spec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dataio.types import CachedCase
from metrics.detection import LESION_CASE_COLUMNS, LESION_COLUMNS, CaseBoxes, detection_metrics, lesion_counts
from metrics.lesion_bootstrap import box_rows
from metrics.lesions import HIT_RULES, boxes_from_mask, scored_components
from metrics.regions import MetricSpec
from metrics.segmentation import SegmentationMetricAccumulator

from engine.tasks.flags import TaskFlag
from engine.tasks.lesion_world import candidate_rows, world_fields

SUMMED_COLUMNS = (*LESION_CASE_COLUMNS, "n_pred_boxes")


@dataclass(frozen=True)
class LesionSettings:
    """How lesions are found and matched (sizes in voxels); see the module docstring."""

    min_size: int = 1
    hit_rule: str = "iou"
    iou_threshold: float = 0.1
    score_threshold: float = 0.5
    max_detections: int = 100

    @classmethod
    def of(cls, options: Any) -> "LesionSettings":
        """From the lesion flags (``LesionOptions`` or a config extending it; settings stay as they are);
        defaults when ``None``."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        return cls(min_size=int(options.min_lesion_size), hit_rule=str(options.lesion_hit or cls.hit_rule),
                   score_threshold=float(options.lesion_score_threshold))


# the flags of lesion matching (fields of engine.options.lesion_options.LesionOptions), owned by every lesion task
LESION_FLAGS: tuple[TaskFlag, ...] = (
    TaskFlag("min_lesion_size", LesionSettings.min_size, "smallest 26-connected component counted as a lesion, in the "
             "reference and in predictions", dict(type=int, metavar="VOXELS")),
    TaskFlag("lesion_hit", None, "when a prediction hits a lesion, for FROC and the per-case counts: iou = box IoU >= "
             "0.1, centre = the prediction's centre inside the lesion box, radius = LUNA16's rule, the prediction's "
             "centre (a component's centroid, a box's centre) closer than the nodule's radius in world mm",
             dict(choices=HIT_RULES), default_text="the dataset's rule: radius on luna16 and synthetic_luna, else iou"),
    TaskFlag("lesion_score_threshold", LesionSettings.score_threshold, "per-case lesion counts use predictions scored "
             "at least this; AP and FROC use all", dict(type=float)),
)


@dataclass
class LesionPrediction:
    """Scored boxes of one case (voxels of the cached case, descending score), with the foreground
    probability map (D, H, W) of models that output a mask."""

    boxes: np.ndarray
    scores: np.ndarray
    probability: np.ndarray | None = None
    peak_score: float | None = None  # highest confidence before any threshold (None: the highest box score)
    centres: np.ndarray | None = None  # (N, 3) voxel centre of each box's lesion (a mask component's centroid)

    def labels(self) -> np.ndarray | None:
        """The binary mask (probability >= 0.5) as uint8 labels, or ``None`` for box-only models."""
        return None if self.probability is None else (self.probability >= 0.5).astype(np.uint8)


def prediction_from_probability(probability: np.ndarray, mask: np.ndarray, min_size: int) -> LesionPrediction:
    """Scored boxes of a segmentation model: the components of its predicted ``mask`` (the two-class argmax;
    a voxel at probability exactly 0.5 is background, as argmax breaks ties to class 0), each scored by its
    highest foreground ``probability``."""
    boxes, scores, centres = scored_components(np.asarray(mask, dtype=bool), probability, min_size=min_size)
    return LesionPrediction(boxes=boxes, scores=scores, probability=probability, centres=centres)


class LesionAccumulator:
    """Per-case lesion rows and the dataset-level detection metrics (see the module docstring)."""

    def __init__(self, settings: LesionSettings, *, mask_spec: MetricSpec | None = None,
                 include_hd95: bool = False) -> None:
        self.settings = settings
        self.masks = SegmentationMetricAccumulator(mask_spec, include_hd95=include_hd95) if mask_spec else None
        self.cases: dict[str, CaseBoxes] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.peaks: dict[str, float] = {}  # each case's highest confidence (``max_score``)
        self.candidates: dict[str, list[dict[str, Any]]] = {}  # LUNA16 submission rows per scan (LUNA track)

    def update(self, case: CachedCase, prediction: LesionPrediction) -> None:
        """Add one labelled case."""
        if case.case_id in self.rows:
            return
        gt = boxes_from_mask(np.asarray(case.label) > 0, min_size=self.settings.min_size)
        world = None
        if self.settings.hit_rule == "radius" or case.findings is not None:
            world = world_fields(case, prediction.boxes, prediction.centres, self.settings.min_size)
        self.add_boxes(case.case_id, prediction.boxes, prediction.scores, gt, world=world)
        if case.findings is not None and world is not None:  # the LUNA16 track: its submission rows
            self.candidates[case.case_id] = candidate_rows(case.case_id, world["pred_centres"], prediction.scores)
        if prediction.peak_score is not None:
            self.peaks[case.case_id] = max(self.peaks[case.case_id], float(prediction.peak_score))
        labels = prediction.labels()
        if self.masks is not None and labels is not None:
            self.masks.update(labels, np.asarray(case.label, dtype=np.uint8), case.spacing, case.case_id,
                              image_shape=case.original_shape)

    def add_boxes(self, case_id: str, boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, *,
                  world: dict[str, np.ndarray] | None = None) -> None:
        """Add one case given as boxes (e.g. read from a JSON file of another tool); ``world``: the world-space
        fields of ``CaseBoxes`` (prediction centres, reference and excluded nodules) that the radius rule needs."""
        entry = CaseBoxes(case_id=case_id, pred_boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 6),
                          pred_scores=np.asarray(scores, dtype=np.float32).reshape(-1),
                          gt_boxes=np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 6), **(world or {}))
        s = self.settings
        counts = lesion_counts(entry, rule=s.hit_rule, iou_threshold=s.iou_threshold,
                               score_threshold=s.score_threshold)
        self.cases[case_id] = entry
        self.rows[case_id] = dict(case_id=case_id, **counts, n_pred_boxes=len(entry.pred_scores))
        self.peaks[case_id] = float(entry.pred_scores.max(initial=0.0))

    def per_case(self) -> list[dict[str, Any]]:
        masks = {r["case_id"]: r for r in self.masks.per_case()} if self.masks else {}
        return [dict(masks.get(case_id, {}), **row) for case_id, row in self.rows.items()]

    def aggregate(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.masks.aggregate()) if self.masks else {}
        out["n_cases"] = len(self.rows)
        for column in SUMMED_COLUMNS:
            out[column] = float(sum(row[column] for row in self.rows.values()))
        out["proposals_mean"] = out["n_pred_boxes"] / len(self.rows) if self.rows else float("nan")
        out["max_score"] = max(self.peaks.values(), default=float("nan"))
        s = self.settings
        out.update(detection_metrics(list(self.cases.values()), rule=s.hit_rule, iou_threshold=s.iou_threshold,
                                     max_detections=s.max_detections))
        return out

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """``boxes``: every case's scored predicted boxes and ground-truth boxes, one row each, plus one "case"
        row per case (so lesion-free cases without predictions still count as scans), in case order
        (``metrics.lesion_bootstrap.box_rows``); the comparison statistics bootstrap AP/FROC over these scans.
        Written by the test evaluation of a job (``experiment_runner.run_job`` writes ``test.all_tables()``;
        validation tables are not written)."""
        s = self.settings
        tables = {"boxes": box_rows(self.cases.values(), rule=s.hit_rule, iou_threshold=s.iou_threshold,
                                    max_detections=s.max_detections)}
        if self.candidates:  # LUNA16 track: the submission file of the run (``luna_candidates.csv``)
            tables["luna_candidates"] = [row for case_id in self.rows for row in self.candidates.get(case_id, [])]
        return tables

    def mean_loss(self) -> float | None:
        return None

    def share(self) -> tuple[Any, dict[str, CaseBoxes], dict[str, dict[str, Any]], dict[str, float], dict[str, Any]]:
        return ((self.masks.share() if self.masks else None), dict(self.cases), dict(self.rows), dict(self.peaks),
                dict(self.candidates))

    def merge(self, shares: list[tuple[Any, dict[str, CaseBoxes], dict[str, dict[str, Any]], dict[str, float],
                                      dict[str, Any]]],
              order: list[str]) -> None:
        if self.masks is not None:
            self.masks.merge([m for m, *_ in shares if m is not None], order=order)
        for _, cases, rows, peaks, candidates in shares:
            for case_id in cases:
                self.cases.setdefault(case_id, cases[case_id])
                self.rows.setdefault(case_id, rows[case_id])
                self.peaks.setdefault(case_id, peaks[case_id])
                if case_id in candidates:
                    self.candidates.setdefault(case_id, candidates[case_id])
        position = {c: i for i, c in enumerate(order)}
        key = lambda item: position.get(item[0], len(position))  # noqa: E731
        self.cases = dict(sorted(self.cases.items(), key=key))
        self.rows = dict(sorted(self.rows.items(), key=key))


LESION_RUN_COLUMNS: tuple[str, ...] = (*LESION_COLUMNS, *SUMMED_COLUMNS)
