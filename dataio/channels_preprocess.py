"""Preprocessing of one case of a dataset described by a file (nnU-Net raw, MONAI datalist): any named channels.

Steps (cache parameters ``{"kind": "channels", "clip_percentiles", "label_values"}``):

1. Read each channel (one 3D NIfTI per channel, or one 4D file with channels last) with
   :mod:`dataio.nifti_io`; every channel and the label must share one voxel grid (shape, affine within 1e-3).
2. Labels are kept as stored (the ``identity`` convention): every value must be one of ``label_values`` (the values
   the dataset's description declares; ``None``: not checked), else a ``ValueError`` naming the label file and
   the file that declares the labels (``CaseFiles.origin``).
3. Crop to the bounding box of the voxels that are non-zero in some channel or labelled (labels are never cut).
4. Each channel: clip its non-zero voxels to ``clip_percentiles`` and z-score them; zero voxels stay 0
   (:func:`dataio.preprocess.normalise_nonzero`, as for BraTS). A CT channel is treated the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .input_errors import map_all
from .nifti_io import load_label, load_volume
from .preprocess import Grid, _check_finite, _check_same_grid, check_clip_percentiles, cropped_case
from .types import CachedCase, CaseFiles

logger = logging.getLogger(__name__)

CHANNELS_PREPROCESS_PARAMS: tuple[str, ...] = ("kind", "clip_percentiles", "label_values")
IDENTITY_CONVENTION = "identity"


def _channels(case: CaseFiles) -> tuple[list[np.ndarray], list[Path], np.ndarray, tuple[float, ...], tuple[str, ...]]:
    """Arrays in channel order, the file of each, the affine, the spacing (mm) and the channel names."""
    if case.image_4d is not None:
        data, affine, spacing = load_volume(case.image_4d)
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4 or data.shape[3] != len(case.channel_order):
            raise ValueError(f"case {case.case_id}: image {case.image_4d} has shape {data.shape}; expected "
                             f"{len(case.channel_order)} channel(s) {case.channel_order} (last axis)")
        arrays = [np.ascontiguousarray(data[..., k]) for k in range(data.shape[3])]
        return arrays, [case.image_4d] * len(arrays), affine, spacing, tuple(case.channel_order)
    names = tuple(case.images)
    files = [case.images[n] for n in names]
    loaded = map_all(load_volume, files)
    arrays = [data for data, _, _ in loaded]
    for path, (data, aff, _) in zip(files, loaded):
        if data.ndim != 3:
            raise ValueError(f"case {case.case_id}: {path} has shape {data.shape}; expected one 3D channel")
        _check_same_grid(case, [files[0], path], [arrays[0], data], loaded[0][1], aff)
    return arrays, files, loaded[0][1], loaded[0][2], names


def _check_label_values(raw: np.ndarray, case: CaseFiles, label_values: tuple[int, ...] | None) -> np.ndarray:
    """The label as uint8; ``ValueError`` naming the file for non-integer or undeclared values."""
    arr = np.asarray(raw)
    if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
        raise ValueError(f"label file {case.label}: label values must be integers")
    values = np.unique(arr).astype(np.int64).tolist()
    allowed = set(label_values) if label_values is not None else set(range(256))
    bad = [v for v in values if v not in allowed]
    if bad:
        declared = f" that {case.origin} does not declare" if case.origin else " outside 0..255"
        raise ValueError(f"label file {case.label} holds label value(s) {bad[:10]}{declared} (declared: "
                         f"{sorted(allowed)[:20]})")
    return arr.astype(np.uint8)


def preprocess_channels_case(case: CaseFiles, *, clip_percentiles: tuple[float, float] = (0.5, 99.5),
                             label_values: tuple[int, ...] | None = None) -> CachedCase:
    """Load and preprocess one case into a :class:`CachedCase` (module docstring; image float32 (C, D, H, W)).

    Raises:
        ValueError: naming the case and files for grid mismatches, undeclared label values, an all-zero image;
            :class:`~dataio.input_errors.InputErrors` listing every unreadable file of the case.
    """
    check_clip_percentiles(clip_percentiles)
    arrays, files, affine, spacing, names = _channels(case)
    _check_finite(arrays, files)
    label = None
    if case.label is not None:
        raw, label_affine, _ = load_label(case.label)
        _check_same_grid(case, [files[0], case.label], [arrays[0], raw], affine, label_affine)
        label = _check_label_values(raw, case, label_values)
    return cropped_case(case, arrays, files, label, Grid(affine, spacing), clip_percentiles,
                        convention=IDENTITY_CONVENTION, channel_names=names, keep_label=True)
