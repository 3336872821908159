"""Surface distance: HD95 in millimetres, with the empty-mask rule volbench applies to every model.

HD95 = max of the two directed 95th percentiles of the distances between the mask surfaces
(surface = mask minus its erosion by the 6-neighbour cross, the array border counting as background;
distances in mm between voxel centres with the voxel spacing honoured), as MONAI's
``compute_hausdorff_distance(percentile=95)`` defines it (``torch.quantile``, linear interpolation,
float32). ``metrics.surface_distance`` computes it exactly and faster (HD95 of a 240x240x155 case 27x
faster for a typical prediction, 9x for a poor one; ``benchmarks/bench_metrics.py``); the tests compare it
with MONAI.

``EMPTY_MASK_RULES`` states every empty-mask rule of the overlap and surface metrics in one place,
so the README and reports can quote it.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np

from .crop import foreground_box, hull, joint_label_crop, label_mask
from .surface_distance import percentile_hausdorff

logger = logging.getLogger(__name__)

EMPTY_MASK_RULES: Mapping[str, str] = {
    "dice": "NaN when prediction and reference are both empty (left out of means, see n_dice_*); "
            "0 when exactly one is empty.",
    "precision": "NaN when both are empty; 0 when the prediction is empty but the reference is not "
                 "(and 0 when only the prediction is non-empty, as TP = 0).",
    "recall": "NaN whenever the reference is empty (undefined; false positives show in precision and Dice).",
    "hd95": "NaN when both are empty; when exactly one is empty, the diagonal of the image extent in mm, "
            "sqrt(sum((shape * spacing)^2)) (legacy BraTS worst case, 373.13 mm for 240x240x155 at 1 mm), "
            "so a missed or hallucinated lesion is penalised, not dropped.",
}


def _check_spacing(spacing: float | Sequence[float], ndim: int) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.ndim == 0:
        sp = np.full(ndim, float(sp))
    if sp.shape != (ndim,):
        raise ValueError(f"spacing must give one value per array axis ({ndim}), got {tuple(np.ravel(spacing))}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be finite and > 0 mm, got {tuple(sp)}")
    return sp


def worst_case_distance(shape: Sequence[int], spacing: float | Sequence[float]) -> float:
    """Diagonal of the image extent in mm: sqrt(sum((shape * spacing)^2))."""
    sp = _check_spacing(spacing, len(shape))
    return float(math.sqrt(float(np.sum((np.asarray(shape, dtype=np.float64) * sp) ** 2))))


def hd95(pred: Any, ref: Any, spacing: float | Sequence[float] = 1.0, *,
         image_shape: Sequence[int] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between two boolean masks, in mm.

    Args:
        pred: predicted mask (2D or 3D, anything ``np.asarray`` takes; non-zero = inside).
        ref: reference mask of the same shape.
        spacing: mm per voxel along each array axis (one number = isotropic).
        image_shape: shape of the whole original image when the masks are a crop of it (the
            worst-case distance is then that image's diagonal, as for uncropped files).

    Returns:
        HD95 in mm; NaN when both masks are empty; ``worst_case_distance(shape, spacing)`` when
        exactly one is empty (see ``EMPTY_MASK_RULES["hd95"]``).

    Raises:
        ValueError: on differing shapes or a spacing that is not one positive value per axis.

    Computed by ``metrics.surface_distance.percentile_hausdorff`` (hand-written for speed; equal to
    MONAI's ``compute_hausdorff_distance(percentile=95)`` in float32, which the tests check).
    """
    p = np.asarray(pred).astype(bool, copy=False)
    r = np.asarray(ref).astype(bool, copy=False)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref masks must have the same shape, got {p.shape} and {r.shape}")
    sp = _check_spacing(spacing, p.ndim)
    box_p, box_r = foreground_box(p), foreground_box(r)
    if box_p is None and box_r is None:
        return float("nan")
    if box_p is None or box_r is None:
        return worst_case_distance(tuple(image_shape) if image_shape is not None else p.shape, sp)
    box = hull(box_p, box_r)
    return percentile_hausdorff(p[box], r[box], sp, 95.0)


def region_hd95(pred_labels: Any, ref_labels: Any, regions: Mapping[str, Sequence[int]],
                spacing: float | Sequence[float] = 1.0, *,
                image_shape: Sequence[int] | None = None) -> dict[str, float]:
    """``hd95`` (mm) of each named region (a group of labels) of two integer label maps.

    Both maps are cropped once to their joint non-zero box (speed; the values are those of ``hd95`` on
    the full region masks, the worst case still being the diagonal of ``image_shape`` or of the maps).

    Raises:
        ValueError: on differing shapes or a bad spacing (as ``hd95``).
    """
    pred, ref = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref label maps must have the same shape, got {pred.shape} and {ref.shape}")
    sp = _check_spacing(spacing, pred.ndim)
    shape = tuple(image_shape) if image_shape is not None else pred.shape
    members = {name: np.asarray(tuple(m), dtype=np.int64) for name, m in regions.items()}
    p_crop, r_crop = joint_label_crop(pred, ref, [int(x) for m in members.values() for x in m])
    return {name: hd95(label_mask(p_crop, m), label_mask(r_crop, m), sp, image_shape=shape)
            for name, m in members.items()}
