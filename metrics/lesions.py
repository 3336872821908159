"""Lesions as 3D connected components and their boxes: labelling, boxes, scores, IoU, hit rules, world mm.

Conventions (every function below):
- Connectivity: 26 (``STRUCTURE_26``, the 3x3x3 all-ones element); components are numbered 1..n in
  scan (C) order of their first voxel, as ``scipy.ndimage.label`` numbers them.
- Boxes: MONAI's ``StandardMode`` ``[x1, y1, z1, x2, y2, z2]`` over array axes 0, 1, 2 in voxel
  indices, max EXCLUSIVE: a single voxel at (10, 20, 30) is ``[10, 20, 30, 11, 21, 31]``; float32.
- IoU: ``monai.data.box_utils.box_iou`` (computed in float32, ``inter / (union + eps32)``).
- Hits: rule ``iou`` = IoU >= threshold; rule ``centre`` = the prediction box's centre lies in the
  lesion box, lower edge inclusive, upper edge exclusive; rule ``radius`` (LUNA16's) = the prediction's world
  centre lies strictly inside the reference sphere: squared distance (mm^2) < (diameter / 2)^2, a diameter
  below 0 counting as 10 mm (``LUNA_DEFAULT_DIAMETER_MM``). Under ``radius`` the references are
  ``CaseBoxes.gt_centres``/``gt_diameters`` and predictions that hit none of them but lie in an excluded
  finding (same test) are ignored (``case_ignored``): neither hits nor false positives.
- Voxel-centre coordinates (NIfTI): voxel index i is the centre of the voxel, which covers [i - 0.5, i + 0.5];
  ``voxel_to_world`` maps such points by the 4x4 affine (world = affine @ [i, j, k, 1], mm).
- World boxes: voxel edges ``x1 - 0.5`` and ``x2 - 0.5`` (NIfTI voxel-centre coordinates: voxel i covers
  [i - 0.5, i + 0.5]) mapped by the 4x4 affine, then per-axis min/max of the 8 mapped corners, in mm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

from .crop import foreground_box

logger = logging.getLogger(__name__)

STRUCTURE_26: np.ndarray = np.ones((3, 3, 3), dtype=bool)
HitRule = Literal["iou", "centre", "radius"]
HIT_RULES: tuple[str, ...] = ("iou", "centre", "radius")
LUNA_DEFAULT_DIAMETER_MM = 10.0  # LUNA16's script: a finding with a diameter below 0 counts as 10 mm


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
        scan order); ``scored_components`` without the centroids (skipped: they cost a pass over the mask box).
    """
    boxes, scores, _ = _scored(mask, probability, min_size, with_centroids=False)
    return boxes, scores


def scored_components(mask: np.ndarray, probability: np.ndarray | None = None, *,
                      min_size: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``scored_boxes`` plus each component's centroid: ``(boxes (N, 6) float32, scores (N,) float32,
    centroids (N, 3) float64)``, all in the same order (descending score, ties in scan order).

    A centroid is the mean voxel index of the component's voxels over array axes 0, 1, 2, in voxel-centre
    coordinates (index i = the voxel's centre; ``voxel_to_world`` maps it to mm), as
    ``scipy.ndimage.center_of_mass`` of the component computes it.
    """
    boxes, scores, centroids = _scored(mask, probability, min_size, with_centroids=True)
    return boxes, scores, np.zeros((len(boxes), 3)) if centroids is None else centroids


def _scored(mask: np.ndarray, probability: np.ndarray | None, min_size: int, *,
            with_centroids: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The one implementation of ``scored_boxes`` / ``scored_components`` (centroids None unless asked for)."""
    m = _as_mask3d(mask)
    prob = None if probability is None else np.asarray(probability)
    if prob is not None and prob.shape != m.shape:
        raise ValueError(f"probability shape {prob.shape} differs from mask shape {m.shape}")
    labels, n, box = _components_in_box(m, min_size)
    if n == 0 or box is None:
        return np.zeros((0, 6), dtype=np.float32), np.zeros(0, dtype=np.float32), np.zeros((0, 3))
    start = [b.start for b in box]
    boxes = boxes_from_labels(labels, n) + np.asarray(start * 2, dtype=np.float32)
    if prob is None and not with_centroids:
        return boxes, np.ones(n, dtype=np.float32), None
    inside = labels > 0  # statistics over each component's own voxels (scipy would sort the whole box)
    centroids = _centroids(labels, inside, n, start) if with_centroids else None
    if prob is None:
        return boxes, np.ones(n, dtype=np.float32), centroids
    scores = np.asarray(ndimage.maximum(prob[box][inside], labels[inside], index=np.arange(1, n + 1)),
                        dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], None if centroids is None else centroids[order]


def _centroids(labels: np.ndarray, inside: np.ndarray, n: int, start: list[int]) -> np.ndarray:
    """(n, 3) float64 mean volume index of components 1..n of ``labels`` (a box starting at ``start``).

    Sums of integer indices are exact in float64, so each mean is the correctly rounded exact mean.
    """
    lab = labels[inside]
    counts = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    coords = np.nonzero(inside)
    sums = [np.bincount(lab, weights=c.astype(np.float64) + s, minlength=n + 1)[1:]
            for c, s in zip(coords, start)]
    return np.stack(sums, axis=1) / counts[:, None]


def sphere_diameter_mm(n_voxels: int, spacing: Sequence[float]) -> float:
    """Diameter (mm) of the sphere whose volume is ``n_voxels * prod(spacing)`` mm^3.

    For datasets whose reference lesions are label components: the component's equivalent-sphere diameter
    ``cbrt(6 V / pi)`` serves as its ``radius``-rule diameter. ``spacing``: voxel size per axis, mm (> 0).
    """
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if n_voxels < 0 or sp.size == 0 or not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(f"sphere_diameter_mm needs n_voxels >= 0 and positive spacing, got {n_voxels}, {spacing}")
    return float(np.cbrt(6.0 * float(n_voxels) * float(np.prod(sp)) / np.pi))


def _as_rows(values: np.ndarray, width: int, dtype: type, name: str, what: str) -> np.ndarray:
    """``values`` as an (N, width) array of ``dtype`` ((0, width) when empty); ``ValueError`` naming it otherwise."""
    a = np.asarray(values, dtype=dtype)
    if a.size == 0:
        return a.reshape(0, width)
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}){what}, got {a.shape}")
    return a


