"""Lesions as 3D connected components and their boxes: labelling, boxes, scores, IoU, hit rules, world mm.

Conventions (every function below):
- Connectivity: 26 (``STRUCTURE_26``, the 3x3x3 all-ones element); components are numbered 1..n in
  scan (C) order of their first voxel, as ``scipy.ndimage.label`` numbers them.
- Boxes: MONAI's ``StandardMode`` ``[x1, y1, z1, x2, y2, z2]`` over array axes 0, 1, 2 in voxel
  indices, max EXCLUSIVE: a single voxel at (10, 20, 30) is ``[10, 20, 30, 11, 21, 31]``; float32.
- IoU: ``monai.data.box_utils.box_iou`` (computed in float32, ``inter / (union + eps32)``).
- Hits: rule ``iou`` = IoU >= threshold; rule ``centre`` = the prediction box's centre lies in the
  lesion box, lower edge inclusive, upper edge exclusive.
- World boxes: voxel edges ``x1 - 0.5`` and ``x2 - 0.5`` (NIfTI voxel-centre coordinates: voxel i covers
  [i - 0.5, i + 0.5]) mapped by the 4x4 affine, then per-axis min/max of the 8 mapped corners, in mm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from .crop import foreground_box

logger = logging.getLogger(__name__)

STRUCTURE_26: np.ndarray = np.ones((3, 3, 3), dtype=bool)
HitRule = Literal["iou", "centre"]
HIT_RULES: tuple[str, ...] = ("iou", "centre")


def _as_mask3d(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {m.shape}")
    return m.astype(bool, copy=False)


def label_components(mask: np.ndarray, *, min_size: int = 1) -> tuple[np.ndarray, int]:
    """26-connected components of a 3D mask (non-zero = inside), smaller ones removed.

    Components with fewer than ``min_size`` voxels are dropped and the rest relabelled 1..n, keeping
    scipy's scan order. Returns ``(labels, n)`` with ``labels`` int32 of the mask's shape (0 = background).
    """
    m = _as_mask3d(mask)
    labels = np.zeros(m.shape, dtype=np.int32)
    local, n, box = _components_in_box(m, min_size)
    if box is not None:
        labels[box] = local
    return labels, n


def _components_in_box(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, int, tuple[slice, ...] | None]:
    """``(labels, n, box)``: components labelled inside the mask's bounding ``box`` only (None if empty).

    Hand-written around scipy because labelling a whole 240x240x155 volume for a few small lesions costs
    ~20x the box; the numbering is scipy's, since C order inside the box is C order of the volume.
    """
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1 voxel, got {min_size}")
    box = foreground_box(mask)
    if box is None:
        return np.zeros((0, 0, 0), dtype=np.int32), 0, None
    labels, n = ndimage.label(mask[box], structure=STRUCTURE_26)
    labels = labels.astype(np.int32, copy=False)
    if n == 0 or min_size == 1:
        return labels, int(n), box
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return remap[labels], int(keep.sum()), box


def boxes_from_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 6) float32 boxes of components 1..n of a label array (MONAI convention, max exclusive)."""
    if n == 0:
        return np.zeros((0, 6), dtype=np.float32)
    slices = ndimage.find_objects(np.asarray(labels), max_label=n)
    missing = [i + 1 for i, s in enumerate(slices) if s is None]
    if missing:
        raise ValueError(f"labels {missing[:5]} of 1..{n} do not occur in the label array")
    boxes = [[s.start for s in sl] + [s.stop for s in sl] for sl in slices]
    return np.asarray(boxes, dtype=np.float32).reshape(n, 6)


def boxes_from_mask(mask: np.ndarray, *, min_size: int = 1) -> np.ndarray:
    """(N, 6) float32 boxes of the 26-connected components of at least ``min_size`` voxels, in scan order;
    (0, 6) if none."""
    return scored_boxes(mask, min_size=min_size)[0]  # unscored: boxes stay in scan order


