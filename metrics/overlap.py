"""Overlap metrics on boolean masks (pure numpy), with explicit empty-mask rules.

TP, FP, FN are voxel counts of ``pred & ref``, ``pred & ~ref``, ``~pred & ref``.

Empty-mask rules (the same for every model; see ``metrics.surface.EMPTY_MASK_RULES``):
- Dice: NaN when both masks are empty (nothing to find and nothing found: undefined, left out of
  nanmeans and counted in ``n_*``); 0 when exactly one is empty.
- Precision TP/(TP+FP): NaN when both are empty; 0 when the prediction is empty but the reference
  is not; 0 when the reference is empty but the prediction is not.
- Recall TP/(TP+FN): NaN whenever the reference is empty (undefined; false positives show in
  precision and Dice instead).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .crop import joint_label_crop, label_mask

_MAX_CODED_LABEL = 255  # region_counts codes (pred, ref) label pairs in one bincount up to this label


def _as_bool_pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred).astype(bool, copy=False)
    r = np.asarray(ref).astype(bool, copy=False)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref masks must have the same shape, got {p.shape} and {r.shape}")
    return p, r


def _counts(p: np.ndarray, r: np.ndarray) -> tuple[int, int, int]:
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def dice(pred: Any, ref: Any) -> float:
    """Dice = 2|P∩R| / (|P| + |R|); NaN when both masks are empty; 0 when exactly one is empty."""
    return dice_from_counts(*_counts(*_as_bool_pair(pred, ref)))


def region_counts(pred_labels: Any, ref_labels: Any,
                  regions: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, int, int]]:
    """(TP, FP, FN) voxel counts of each named region (a group of labels) of two integer label maps.

    Counted from one bincount of the (pred, ref) label pairs inside the joint non-zero box (speed: one
    pass instead of two masks per region; the counts are those of ``region_mask`` + ``dice``'s counting).

    Raises:
        ValueError: if the shapes differ or a map is not integer-valued.
    """
    pred, ref = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref label maps must have the same shape, got {pred.shape} and {ref.shape}")
    for name, a in (("pred_labels", pred), ("ref_labels", ref)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"{name} must be an integer label map, got dtype {a.dtype}")
    members = {name: tuple(int(x) for x in m) for name, m in regions.items()}
    p, r = joint_label_crop(pred, ref, [x for m in members.values() for x in m])
    lo = min(int(p.min()), int(r.min())) if p.size else 0
    k = max(int(p.max()), int(r.max())) + 1 if p.size else 1
    if lo < 0 or k > _MAX_CODED_LABEL + 1:  # unusual labels: one pair of masks per region instead
        return {name: _counts(label_mask(p, m), label_mask(r, m)) for name, m in members.items()}
    code_type = np.uint8 if k <= 16 else np.int32
    codes = p.astype(code_type) * code_type(k) + r.astype(code_type, copy=False)
    pair = np.bincount(codes.ravel(), minlength=k * k).reshape(k, k)  # [pred label, ref label]
    out: dict[str, tuple[int, int, int]] = {}
    for name, m in members.items():
        inside = np.zeros(k, dtype=bool)
        inside[[x for x in m if 0 <= x < k]] = True
        tp = int(pair[np.ix_(inside, inside)].sum())
        out[name] = (tp, int(pair[inside].sum()) - tp, int(pair[:, inside].sum()) - tp)
    return out


def region_dice(pred_labels: Any, ref_labels: Any, regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """``dice`` of each named region of two integer label maps, from ``region_counts`` (same rules)."""
    return {name: dice_from_counts(*c) for name, c in region_counts(pred_labels, ref_labels, regions).items()}


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return float("nan") if denom == 0 else 2.0 * tp / denom


def precision_recall(pred: Any, ref: Any) -> tuple[float, float]:
    """(precision, recall) = (TP/(TP+FP), TP/(TP+FN)).

    Both NaN when both masks are empty. Precision is 0 when the prediction is empty but the
    reference is not. Recall is NaN whenever the reference is empty (undefined; the false
    positives show in precision, which is then 0).
    """
    p, r = _as_bool_pair(pred, ref)
    return precision_recall_from_counts(*_counts(p, r))


def precision_recall_from_counts(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """:func:`precision_recall` from voxel counts (the same rules)."""
    n_ref, n_pred = tp + fn, tp + fp
    if n_ref == 0 and n_pred == 0:
        return float("nan"), float("nan")
    precision = 0.0 if n_pred == 0 else tp / n_pred
    recall = float("nan") if n_ref == 0 else tp / n_ref
    return float(precision), float(recall)


def confusion_matrix(pred_labels: Any, ref_labels: Any, n_classes: int) -> np.ndarray:
    """Voxel confusion matrix, shape (n_classes, n_classes), int64: rows = reference, cols = prediction.

    Raises:
        ValueError: if shapes differ, ``n_classes`` < 1, labels are not integers, or a label lies
            outside [0, n_classes).
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    p, r = np.asarray(pred_labels), np.asarray(ref_labels)
    if p.shape != r.shape:
        raise ValueError(f"pred_labels and ref_labels must have the same shape, got {p.shape} and {r.shape}")
    for name, a in (("pred_labels", p), ("ref_labels", r)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
        if a.size and (int(a.min()) < 0 or int(a.max()) >= n_classes):
            raise ValueError(f"{name} must lie in [0, {n_classes}), got range [{int(a.min())}, {int(a.max())}]")
    flat = r.astype(np.int64).ravel() * n_classes + p.astype(np.int64).ravel()
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.int64)
