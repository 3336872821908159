"""Bounding boxes of the foreground: metrics on large, mostly empty volumes run inside the joint box.

Every count and surface distance volbench computes is unchanged by cropping both maps to the box of
their non-zero voxels (outside it both are background), so the metrics crop first (speed).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def foreground_box(*arrays: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box (one slice per axis) holding every non-zero voxel of the arrays; None if all are zero.

    The arrays must share one shape (at least 1D). The box of a union is the hull of the boxes, so each
    array is scanned on its own (no temporary union array).
    """
    return hull(*(_box(_unsigned(a)) for a in arrays))


def hull(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box holding every given box (None entries are empty boxes; all None gives None)."""
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    return tuple(slice(min(b[i].start for b in present), max(b[i].stop for b in present))
                 for i in range(len(present[0])))


def joint_label_crop(pred_labels: np.ndarray, ref_labels: np.ndarray,
                     members: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Both label maps cropped to their joint non-zero box (views; zero-sized when both are all 0), or
    uncropped when ``members`` (the labels of the regions to evaluate) hold 0, as background then counts."""
    if any(int(m) == 0 for m in members):
        return pred_labels, ref_labels
    box = foreground_box(pred_labels, ref_labels)
    if box is None:
        box = (slice(0, 0),) * pred_labels.ndim
    return pred_labels[box], ref_labels[box]


def _unsigned(a: np.ndarray) -> np.ndarray:
    """C-contiguous unsigned view with the same non-zero voxels (bool and signed ints are reinterpreted)."""
    a = np.ascontiguousarray(a)
    if a.ndim == 0:
        raise ValueError("foreground_box needs arrays of at least one dimension")
    if a.dtype == bool:
        return a.view(np.uint8)
    if a.dtype.kind == "i":
        return a.view(a.dtype.str.replace("i", "u"))
    return a if a.dtype.kind == "u" else (a != 0).view(np.uint8)


def _box(m: np.ndarray) -> tuple[slice, ...] | None:
    """Box of the non-zero voxels of a C-contiguous unsigned array: axis 0 from the maximum of each
    slab, then the other axes from the elementwise maximum over the occupied slabs (vectorised passes)."""
    if m.size == 0:
        return None
    hit = np.flatnonzero(m.reshape(m.shape[0], -1).max(axis=1) if m.ndim > 1 else m)
    if hit.size == 0:
        return None
    lo, hi = int(hit[0]), int(hit[-1]) + 1
    if m.ndim == 1:
        return (slice(lo, hi),)
    rest = _box(m[lo:hi].max(axis=0))
    return None if rest is None else (slice(lo, hi),) + rest


def label_mask(labels: np.ndarray, members: Iterable[int]) -> np.ndarray:
    """Boolean mask of the voxels whose label is in ``members``, as ``np.isin`` but faster: one shift of a
    bit set for uint8 maps and labels < 8 (~10x), else a few comparisons (~4x), else ``np.isin``."""
    wanted = sorted({int(m) for m in members})
    if labels.dtype == np.uint8 and wanted and 0 <= wanted[0] and wanted[-1] < 8:
        bits = np.uint8(sum(1 << m for m in wanted))
        return (np.right_shift(bits, labels) & np.uint8(1)).view(bool)  # shifts >= 8 give 0
    if 0 < len(wanted) <= 4 and np.issubdtype(labels.dtype, np.integer):
        out = labels == wanted[0]
        for m in wanted[1:]:
            out |= labels == m
        return out
    return np.isin(labels, np.asarray(wanted, dtype=np.int64))