def scored_boxes(mask: np.ndarray, probability: np.ndarray | None = None, *,
                 min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of a predicted mask's components, each scored by the maximum probability inside it.

    Args:
        mask: predicted binary 3D mask.
        probability: foreground probability of the same shape; None scores every box 1.0.
        min_size: components with fewer voxels are not lesions.

    Returns:
        ``(boxes (N, 6) float32, scores (N,) float32)`` sorted by descending score (stable: ties keep
        scan order).
    """
    m = _as_mask3d(mask)
    prob = None if probability is None else np.asarray(probability)
    if prob is not None and prob.shape != m.shape:
        raise ValueError(f"probability shape {prob.shape} differs from mask shape {m.shape}")
    labels, n, box = _components_in_box(m, min_size)
    if n == 0 or box is None:
        return np.zeros((0, 6), dtype=np.float32), np.zeros(0, dtype=np.float32)
    offset = np.asarray([b.start for b in box] * 2, dtype=np.float32)
    boxes = boxes_from_labels(labels, n) + offset
    if prob is None:
        return boxes, np.ones(n, dtype=np.float32)
    inside = labels > 0  # the maximum over each component's own voxels (scipy would sort the whole box)
    scores = np.asarray(ndimage.maximum(prob[box][inside], labels[inside], index=np.arange(1, n + 1)),
                        dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def _as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float32)
    if b.size == 0:
        return b.reshape(0, 6)
    if b.ndim != 2 or b.shape[1] != 6:
        raise ValueError(f"{name} must have shape (N, 6) [x1, y1, z1, x2, y2, z2], got {b.shape}")
    return b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of boxes ``a`` (N, 6) and ``b`` (M, 6) by MONAI's ``box_iou`` (float32); empty in, empty out."""
    a, b = _as_boxes(a, "a"), _as_boxes(b, "b")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    from monai.data.box_utils import box_iou as monai_box_iou  # lazy: keeps importing this module light

    return np.asarray(monai_box_iou(a, b), dtype=np.float32)


def box_centres_in(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, M) bool: centre of ``pred[n]`` lies in ``gt[m]`` (lower edge inclusive, upper edge exclusive)."""
    # hand-written: MONAI's centers_in_boxes is one-to-one and demands a 0.01 margin from every edge
    p, g = _as_boxes(pred, "pred").astype(np.float64), _as_boxes(gt, "gt").astype(np.float64)
    centres = (p[:, None, :3] + p[:, None, 3:]) / 2.0
    return np.all((centres >= g[None, :, :3]) & (centres < g[None, :, 3:]), axis=-1)


def hits(pred_boxes: np.ndarray, gt_boxes: np.ndarray, *, rule: HitRule = "iou",
         iou_threshold: float = 0.1) -> np.ndarray:
    """(N, M) bool: prediction n hits lesion m (``iou``: IoU >= ``iou_threshold``; ``centre``: centre in box)."""
    if rule == "iou":
        return box_iou(pred_boxes, gt_boxes) >= iou_threshold
    if rule == "centre":
        return box_centres_in(pred_boxes, gt_boxes)
    raise ValueError(f"rule must be one of {HIT_RULES}, got {rule!r}")


def boxes_to_world(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(N, 6) float64 world boxes ``[xmin, ymin, zmin, xmax, ymax, zmax]`` in mm.

    The voxel-edge box ``[x1 - 0.5, x2 - 0.5]`` per axis (voxel index i covers [i - 0.5, i + 0.5] in
    NIfTI voxel-centre coordinates) has its 8 corners mapped by the 4x4 ``affine``; the result is their
    per-axis min/max (a rotated box becomes its axis-aligned hull).
    """
    # hand-written: MONAI's apply_affine_to_boxes maps only 2 of the 8 corners (wrong under rotation), in float32
    b = _as_boxes(boxes, "boxes").astype(np.float64)
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {aff.shape}")
    lo, hi = b[:, :3] - 0.5, b[:, 3:] - 0.5
    pick = np.array([[(k >> axis) & 1 for axis in range(3)] for k in range(8)], dtype=bool)  # (8, 3)
    corners = np.where(pick[None], hi[:, None, :], lo[:, None, :])  # (N, 8, 3)
    world = corners @ aff[:3, :3].T + aff[:3, 3]
    return np.concatenate([world.min(axis=1), world.max(axis=1)], axis=1).reshape(-1, 6)


@dataclass
class CaseBoxes:
    """One case's predicted boxes with scores and its ground-truth boxes (float32; empty: shape (0, 6))."""

    case_id: str
    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    gt_boxes: np.ndarray

    def __post_init__(self) -> None:
        self.pred_boxes = self._boxes(self.pred_boxes, "pred_boxes")
        self.gt_boxes = self._boxes(self.gt_boxes, "gt_boxes")
        self.pred_scores = np.asarray(self.pred_scores, dtype=np.float32).reshape(-1)
        if self.pred_scores.shape != (len(self.pred_boxes),):
            raise ValueError(f"case {self.case_id!r}: {len(self.pred_boxes)} pred_boxes but "
                             f"{self.pred_scores.size} pred_scores")
        if not np.all(np.isfinite(self.pred_scores)):
            raise ValueError(f"case {self.case_id!r}: pred_scores must be finite")

    def _boxes(self, boxes: np.ndarray, name: str) -> np.ndarray:
        return _as_boxes(boxes, f"case {self.case_id!r}: {name}")
