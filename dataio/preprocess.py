"""Preprocessing of one case: load, validate, normalise per modality, crop to the brain, map labels.

Normalisation (per modality, over that modality's non-zero voxels only): clip to the given percentiles,
then z-score (mean 0, std 1 over those voxels); voxels that are 0 on disk stay 0. Hand-written in numpy
because MONAI's percentile clipping counts the background voxels, which would move the percentiles.
The crop is the bounding box of the brain mask = union of non-zero voxels over all modalities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .conventions import to_internal
from .input_errors import map_all, raise_if_any
from .nifti_io import load_label, load_volume
from .types import MODALITY_ORDER, CachedCase, CaseFiles, CropBox

logger = logging.getLogger(__name__)

AFFINE_TOLERANCE = 1e-3


def _load_modalities(case: CaseFiles) -> tuple[list[np.ndarray], list[Path], np.ndarray, tuple[float, ...]]:
    """Arrays in MODALITY_ORDER, the file of each, the affine and spacing; checks shapes and affines agree."""
    if case.image_4d is not None:
        data, affine, spacing = load_volume(case.image_4d)
        missing = [m for m in MODALITY_ORDER if m not in case.channel_order]
        if data.ndim != 4 or data.shape[3] != len(case.channel_order) or missing:
            raise ValueError(f"case {case.case_id}: 4D image {case.image_4d} has shape {data.shape}; expected "
                             f"(X, Y, Z, {len(case.channel_order)}) with channels {case.channel_order} "
                             f"covering {MODALITY_ORDER}")
        arrays = [np.ascontiguousarray(data[..., case.channel_order.index(m)]) for m in MODALITY_ORDER]
        return arrays, [case.image_4d] * len(arrays), affine, spacing
    missing = [m for m in MODALITY_ORDER if m not in case.images]
    if missing:
        raise ValueError(f"case {case.case_id}: no image file for modalities {missing}")
    files = [case.images[m] for m in MODALITY_ORDER]
    loaded = map_all(load_volume, files)  # every unreadable modality file of the case at once
    arrays = [data for data, _, _ in loaded]
    for path, (data, aff, _) in zip(files, loaded):
        if data.ndim != 3:
            raise ValueError(f"case {case.case_id}: {path} has shape {data.shape}; expected 3D")
        _check_same_grid(case, [files[0], path], [arrays[0], data], loaded[0][1], aff)
    _, affine, spacing = loaded[0]
    return arrays, files, affine, spacing


def _check_finite(arrays: list[np.ndarray], files: list[Path]) -> None:
    """Every voxel must be finite: one problem per file holding NaN or infinite values."""
    bad: dict[Path, int] = {}  # a 4D file (MSD) holds every modality: its counts add up
    for array, path in zip(arrays, files):
        bad[path] = bad.get(path, 0) + array.size - int(np.count_nonzero(np.isfinite(array)))
    raise_if_any([f"image {path} holds {n} NaN or infinite voxel(s)" for path, n in bad.items() if n])


def _check_same_grid(case: CaseFiles, files: list[Path], arrays: list[np.ndarray], ref_affine: np.ndarray,
                     affine: np.ndarray) -> None:
    """``arrays[-1]`` (from ``files[-1]``) must match ``arrays[0]`` in shape and affine (within 1e-3)."""
    if arrays[-1].shape != arrays[0].shape:
        raise ValueError(f"case {case.case_id}: {files[-1]} has shape {arrays[-1].shape} but {files[0]} has "
                         f"{arrays[0].shape}; all images and the label must share one voxel grid")
    if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE, rtol=0.0):
        raise ValueError(f"case {case.case_id}: affine of {files[-1]} differs from that of {files[0]} by more "
                         f"than {AFFINE_TOLERANCE}:\n{affine}\nvs\n{ref_affine}")


def normalise_nonzero(volume: np.ndarray, clip_percentiles: tuple[float, float]) -> np.ndarray:
    """Clip the non-zero voxels to the percentiles and z-score them; zero voxels stay 0 (float32)."""
    out = np.zeros(volume.shape, dtype=np.float32)
    inside = volume != 0
    if not inside.any():
        return out
    values = volume[inside].astype(np.float64)
    lo, hi = np.percentile(values, clip_percentiles)
    values = np.clip(values, lo, hi)
    std = values.std()
    out[inside] = (values - values.mean()) / (std if std > 0 else 1.0)
    return out


def brain_crop(mask: np.ndarray) -> CropBox:
    """Bounding box of the non-zero voxels of ``mask``."""
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    if not boxes or boxes[0] is None:
        raise ValueError("empty brain mask")
    box = boxes[0]
    start, stop = tuple(int(s.start) for s in box), tuple(int(s.stop) for s in box)
    return CropBox(start=start, stop=stop)  # type: ignore[arg-type]


def preprocess_case(case: CaseFiles, *, clip_percentiles: tuple[float, float] = (0.5, 99.5)) -> CachedCase:
    """Load and preprocess one case into a :class:`CachedCase` (image float32 (4, D, H, W), label uint8).

    Raises:
        ValueError: naming the case and files for shape or affine mismatches, label values outside the
            case's convention, an all-zero image or bad percentiles; :class:`~dataio.input_errors.InputErrors`
            listing every unreadable file or file with NaN / infinite voxels of the case.
    """
    check_clip_percentiles(clip_percentiles)
    arrays, files, affine, spacing = _load_modalities(case)
    _check_finite(arrays, files)
    label = None
    if case.label is not None:
        raw, label_affine, _ = load_label(case.label)
        _check_same_grid(case, [files[0], case.label], [arrays[0], raw], affine, label_affine)
        label = to_internal(raw, case.convention, source=str(case.label))
    return cropped_case(case, arrays, files, label, Grid(affine, spacing), clip_percentiles,
                        convention=case.convention, channel_names=MODALITY_ORDER)


def check_clip_percentiles(clip_percentiles: tuple[float, float]) -> None:
    """``0 <= low < high <= 100`` or ``ValueError``."""
    lo, hi = clip_percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {clip_percentiles}")


@dataclass(frozen=True)
class Grid:
    """The original image's voxel grid: 4x4 affine and spacing in mm."""

    affine: np.ndarray
    spacing: tuple[float, ...]