def _as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    return _as_rows(boxes, 6, np.float32, name, " [x1, y1, z1, x2, y2, z2]")


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
    """(N, M) bool: prediction n hits lesion m (``iou``: IoU >= ``iou_threshold``; ``centre``: centre in box).

    Boxes only: rule ``radius`` compares world centres, see ``case_hits``.
    """
    if rule == "iou":
        return box_iou(pred_boxes, gt_boxes) >= iou_threshold
    if rule == "centre":
        return box_centres_in(pred_boxes, gt_boxes)
    if rule == "radius":
        raise ValueError("rule 'radius' compares world centres with reference spheres, not boxes: "
                         "use case_hits (or radius_hits)")
    raise ValueError(f"rule must be one of {HIT_RULES}, got {rule!r}")


def radius_hits(points: np.ndarray, centres: np.ndarray, diameters: np.ndarray) -> np.ndarray:
    """(N, M) bool: point n lies strictly inside sphere m (LUNA16's test, world mm).

    Squared distance ``dx*dx + dy*dy + dz*dz < (d / 2)^2`` in float64, as the script computes it; a diameter
    ``d`` below 0 counts as ``LUNA_DEFAULT_DIAMETER_MM``. A point exactly on the sphere misses.
    """
    p = _as_points(points, "points")
    c = _as_points(centres, "centres")
    d = np.asarray(diameters, dtype=np.float64).reshape(-1)
    if d.shape != (len(c),):
        raise ValueError(f"{len(c)} centres but {d.size} diameters")
    d = np.where(d < 0.0, LUNA_DEFAULT_DIAMETER_MM, d)
    delta = p[:, None, :] - c[None, :, :]
    dist2 = delta[..., 0] * delta[..., 0] + delta[..., 1] * delta[..., 1] + delta[..., 2] * delta[..., 2]
    return dist2 < ((d / 2.0) * (d / 2.0))[None, :]


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    return _as_rows(points, 3, np.float64, name, "")


