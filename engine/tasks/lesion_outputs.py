"""Write a lesion-track prediction in the image's original space: the mask (and probabilities) as NIfTI, and
the scored boxes as JSON and CSV in voxel and in world coordinates.

Boxes of the cached case are shifted by the case's crop start into voxel indices of the original image
(MONAI's ``[x1, y1, z1, x2, y2, z2]`` over array axes 0, 1, 2, max exclusive) and mapped to world
millimetres by the image's affine (``metrics.lesions.boxes_to_world``: the box's voxel edges, per-axis
min/max of its 8 mapped corners). ``{case}_boxes.json``: ``{"case_id", "box_convention", "boxes": [{rank,
score, voxel: [6], world_mm: [6]}]}``; ``{case}_boxes.csv``: one row per box with the same values.
Files: ``{case}.nii.gz`` (uint8 0/1, probability >= 0.5), ``{case}_probabilities.nii.gz`` (float32
foreground probability, 0 outside the crop) when asked, both with the original affine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataio.nifti_io import save_volume
from dataio.preprocess import paste_back
from dataio.types import CachedCase
from metrics.lesions import boxes_to_world
from utils.atomic import atomic_write_csv, atomic_write_json

from engine.tasks.lesion_metrics import LesionPrediction

BOX_CONVENTION = "[x1, y1, z1, x2, y2, z2] over array axes 0, 1, 2 of the original image, max exclusive"
CORNERS = ("x1", "y1", "z1", "x2", "y2", "z2")


def boxes_in_original_space(boxes: np.ndarray, case: CachedCase) -> np.ndarray:
    """Voxel boxes of the cached (cropped) case -> voxel boxes of the original image (float64 (N, 6))."""
    offset = np.asarray(list(case.crop.start) * 2, dtype=np.float64)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 6) + offset


def box_records(prediction: LesionPrediction, case: CachedCase) -> list[dict[str, Any]]:
    """One record per box (descending score): rank, score, voxel box and world box (mm)."""
    voxel = boxes_in_original_space(prediction.boxes, case)
    world = boxes_to_world(voxel, np.asarray(case.affine)) if len(voxel) else np.zeros((0, 6))
    return [dict(rank=i, score=float(s), voxel=[float(v) for v in vb], world_mm=[float(w) for w in wb])
            for i, (s, vb, wb) in enumerate(zip(prediction.scores, voxel, world))]


def save_boxes(case: CachedCase, prediction: LesionPrediction, out_dir: Path) -> list[Path]:
    """``{case}_boxes.json`` and ``{case}_boxes.csv`` (see the module docstring)."""
    records = box_records(prediction, case)
    json_path, csv_path = Path(out_dir) / f"{case.case_id}_boxes.json", Path(out_dir) / f"{case.case_id}_boxes.csv"
    atomic_write_json(json_path, dict(case_id=case.case_id, box_convention=BOX_CONVENTION,
                                      world_units="mm", boxes=records))
    rows = [dict(case_id=case.case_id, rank=r["rank"], score=r["score"],
                 **{f"voxel_{c}": v for c, v in zip(CORNERS, r["voxel"])},
                 **{f"world_{c}_mm": w for c, w in zip(CORNERS, r["world_mm"])}) for r in records]
    columns = ["case_id", "rank", "score", *[f"voxel_{c}" for c in CORNERS], *[f"world_{c}_mm" for c in CORNERS]]
    atomic_write_csv(csv_path, pd.DataFrame(rows, columns=columns))
    return [json_path, csv_path]


def save_lesion_prediction(case: CachedCase, prediction: LesionPrediction, out_dir: Path, *,
                           save_probabilities: bool = False) -> list[Path]:
    """The mask and probabilities (models with a mask) and the boxes of one case; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if prediction.probability is not None:
        mask = paste_back(prediction.labels(), case.crop, case.original_shape, fill=0)  # type: ignore[arg-type]
        save_volume(out_dir / f"{case.case_id}.nii.gz", mask.astype(np.uint8), case.affine)
        written.append(out_dir / f"{case.case_id}.nii.gz")
        if save_probabilities:
            full = paste_back(prediction.probability.astype(np.float32), case.crop, case.original_shape, fill=0.0)
            save_volume(out_dir / f"{case.case_id}_probabilities.nii.gz", full, case.affine)
            written.append(out_dir / f"{case.case_id}_probabilities.nii.gz")
    return written + save_boxes(case, prediction, out_dir)