def cropped_case(case: CaseFiles, arrays: list[np.ndarray], files: list[Path], label: np.ndarray | None, grid: Grid,
                 clip_percentiles: tuple[float, float], *, convention: str, channel_names: tuple[str, ...],
                 keep_label: bool = False) -> CachedCase:
    """The :class:`CachedCase` of loaded channels: cropped to the box of the non-zero image voxels (``keep_label``:
    and of the labelled ones), each channel clipped and z-scored inside its non-zero voxels.

    Raises:
        ValueError: every image voxel is 0 (naming the files).
    """
    mask = np.zeros(arrays[0].shape, dtype=bool)
    if keep_label and label is not None:
        mask |= label != 0
    for array in arrays:
        mask |= array != 0
    if not mask.any():
        raise ValueError(f"case {case.case_id}: every image voxel is 0 in {sorted(set(map(str, files)))}")
    crop = brain_crop(mask)
    sl = crop.slices()
    image = np.stack([normalise_nonzero(a[sl], clip_percentiles) for a in arrays]).astype(np.float32)
    return CachedCase(
        case_id=case.case_id, patient_id=case.patient_id, image=image,
        label=None if label is None else np.ascontiguousarray(label[sl]),
        spacing=tuple(float(s) for s in grid.spacing), affine=grid.affine,  # type: ignore[arg-type]
        original_shape=tuple(int(s) for s in arrays[0].shape),  # type: ignore[arg-type]
        crop=crop, convention=convention, channel_names=channel_names)


def paste_back(array_cropped: np.ndarray, crop: CropBox, original_shape: tuple[int, int, int],
               fill: float = 0) -> np.ndarray:
    """Place a cropped array (spatial axes last, any leading axes) into an array of ``original_shape``.

    Voxels outside the crop get ``fill``; the dtype of ``array_cropped`` is kept.
    """
    expected = tuple(b - a for a, b in zip(crop.start, crop.stop))
    if tuple(array_cropped.shape[-3:]) != expected:
        raise ValueError(f"paste_back: array spatial shape {array_cropped.shape[-3:]} does not match the crop "
                         f"{crop.start}..{crop.stop} (size {expected})")
    if any(b > s for b, s in zip(crop.stop, original_shape)):
        raise ValueError(f"paste_back: crop stop {crop.stop} exceeds original shape {original_shape}")
    out = np.full(array_cropped.shape[:-3] + tuple(original_shape), fill, dtype=array_cropped.dtype)
    out[(..., *crop.slices())] = array_cropped
    return out
