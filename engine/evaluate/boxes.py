"""Score detections of another tool, given as boxes in a JSON file, with volbench's lesion metrics.

Input: ``{case_id: {"pred_boxes": [[x1, y1, z1, x2, y2, z2], ...], "pred_scores": [...], "gt_boxes": [[...],
...]}}``, boxes over array axes 0, 1, 2 in voxels, max exclusive (MONAI's convention; a single voxel at
(10, 20, 30) is ``[10, 20, 30, 11, 21, 31]``). A case may have no boxes (empty lists). Output: the metric
names of every volbench table (``ap_10`` ... ``froc_cpm``) at the top level, the summed per-case counts,
``n_cases``, the rules used, and ``per_case`` rows (lesions, found, missed, false positives). The boxes are scored
by the test accumulator of the task registry's box-file task (``engine.tasks.box_file_task``: detection), so
they get exactly the metrics of a detector's test cases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from engine.tasks import box_file_task
from engine.tasks.lesion_metrics import SUMMED_COLUMNS, LesionSettings
from engine.tasks.lesion_outputs import BOX_CONVENTION


def _boxes(value: Any, case_id: str, key: str, source: Path) -> np.ndarray:
    array = np.asarray(value if value is not None else [], dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 6), dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 6 or not np.isfinite(array).all():
        raise ValueError(f"{source}: case {case_id!r}: {key} must be a list of [x1, y1, z1, x2, y2, z2] boxes of "
                         f"finite numbers, got an array of shape {array.shape}")
    if (array[:, 3:] <= array[:, :3]).any():
        raise ValueError(f"{source}: case {case_id!r}: {key} holds a box whose max is not above its min "
                         f"(boxes are [x1, y1, z1, x2, y2, z2] with exclusive max)")
    return array.astype(np.float32)


def read_boxes_json(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The cases of a boxes JSON file, validated; ``ValueError`` naming the file, case and key otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--boxes_json {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--boxes_json {path}: expected an object {{case_id: {{pred_boxes, pred_scores, gt_boxes}}}}")
    cases = {}
    for case_id, entry in data.items():
        if not isinstance(entry, dict) or "gt_boxes" not in entry:
            raise ValueError(f"{path}: case {case_id!r} needs an object with gt_boxes (and pred_boxes, pred_scores)")
        pred = _boxes(entry.get("pred_boxes"), case_id, "pred_boxes", path)
        scores = np.asarray(entry.get("pred_scores") or [], dtype=np.float64).reshape(-1)
        if len(scores) != len(pred) or not np.isfinite(scores).all():
            raise ValueError(f"{path}: case {case_id!r}: {len(pred)} pred_boxes but {len(scores)} pred_scores "
                             "(one finite score per box)")
        cases[str(case_id)] = dict(pred_boxes=pred, pred_scores=scores.astype(np.float32),
                                   gt_boxes=_boxes(entry["gt_boxes"], case_id, "gt_boxes", path))
    return cases


def _plain(value: Any) -> Any:
    """JSON-safe number (NaN stays NaN, written as NaN by the JSON writer)."""
    return float(value) if isinstance(value, (float, np.floating)) else value


def evaluate_boxes_json(path: Path, settings: LesionSettings) -> dict[str, Any]:
    """Lesion metrics of the detections in ``path`` (see the module docstring)."""
    accumulator = box_file_task(settings).new_accumulator(stage="test")
    for case_id, entry in read_boxes_json(path).items():
        accumulator.add_boxes(case_id, entry["pred_boxes"], entry["pred_scores"], entry["gt_boxes"])
    per_case = accumulator.per_case()
    out: dict[str, Any] = {k: _plain(v) for k, v in accumulator.aggregate().items()}
    out.update(n_cases=len(per_case), source=str(path), box_convention=BOX_CONVENTION.replace(
        " of the original image", ""), hit_rule=settings.hit_rule, hit_iou=settings.iou_threshold,
        count_score_threshold=settings.score_threshold, summed=list(SUMMED_COLUMNS),
        no_lesion_rule="AP, mAR and FROC are NaN when no case holds a lesion",
        per_case=per_case)
    if all(math.isnan(out[k]) for k in ("map", "froc_cpm")):
        out["note"] = "no ground-truth lesion in any case"
    return out
