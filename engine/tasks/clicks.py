"""Simulated clicks for the interactive evaluation of promptable models (pure NumPy/SciPy).

Volumes are boolean arrays ``(D, H, W)``; a click's ``position`` is a voxel index on array axes 0, 1, 2 and
``spacing`` is the voxel size in mm along the same axes. Error regions of a prediction ``previous``:
FN = target and not previous (a positive click corrects it), FP = previous and not target (a negative one).
Before any prediction (``previous`` None) FN is the whole target and FP is empty.

Rules (``mode``):

- ``random`` (SAM-Med3D's evaluation): a voxel drawn uniformly from FN u FP (the first click: from the target),
  positive if it lies in FN.
- ``center`` (deterministic): the 26-connected components of FN and of FP are labelled separately; the largest
  by voxel count is chosen (ties: FN before FP, then the lower label, i.e. the component whose first voxel in
  C order comes first). In it, the voxel farthest, in mm, from the component's boundary: the Euclidean distance
  transform of the component (``sampling=spacing``) on its bounding box padded by one background voxel, so
  voxels outside the component and outside the volume both count as boundary. Distance ties (within a relative
  1e-9, float rounding) go to the lowest flat C-order index of the volume.

Either rule gives None when FN and FP are both empty (a perfect prediction, or an empty target and no FP).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

CLICK_MODES: tuple[str, ...] = ("random", "center")
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_TIE_TOLERANCE = 1e-9  # relative: distances this close to the largest are a tie


@dataclass(frozen=True)
class Click:
    """One simulated click: ``position`` (array axes 0, 1, 2, voxels) and its sign (True: foreground)."""

    position: tuple[int, int, int]
    positive: bool


def click_rng(seed: int, case_id: str, target: str) -> np.random.Generator:
    """Generator for one case's and one target's clicks: seeded by the run ``seed`` (>= 0) and an 8-byte
    BLAKE2b digest of ``case_id`` and ``target`` (stable across processes, unlike Python's salted ``hash``)."""
    if seed < 0:
        raise ValueError(f"click_rng: seed must be >= 0, got {seed}")
    digest = hashlib.blake2b(f"{case_id}\0{target}".encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest, "little")])


def error_regions(target: np.ndarray, previous: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(FN, FP)`` boolean masks of ``previous`` against ``target`` (``previous`` None: the target and nothing)."""
    if previous is None:
        return target, np.zeros_like(target)
    return target & ~previous, previous & ~target


def next_click(target: np.ndarray, previous: np.ndarray | None = None, *, mode: str = "random",
               rng: np.random.Generator | None = None,
               spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Click | None:
    """The next click on ``target`` (bool ``(D, H, W)``) given the prediction ``previous`` (same shape, or None
    before the first click); rules in the module docstring. ``rng`` is required by ``random``, unused by
    ``center``; ``spacing`` (mm per voxel, axes 0, 1, 2) is used by ``center``.

    Raises:
        ValueError: a mask that is not 3D, shapes that differ, an unknown mode, ``random`` without ``rng``, or a
            spacing that is not 3 positive numbers.
    """
    target = _as_mask(target, "target")
    if previous is not None:
        previous = _as_mask(previous, "previous")
        if previous.shape != target.shape:
            raise ValueError(f"next_click: previous has shape {previous.shape}, target {target.shape}")
    if mode not in CLICK_MODES:
        raise ValueError(f"next_click: mode {mode!r} is not one of {CLICK_MODES}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"next_click: spacing must be 3 positive mm values, got {spacing}")
    fn, fp = error_regions(target, previous)
    if mode == "random":
        if rng is None:
            raise ValueError("next_click: mode 'random' needs rng (e.g. click_rng(seed, case_id, target))")
        return _random_click(fn, fp, rng)
    return _center_click(fn, fp, spacing)


def _as_mask(array: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(array).astype(bool, copy=False)
    if mask.ndim != 3:
        raise ValueError(f"next_click: {name} must be a 3D (D, H, W) mask, got shape {mask.shape}")
    return mask


def _random_click(fn: np.ndarray, fp: np.ndarray, rng: np.random.Generator) -> Click | None:
    """A voxel uniform over FN u FP, positive if in FN."""
    candidates = np.flatnonzero(fn | fp)
    if candidates.size == 0:
        return None
    flat = int(candidates[rng.integers(candidates.size)])
    position = tuple(int(i) for i in np.unravel_index(flat, fn.shape))
    return Click(position=position, positive=bool(fn.flat[flat]))  # type: ignore[arg-type]


def _center_click(fn: np.ndarray, fp: np.ndarray, spacing: tuple[float, ...]) -> Click | None:
    """The deepest voxel of the largest error component (rule in the module docstring)."""
    best: tuple[int, int, int] | None = None  # (-size, kind: 0 FN / 1 FP, label)
    labelled = []
    for kind, region in enumerate((fn, fp)):
        labels, count = ndimage.label(region, structure=_CONNECTIVITY_26)
        labelled.append(labels)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        label = int(np.argmax(sizes)) + 1  # argmax: the lowest label among the largest
        key = (-int(sizes[label - 1]), kind, label)
        best = key if best is None or key < best else best
    if best is None:
        return None
    _, kind, label = best
    return Click(position=_deepest_voxel(labelled[kind] == label, spacing), positive=kind == 0)


def _deepest_voxel(component: np.ndarray, spacing: tuple[float, ...]) -> tuple[int, int, int]:
    """Voxel of ``component`` farthest (mm) from anything outside it, the volume's outside included; ties to
    the lowest flat C-order index (C order within the bounding box is the volume's C order)."""
    box = ndimage.find_objects(component.astype(np.int8))[0]
    crop = np.pad(component[box], 1, constant_values=False)
    depth = ndimage.distance_transform_edt(crop, sampling=spacing)
    deepest = depth.max()
    flat = int(np.flatnonzero(depth >= deepest * (1.0 - _TIE_TOLERANCE))[0])
    local = np.unravel_index(flat, crop.shape)
    return tuple(int(i) - 1 + s.start for i, s in zip(local, box))  # type: ignore[return-value]
