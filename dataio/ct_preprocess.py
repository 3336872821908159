"""Preprocessing of one CT case (``ich``, ``synthetic_ich``): check, resample (optional), crop to the head, window.

Steps, in order (the BraTS MRI preprocessing is :func:`dataio.preprocess.preprocess_case`):

1. Read the image (float32 HU) and the mask (:mod:`dataio.ct_io`); ``.npy`` / pickled files get the spacing
   ``npy_spacing`` (``--spacing``) and the affine ``diag(spacing)``.
2. Checks, each a ``ValueError`` naming the file: the image must look like Hounsfield units
   (:data:`HU_RULE`: min <= -200 and max >= 50; an image already normalised, e.g. to [0, 1], is refused);
   the mask must be binary with values 0 and 1 only (0/255 masks are refused, not rescaled); image and mask
   must share the shape, and, when both files carry an affine (NIfTI), the affine within 1e-3; a manifest's
   ``ich`` flag must agree with the mask (1 iff any foreground voxel).
3. Resampling, only with ``target_spacing``: image trilinear (``scipy.ndimage.zoom``, order 1), mask nearest
   (order 0), on voxel-area-aligned grids (``grid_mode=True``). New shape = round(shape x spacing / target);
   the spacing becomes spacing x old shape / new shape (the target when the extent divides evenly) and the
   affine is updated to the new voxel centres. ``original_shape`` and ``affine`` of the cached case then
   describe the resampled grid, where predictions are written back.
4. Crop to the head: the bounding box of the voxels above :data:`HEAD_THRESHOLD_HU` (-500 HU: soft tissue
   and bone, not air), kept as ``crop`` so that :func:`dataio.preprocess.paste_back` restores the full grid.
5. HU window: ``(hu - low) / (high - low)`` clipped to [0, 1] (default window [0, 120] HU: -100 -> 0,
   60 -> 0.5, 500 -> 1), float32, one channel named ``ct``. Labels uint8 {0, 1}.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from .ct_io import read_ct
from .preprocess import AFFINE_TOLERANCE, brain_crop
from .types import CachedCase, CaseFiles

logger = logging.getLogger(__name__)

CT_CHANNELS: tuple[str, ...] = ("ct",)
DEFAULT_HU_WINDOW: tuple[float, float] = (0.0, 120.0)
HEAD_THRESHOLD_HU = -500.0
HU_MIN_AT_MOST, HU_MAX_AT_LEAST = -200.0, 50.0
HU_RULE = (f"a CT image in Hounsfield units has min <= {HU_MIN_AT_MOST:g} (air is about -1000) and max >= "
           f"{HU_MAX_AT_LEAST:g} (brain 20-45, blood 50-90, bone ~1000)")
CROP_MODES: tuple[str, ...] = ("head", "none")
CT_PREPROCESS_PARAMS: tuple[str, ...] = ("kind", "hu_window", "target_spacing", "crop", "npy_spacing")


def window_hu(volume: np.ndarray, hu_window: tuple[float, float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """Map HU to [0, 1]: ``(v - low) / (high - low)``, clipped (float32)."""
    low, high = float(hu_window[0]), float(hu_window[1])
    if not high > low:
        raise ValueError(f"--hu_window needs LOW < HIGH, got {low:g} {high:g}")
    out = (np.asarray(volume, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def check_hu(volume: np.ndarray, source: str) -> None:
    """Refuse an image that does not look like Hounsfield units (see :data:`HU_RULE`)."""
    if not np.all(np.isfinite(volume)):
        raise ValueError(f"image {source} holds NaN or infinite values")
    lo, hi = float(volume.min()), float(volume.max())
    if lo > HU_MIN_AT_MOST or hi < HU_MAX_AT_LEAST:
        raise ValueError(f"image {source} does not look like CT in Hounsfield units: min {lo:g}, max {hi:g}; "
                         f"rule: {HU_RULE}. Is it already normalised (e.g. to [0, 1]) or stored without its "
                         "rescale slope/intercept? Give the raw HU image; volbench windows it itself (--hu_window)")


def binary_mask(label: np.ndarray, source: str) -> np.ndarray:
    """The mask as uint8 {0, 1}; refuses any other value (0/255 masks included) naming ``source``."""
    arr = np.asarray(label)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"label {source}: dtype {arr.dtype} is not numeric")
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in (0, 1)]
    if bad:
        hint = (" (a 0/255 mask: volbench does not rescale masks silently; save it as mask > 0 with values 0/1)"
                if set(values.tolist()) <= {0, 255} else "")
        raise ValueError(f"label {source} is not binary: values {values[:10].tolist()}; expected 0 (background) and "
                         f"1 (haemorrhage) only{hint}")
    return (arr == 1).astype(np.uint8)


def _resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, spacing: tuple[float, float, float],
             target_spacing: tuple[float, float, float]
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[float, float, float]]:
    """Resample image (trilinear) and label (nearest) to ``target_spacing`` mm; returns the new affine and spacing.

    Voxel-area-aligned (``grid_mode``): the volume's outer faces stay in place, new voxel ``j`` has its centre
    at old voxel index ``(j + 0.5) * r - 0.5`` with ``r = old shape / new shape`` per axis.
    """
    new_shape = _resampled_shape(image.shape, spacing, target_spacing)
    if new_shape == tuple(image.shape):
        return image, label, affine, spacing
    zoom = [n / o for n, o in zip(new_shape, image.shape)]
    out = ndimage.zoom(image.astype(np.float32, copy=False), zoom, order=1, mode="nearest", grid_mode=True)
    out_label = None if label is None else ndimage.zoom(label, zoom, order=0, mode="nearest", grid_mode=True)
    ratio = np.array([o / n for o, n in zip(image.shape, new_shape)], dtype=np.float64)
    step = np.eye(4)
    step[:3, :3] = np.diag(ratio)
    step[:3, 3] = 0.5 * ratio - 0.5
    new_spacing = tuple(float(s * r) for s, r in zip(spacing, ratio))
    new_affine = np.asarray(affine) @ step
    return out.astype(np.float32, copy=False), out_label, new_affine, new_spacing  # type: ignore[return-value]


def preprocess_ct_case(case: CaseFiles, *, hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
                       target_spacing: tuple[float, float, float] | None = None, crop: str = "head",
                       npy_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> CachedCase:
    """Load and preprocess one CT case into a :class:`CachedCase` (image float32 (1, D, H, W), label uint8 {0, 1}).

    Args:
        hu_window: HU range mapped to [0, 1] (``--hu_window``).
        target_spacing: resample to this spacing in mm (``--target_spacing``); ``None`` keeps the grid.
        crop: ``head`` (bounding box of voxels above -500 HU) or ``none``.
        npy_spacing: spacing of ``.npy`` / pickled files in mm (``--spacing``).

    Raises:
        ValueError: naming the case and file, for every check of the module docstring.
    """
    if crop not in CROP_MODES:
        raise ValueError(f"CT crop {crop!r} is not one of {CROP_MODES}")
    if "ct" not in case.images:
        raise ValueError(f"case {case.case_id}: no CT image file (images {sorted(case.images)})")
    path = case.images["ct"]
    image = read_ct(path, mask=False, npy_spacing=npy_spacing, allow_pickle=case.allow_pickle)
    check_hu(image.data, str(path))
    label = None
    if case.label is not None:
        mask = read_ct(case.label, mask=True, npy_spacing=npy_spacing, allow_pickle=case.allow_pickle)
        if mask.data.shape != image.data.shape:
            raise ValueError(f"case {case.case_id}: label {case.label} has shape {tuple(mask.data.shape)} but image "
                             f"{path} has {tuple(image.data.shape)}; image and label must share one voxel grid")
        if mask.has_affine and image.has_affine and not np.allclose(mask.affine, image.affine,
                                                                     atol=AFFINE_TOLERANCE, rtol=0.0):
            raise ValueError(f"case {case.case_id}: affine of label {case.label} differs from that of image {path} by "
                             f"more than {AFFINE_TOLERANCE}:\n{mask.affine}\nvs\n{image.affine}")
        label = binary_mask(mask.data, str(case.label))
    elif case.empty_label:
        label = np.zeros(image.data.shape, dtype=np.uint8)
    if case.has_lesion is not None and label is not None and bool(label.any()) != case.has_lesion:
        where = f" ({case.origin})" if case.origin else ""
        found = f"mask {case.label} has {int(np.count_nonzero(label))} foreground voxels" if case.label is not None \
            else "it has no mask"
        raise ValueError(f"case {case.case_id}{where}: column ich says {int(case.has_lesion)} but {found}; "
                         "ich must be 1 exactly when the mask has a haemorrhage voxel")
    volume, affine, spacing = image.data, image.affine, image.spacing
    if target_spacing is not None:
        target = tuple(float(s) for s in target_spacing)
        volume, label, affine, spacing = resample(volume, label, affine, spacing, target)  # type: ignore[arg-type]
    if crop == "head":
        head = volume > HEAD_THRESHOLD_HU
        if not head.any():
            raise ValueError(f"case {case.case_id}: image {path} has no voxel above {HEAD_THRESHOLD_HU:g} HU "
                             "(no head to crop to)")
        box = brain_crop(head)
    else:
        box = brain_crop(np.ones(volume.shape, dtype=bool))
    sl = box.slices()
    windowed = window_hu(volume[sl], hu_window)[None]
    return CachedCase(
        case_id=case.case_id, patient_id=case.patient_id, image=np.ascontiguousarray(windowed, dtype=np.float32),
        label=None if label is None else np.ascontiguousarray(label[sl], dtype=np.uint8),
        spacing=tuple(float(s) for s in spacing), affine=np.asarray(affine, dtype=np.float64),  # type: ignore[arg-type]
        original_shape=tuple(int(s) for s in volume.shape),  # type: ignore[arg-type]
        crop=box, convention=case.convention, channel_names=CT_CHANNELS,
        foreground_voxels=None if label is None else int(np.count_nonzero(label[sl])))