def voxel_to_world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(N, 3) float64 world mm of voxel-centre points (N, 3): ``affine @ [i, j, k, 1]``.

    NIfTI voxel-centre convention: index i is the centre of voxel i (which covers [i - 0.5, i + 0.5]); points
    may be fractional (centroids, box centres).
    """
    p = _as_points(points, "points")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {aff.shape}")
    return p @ aff[:3, :3].T + aff[:3, 3]


def box_centres(boxes: np.ndarray) -> np.ndarray:
    """(N, 3) float64 centre of each box in voxel-centre coordinates: ``(x1 + x2 - 1) / 2`` per axis.

    A box ``[x1, x2)`` (max exclusive) holds voxels x1 .. x2 - 1, whose centres sit at those indices; its
    edges are ``x1 - 0.5`` and ``x2 - 0.5`` (as ``boxes_to_world`` maps them), so its centre is their midpoint
    ``(x1 + x2 - 1) / 2`` (a single voxel ``[10, 11)``: 10). It is the point ``box_centres_in`` tests,
    ``(x1 + x2) / 2`` in box (edge) coordinates, less the half voxel; ``voxel_to_world`` of it is the centre of
    ``boxes_to_world`` under any affine.
    """
    b = _as_boxes(boxes, "boxes").astype(np.float64)
    return (b[:, :3] + b[:, 3:] - 1.0) / 2.0


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
    """One case's predictions and references.

    Boxes (voxels, float32; empty: shape (0, 6)) and scores feed AP/mAR (always IoU on boxes) and the ``iou`` /
    ``centre`` hit rules. The optional fields (None = not given; float64 world mm) feed rule ``radius``:
    ``pred_centres`` (N, 3), one per predicted box; ``gt_centres`` (M, 3) and ``gt_diameters`` (M,), the
    reference lesions of FROC and the per-case counts under ``radius`` (M may differ from ``len(gt_boxes)``);
    ``excluded_centres`` (K, 3) and ``excluded_diameters`` (K,), findings whose marks are ignored. Centres and
    diameters come in pairs (both or neither); diameters below 0 count as 10 mm at hit time (stored as given).
    """

    case_id: str
    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    gt_boxes: np.ndarray
    pred_centres: np.ndarray | None = None
    gt_centres: np.ndarray | None = None
    gt_diameters: np.ndarray | None = None
    excluded_centres: np.ndarray | None = None
    excluded_diameters: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.pred_boxes = self._boxes(self.pred_boxes, "pred_boxes")
        self.gt_boxes = self._boxes(self.gt_boxes, "gt_boxes")
        self.pred_scores = np.asarray(self.pred_scores, dtype=np.float32).reshape(-1)
        if self.pred_scores.shape != (len(self.pred_boxes),):
            raise ValueError(f"case {self.case_id!r}: {len(self.pred_boxes)} pred_boxes but "
                             f"{self.pred_scores.size} pred_scores")
        if not np.all(np.isfinite(self.pred_scores)):
            raise ValueError(f"case {self.case_id!r}: pred_scores must be finite")
        if self.pred_centres is not None:
            self.pred_centres = self._points(self.pred_centres, "pred_centres", len(self.pred_boxes))
        self.gt_centres, self.gt_diameters = self._spheres(self.gt_centres, self.gt_diameters, "gt")
        self.excluded_centres, self.excluded_diameters = self._spheres(
            self.excluded_centres, self.excluded_diameters, "excluded")

    def _boxes(self, boxes: np.ndarray, name: str) -> np.ndarray:
        return _as_boxes(boxes, f"case {self.case_id!r}: {name}")

    def _points(self, points: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
        p = _as_points(points, f"case {self.case_id!r}: {name}")
        if n is not None and len(p) != n:
            raise ValueError(f"case {self.case_id!r}: {name} has {len(p)} rows, expected {n}")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"case {self.case_id!r}: {name} must be finite")
        return p

    def _spheres(self, centres: np.ndarray | None, diameters: np.ndarray | None,
                 prefix: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        if centres is None and diameters is None:
            return None, None
        if centres is None or diameters is None:
            raise ValueError(f"case {self.case_id!r}: {prefix}_centres and {prefix}_diameters come together")
        c = self._points(centres, f"{prefix}_centres")
        d = np.asarray(diameters, dtype=np.float64).reshape(-1)
        if d.shape != (len(c),) or not np.all(np.isfinite(d)):
            raise ValueError(f"case {self.case_id!r}: {prefix}_diameters must be {len(c)} finite values "
                             f"(one per centre), got shape {d.shape}")
        return c, d


def _radius_inputs(case: CaseBoxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred_centres, gt_centres, gt_diameters)`` of a case under rule ``radius``; ValueError when missing."""
    if case.gt_centres is None or case.gt_diameters is None:
        raise ValueError(f"case {case.case_id!r}: rule 'radius' needs gt_centres and gt_diameters (world mm); "
                         "this case has none")
    if case.pred_centres is None:
        if len(case.pred_boxes):
            raise ValueError(f"case {case.case_id!r}: rule 'radius' needs pred_centres (world mm) for its "
                             f"{len(case.pred_boxes)} predictions; this case has none")
        return np.zeros((0, 3)), case.gt_centres, case.gt_diameters
    return case.pred_centres, case.gt_centres, case.gt_diameters


def case_hits(case: CaseBoxes, *, rule: HitRule = "iou", iou_threshold: float = 0.1) -> np.ndarray:
    """(N, M) bool: prediction n of ``case`` hits reference lesion m under ``rule``.

    ``iou``/``centre``: ``hits`` of the boxes (M = ``len(gt_boxes)``); ``radius``: ``radius_hits`` of
    ``pred_centres`` against (``gt_centres``, ``gt_diameters``) (M = ``len(gt_centres)``).
    """
    if rule == "radius":
        return radius_hits(*_radius_inputs(case))
    return hits(case.pred_boxes, case.gt_boxes, rule=rule, iou_threshold=iou_threshold)


def case_ignored(case: CaseBoxes, *, rule: HitRule = "iou") -> np.ndarray:
    """(N,) bool: predictions that count neither as hits nor as false positives.

    Under ``radius``: those hitting no reference lesion but lying inside an excluded finding (the same radius
    test; LUNA16 deletes them from the candidate list). Under ``iou``/``centre``: none.
    """
    n = len(case.pred_boxes)
    if rule != "radius":
        if rule not in HIT_RULES:
            raise ValueError(f"rule must be one of {HIT_RULES}, got {rule!r}")
        return np.zeros(n, dtype=bool)
    points, centres, diameters = _radius_inputs(case)
    if case.excluded_centres is None or case.excluded_diameters is None or n == 0:
        return np.zeros(n, dtype=bool)
    on_excluded = radius_hits(points, case.excluded_centres, case.excluded_diameters).any(axis=1)
    return on_excluded & ~radius_hits(points, centres, diameters).any(axis=1)
