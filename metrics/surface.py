"""Surface distance: HD95 in millimetres, with the empty-mask rule volbench applies to every model.

HD95 = max of the two directed 95th percentiles of the distances between the mask surfaces
(surface = mask minus its erosion; distances in mm with the voxel spacing honoured), computed by
MONAI's ``compute_hausdorff_distance(percentile=95)`` (``torch.quantile``, linear interpolation).

``EMPTY_MASK_RULES`` states every empty-mask rule of the overlap and surface metrics in one place,
so the README and reports can quote it.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

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
    """
    p = np.asarray(pred).astype(bool, copy=False)
    r = np.asarray(ref).astype(bool, copy=False)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref masks must have the same shape, got {p.shape} and {r.shape}")
    sp = _check_spacing(spacing, p.ndim)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return float("nan")
    if p_any != r_any:
        return worst_case_distance(tuple(image_shape) if image_shape is not None else p.shape, sp)
    import torch  # lazy: keeps ``import metrics`` numpy-only
    from monai.metrics import compute_hausdorff_distance

    y_pred = torch.from_numpy(np.ascontiguousarray(p))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(r))[None, None]
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        out = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                         spacing=[float(s) for s in sp])
    return float(out.reshape(-1)[0])
