"""Lesions in world millimetres, for LUNA16's radius rule (``--lesion_hit radius``) and its submission files.

Coordinates: volbench's world frame is the cached case's affine (NIfTI-style RAS, mm) applied to voxel indices
of the original image (voxel-centre convention: index i is the voxel's centre); a cached case's voxel v is
original voxel ``v + crop.start``.

- Reference nodules: the case's annotation rows (``CachedCase.findings``: centre and diameter, excluded findings
  apart) where the dataset has them (LUNA16); otherwise the 26-connected components of the label of at least
  ``min_size`` voxels, each centred on its centroid with the diameter of the sphere of its volume.
- Prediction centres: a mask component's centroid (``LesionPrediction.centres``), else a box's centre.
- Submission rows (``luna_candidates.csv``): LUNA16's ``seriesuid,coordX,coordY,coordZ,probability`` in its
  LPS world frame (x and y negated from RAS), one row per predicted box.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scipy import ndimage

from dataio.luna16 import ras_to_lps
from dataio.types import CachedCase
from metrics.lesions import box_centres, label_components, sphere_diameter_mm, voxel_to_world


def _to_world(case: CachedCase, voxels: np.ndarray) -> np.ndarray:
    """(N, 3) voxel indices of the cached case -> (N, 3) world mm (float64)."""
    points = np.asarray(voxels, dtype=np.float64).reshape(-1, 3) + np.asarray(case.crop.start, dtype=np.float64)
    return voxel_to_world(points, np.asarray(case.affine, dtype=np.float64)) if len(points) else np.zeros((0, 3))


def _findings(case: CachedCase, excluded: bool) -> tuple[np.ndarray, np.ndarray]:
    rows = [f for f in case.findings or () if bool(f.excluded) == excluded]
    centres = np.asarray([f.centre_ras_mm for f in rows], dtype=np.float64).reshape(-1, 3)
    return centres, np.asarray([f.diameter_mm for f in rows], dtype=np.float64)


def _component_references(case: CachedCase, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres (world mm) and sphere-equivalent diameters (mm) of the label's components."""
    labels, n = label_components(np.asarray(case.label) > 0, min_size=min_size)
    if n == 0:
        return np.zeros((0, 3)), np.zeros(0)
    index = np.arange(1, n + 1)
    centroids = np.asarray(ndimage.center_of_mass(labels > 0, labels, index), dtype=np.float64).reshape(n, 3)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    diameters = np.asarray([sphere_diameter_mm(int(n), case.spacing) for n in sizes], dtype=np.float64)
    return _to_world(case, centroids), diameters


def world_fields(case: CachedCase, boxes: np.ndarray, centres: np.ndarray | None,
                 min_size: int) -> dict[str, np.ndarray]:
    """The world-space fields of ``metrics.lesions.CaseBoxes`` for one case's predicted ``boxes`` (voxels of the
    cached case) with their ``centres`` (voxels; None: the boxes' centres); see the module docstring."""
    if case.findings is not None:
        gt_centres, gt_diameters = _findings(case, excluded=False)
        excluded_centres, excluded_diameters = _findings(case, excluded=True)
    else:
        gt_centres, gt_diameters = _component_references(case, min_size)
        excluded_centres, excluded_diameters = np.zeros((0, 3)), np.zeros(0)
    centres = box_centres(boxes) if centres is None else centres
    return dict(pred_centres=_to_world(case, centres), gt_centres=gt_centres, gt_diameters=gt_diameters,
                excluded_centres=excluded_centres, excluded_diameters=excluded_diameters)


def candidate_rows(case_id: str, pred_centres_ras: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """LUNA16 submission rows of one scan (LPS mm), in the order of the predictions."""
    lps = ras_to_lps(np.asarray(pred_centres_ras, dtype=np.float64).reshape(-1, 3))
    return [dict(seriesuid=case_id, coordX=float(x), coordY=float(y), coordZ=float(z), probability=float(p))
            for (x, y, z), p in zip(lps, np.asarray(scores, dtype=np.float64))]
