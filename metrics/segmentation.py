"""Per-case segmentation metrics over named regions and classes, and an accumulator over cases.

Keys of a case's metric dict (``spec`` = ``BRATS_SPEC`` unless given):
- for each region r (BraTS: wt, tc, et): ``dice_r``, ``hd95_r`` (mm; if ``include_hd95``),
  ``precision_r``, ``recall_r``;
- for each class c (BraTS: ncr, ed): ``dice_c``, ``precision_c``, ``recall_c``;
- ``dice_mean``: nanmean of the Dice values of ``spec.mean_regions`` (every region unless the spec names some;
  NaN if all are NaN).

Empty-mask rules: see ``metrics.surface.EMPTY_MASK_RULES`` (Dice NaN when both empty; HD95 the
image diagonal in mm when exactly one is empty). Aggregates are nanmeans with ``n_<metric>`` =
number of cases where the metric is not NaN.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

from .overlap import confusion_matrix, dice_from_counts, precision_recall_from_counts, region_counts
from .regions import BRATS_SPEC, MetricSpec
from .surface import region_hd95

logger = logging.getLogger(__name__)


def _to_numpy_labels(x: Any, name: str) -> np.ndarray:
    """Integer label map as numpy; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"{name} must be an integer label map, got dtype {a.dtype}")
    return a


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def case_metrics(pred_labels: Any, ref_labels: Any, spacing: float | Sequence[float],
                 spec: MetricSpec = BRATS_SPEC, *, include_hd95: bool = True,
                 image_shape: Sequence[int] | None = None) -> dict[str, float]:
    """Metrics of one case (see the module docstring for the keys and rules).

    Args:
        pred_labels: predicted internal label map (numpy array or torch tensor, integer, no channel).
        ref_labels: reference internal label map, same shape.
        spacing: mm per voxel along each array axis (HD95 only).
        spec: regions and classes to evaluate.
        include_hd95: compute ``hd95_<region>`` (the slow part).
        image_shape: original image shape when the maps are a crop (HD95 worst case = its diagonal).

    Raises:
        ValueError: if the shapes differ or a map is not integer-valued.
    """
    pred = _to_numpy_labels(pred_labels, "pred_labels")
    ref = _to_numpy_labels(ref_labels, "ref_labels")
    if pred.shape != ref.shape:
        raise ValueError(f"pred_labels and ref_labels must have the same shape, got {pred.shape} and {ref.shape}")
    groups = {**{f"region:{n}": m for n, m in spec.regions.items()},
              **{f"class:{n}": (label,) for n, label in spec.classes.items()}}
    counts = region_counts(pred, ref, groups)  # one pass over the joint non-zero box (metrics.overlap)
    hd = region_hd95(pred, ref, spec.regions, spacing, image_shape=image_shape) if include_hd95 else {}
    out: dict[str, float] = {}
    region_dice: list[float] = []
    for kind, names in (("region", spec.regions), ("class", spec.classes)):
        for name in names:
            tp_fp_fn = counts[f"{kind}:{name}"]
            out[f"dice_{name}"] = dice_from_counts(*tp_fp_fn)
            if kind == "region":
                if name in spec.mean_regions:
                    region_dice.append(out[f"dice_{name}"])
                if include_hd95:
                    out[f"hd95_{name}"] = hd[name]
            out[f"precision_{name}"], out[f"recall_{name}"] = precision_recall_from_counts(*tp_fp_fn)
    out["dice_mean"] = _nanmean(region_dice)
    return out


class SegmentationMetricAccumulator:
    """Collects per-case metrics and a voxel confusion matrix over a test set.

    Each ``case_id`` is counted once: a repeat (e.g. a padded ``DistributedSampler``) is ignored
    with a warning, keeping the first result. ``aggregate()`` gives the nanmean of every metric
    and ``n_<metric>`` = number of cases where it is not NaN.
    """

    def __init__(self, spec: MetricSpec = BRATS_SPEC, include_hd95: bool = True) -> None:
        self.spec = spec
        self.include_hd95 = include_hd95
        self.reset()

    def reset(self) -> None:
        """Forget every case and zero the confusion matrix."""
        self._cases: dict[str, dict[str, Any]] = {}
        self._confusion = np.zeros((self.spec.n_classes, self.spec.n_classes), dtype=np.int64)

    def update(self, pred_labels: Any, ref_labels: Any, spacing: float | Sequence[float],
               case_id: str, *, image_shape: Sequence[int] | None = None) -> dict[str, Any] | None:
        """Evaluate one case; returns its row (``case_id`` first), or ``None`` for a repeated id."""
        case_id = str(case_id)
        if case_id in self._cases:
            logger.warning("case %r seen again; keeping its first result (padded sampler?)", case_id)
            return None
        pred = _to_numpy_labels(pred_labels, "pred_labels")
        ref = _to_numpy_labels(ref_labels, "ref_labels")
        row: dict[str, Any] = {"case_id": case_id}
        row.update(case_metrics(pred, ref, spacing, self.spec, include_hd95=self.include_hd95,
                                image_shape=image_shape))
        self._confusion += confusion_matrix(pred, ref, self.spec.n_classes)
        self._cases[case_id] = row
        return row

    def per_case(self) -> list[dict[str, Any]]:
        """Per-case rows in the order first seen (copies)."""
        return [dict(row) for row in self._cases.values()]

    def aggregate(self) -> dict[str, float | int]:
        """Nanmean of each metric plus ``n_<metric>`` (non-NaN case count); ``n_cases`` = cases seen."""
        rows = list(self._cases.values())
        out: dict[str, float | int] = {"n_cases": len(rows)}
        if not rows:
            return out
        for key in (k for k in rows[0] if k != "case_id"):
            values = [float(r[key]) for r in rows]
            out[key] = _nanmean(values)
            out[f"n_{key}"] = sum(not math.isnan(v) for v in values)
        return out

    def share(self) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
        """Plain, picklable copy of the cases and confusion counts (to send to other ranks)."""
        return {k: dict(v) for k, v in self._cases.items()}, self._confusion.copy()

    def merge(self, shares: "list[tuple[dict[str, dict[str, Any]], np.ndarray]]",
              order: Sequence[str] | None = None) -> None:
        """Add the cases and confusion counts of other accumulators' :meth:`share` (e.g. other ranks' parts
        of one test set). With ``order`` (every case id), rows are put in that order, so aggregates equal
        those of one accumulator that saw the cases in that order. A case seen twice keeps its first row."""
        rows = dict(self._cases)
        for cases, confusion in shares:
            for case_id, row in cases.items():
                rows.setdefault(case_id, row)
            self._confusion = self._confusion + confusion
        if order is not None:
            position = {str(c): i for i, c in enumerate(order)}
            rows = dict(sorted(rows.items(), key=lambda item: position.get(item[0], len(position))))
        self._cases = rows

    @property
    def confusion_matrix(self) -> np.ndarray:
        """Summed voxel confusion matrix (rows = reference, cols = prediction), a copy."""
        return self._confusion.copy()
