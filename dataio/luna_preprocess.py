"""Preprocessing of one LUNA16 scan (``luna16``, ``synthetic_luna``): read, label from the annotations, crop, window.

Steps, in order:

1. Read the ``.mhd`` / ``.raw`` with SimpleITK (int16 HU -> float32). SimpleITK's arrays are (z, y, x); volbench
   stores (x, y, z) = the ITK index order, so axis 2 runs over the slices. Origin, spacing and direction come from
   the header. The image must look like HU (:func:`dataio.ct_preprocess.check_hu`, finite values included).
2. Label (uint8 0/1) from the annotation rows, as the book chapter's ``buildAnnotationMask`` builds it, on the raw
   HU (:func:`nodule_mask`): each annotation centre goes to its voxel (world -> continuous index, rounded); along
   each array axis separately, a radius ``r`` starts at 2 and grows by 1 while the voxels at ``centre + r`` and
   ``centre - r`` on that axis through the centre both lie above ``--nodule_hu_threshold`` (default -700 HU);
   growth stops at the first ``r`` where one of them does not (that ``r`` is kept), or one step after the last
   ``r`` that fits in the image (the chapter's ``IndexError`` path; its negative indices wrap around the array,
   volbench treats them as out of the image like the other side). The mask is the box ``centre +- r`` (clipped to
   the image) intersected with ``HU > threshold``; the masks of a scan's nodules are united. Excluded findings
   add nothing to the label. A scan without annotation rows gets an all-background label. An annotation centre
   outside its image is an error; an excluded one outside is only logged.
3. Crop to the body: the bounding box of the voxels above -500 HU (:data:`BODY_THRESHOLD_HU`) and of the label,
   kept as ``crop`` so that :func:`dataio.preprocess.paste_back` restores the full grid (``crop="none"``: no crop).
4. HU window to [0, 1] (:func:`dataio.ct_preprocess.window_hu`; LUNA16's default [-1000, 1000], the chapter's
   clip), one channel ``ct``.

The cached case keeps the original grid: ``spacing`` (x, y, z) mm, ``affine`` = the RAS+ affine of the scan
(:func:`dataio.luna16.ras_affine`), ``findings`` = the case's findings with RAS+ centres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ct_preprocess import CT_CHANNELS, check_hu, window_hu
from .luna16 import ras_affine, ras_to_lps, world_to_voxel
from .preprocess import brain_crop
from .types import CachedCase, CaseFiles, CropBox, Finding

logger = logging.getLogger(__name__)

LUNA_HU_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
NODULE_HU_THRESHOLD = -700.0
BODY_THRESHOLD_HU = -500.0
LUNA_CROP_MODES: tuple[str, ...] = ("body", "none")
LUNA_PREPROCESS_PARAMS: tuple[str, ...] = ("kind", "hu_window", "nodule_hu_threshold", "crop")
_START_RADIUS = 2


@dataclass
class LunaScan:
    """One scan as read: HU array (x, y, z) float32 and its ITK geometry (origin LPS+ mm, spacing mm, direction)."""

    hu: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: np.ndarray


def read_mhd(path: Path) -> LunaScan:
    """Read a ``.mhd`` (+ ``.raw``) scan with SimpleITK; the array comes back axial-last, (x, y, z).

    Raises:
        ValueError: naming the file when SimpleITK cannot read it or it is not a 3D scalar image.
    """
    import SimpleITK as sitk  # here: importing SimpleITK takes ~0.2 s, which only LUNA16 runs need

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"cannot read scan {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"scan {path} has {image.GetDimension()} dimensions and "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel; expected a 3D scalar CT")
    zyx = sitk.GetArrayFromImage(image)
    if zyx.dtype.kind not in "biuf":
        raise ValueError(f"scan {path}: voxel type {zyx.dtype} is not numeric")
    hu = np.ascontiguousarray(zyx.transpose(2, 1, 0), dtype=np.float32)
    return LunaScan(hu=hu, origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
                    spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
                    direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3))


def grow_radius(hu: np.ndarray, centre: tuple[int, int, int], axis: int, threshold: float) -> int:
    """The chapter's box radius along ``axis`` through ``centre`` (voxel indices; rule in the module docstring)."""
    radius = _START_RADIUS
    high, low = list(centre), list(centre)
    while True:
        low[axis], high[axis] = centre[axis] - radius, centre[axis] + radius
        if low[axis] < 0 or high[axis] >= hu.shape[axis]:
            return radius - 1
        if not (hu[tuple(high)] > threshold and hu[tuple(low)] > threshold):
            return radius
        radius += 1


def nodule_box(hu: np.ndarray, centre: tuple[int, int, int], threshold: float = NODULE_HU_THRESHOLD
               ) -> tuple[slice, slice, slice]:
    """The chapter's box around one centre voxel: ``centre +- radius`` per axis, clipped to the image."""
    radii = [grow_radius(hu, centre, axis, threshold) for axis in range(3)]
    return tuple(slice(max(0, c - r), c + r + 1) for c, r in zip(centre, radii))  # type: ignore[return-value]


def nodule_mask(hu: np.ndarray, centres: list[tuple[int, int, int]], threshold: float = NODULE_HU_THRESHOLD
                ) -> np.ndarray:
    """Union of the chapter's boxes grown from each centre voxel, restricted to ``hu > threshold`` (bool)."""
    mask = np.zeros(hu.shape, dtype=bool)
    for centre in centres:
        box = nodule_box(hu, centre, threshold)
        mask[box] |= hu[box] > threshold
    return mask


def centre_voxel(finding: Finding, scan: LunaScan) -> tuple[int, int, int] | None:
    """Rounded voxel index (x, y, z) of a finding's centre; ``None`` when it lies outside the image."""
    index = world_to_voxel(ras_to_lps(finding.centre_ras_mm), scan.origin, scan.spacing, scan.direction)
    rounded = np.round(index).astype(int)
    if np.any(rounded < 0) or np.any(rounded >= np.asarray(scan.hu.shape)):
        return None
    return tuple(int(v) for v in rounded)  # type: ignore[return-value]


def annotation_label(case: CaseFiles, scan: LunaScan, threshold: float) -> np.ndarray:
    """uint8 {0, 1} label of a scan from its (non-excluded) findings; checks every centre lies in the image."""
    centres = []
    for finding in case.findings or ():
        voxel = centre_voxel(finding, scan)
        if voxel is None and not finding.excluded:
            lps = tuple(round(float(v), 3) for v in ras_to_lps(finding.centre_ras_mm))
            raise ValueError(f"series {case.case_id}: annotation at {finding.origin or '?'} (centre {lps} mm LPS) "
                             f"lies outside its image of {tuple(scan.hu.shape)} voxels (origin {scan.origin}, "
                             f"spacing {scan.spacing}); check the annotation file and the scan")
        if voxel is None:
            logger.warning("series %s: excluded finding at %s lies outside the image", case.case_id, finding.origin)
        elif not finding.excluded:
            centres.append(voxel)
    mask = nodule_mask(scan.hu, centres, threshold)
    empty = [c for c in centres if not (scan.hu[nodule_box(scan.hu, c, threshold)] > threshold).any()]
    if empty:
        logger.warning("series %s: %d annotated nodules have an empty mask (no voxel above %g HU near the centre "
                       "voxels %s)", case.case_id, len(empty), threshold, empty[:3])
    return mask.astype(np.uint8)


def _crop_box(hu: np.ndarray, label: np.ndarray | None, crop: str, source: str) -> CropBox:
    if crop == "none":
        return CropBox(start=(0, 0, 0), stop=tuple(int(s) for s in hu.shape))  # type: ignore[arg-type]
    body = hu > BODY_THRESHOLD_HU
    if label is not None:
        body |= label > 0
    if not body.any():
        raise ValueError(f"scan {source} has no voxel above {BODY_THRESHOLD_HU:g} HU (no body to crop to)")
    return brain_crop(body)


def preprocess_luna_case(case: CaseFiles, *, hu_window: tuple[float, float] = LUNA_HU_WINDOW,
                         nodule_hu_threshold: float = NODULE_HU_THRESHOLD, crop: str = "body") -> CachedCase:
    """Load and preprocess one LUNA16 scan into a :class:`CachedCase` (image float32 (1, X, Y, Z) in [0, 1], label
    uint8 {0, 1} or ``None`` when the case has no findings listing); steps in the module docstring.

    Raises:
        ValueError: naming the series and file: unreadable scan, non-HU or non-finite values, an annotation centre
            outside its image, an unknown ``crop``.
    """
    if crop not in LUNA_CROP_MODES:
        raise ValueError(f"LUNA16 crop {crop!r} is not one of {LUNA_CROP_MODES}")
    if "ct" not in case.images:
        raise ValueError(f"case {case.case_id}: no CT scan file (images {sorted(case.images)})")
    path = case.images["ct"]
    scan = read_mhd(Path(path))
    check_hu(scan.hu, str(path))
    label = None if case.findings is None else annotation_label(case, scan, float(nodule_hu_threshold))
    box = _crop_box(scan.hu, label, crop, str(path))
    sl = box.slices()
    image = window_hu(scan.hu[sl], hu_window)[None]
    cropped = None if label is None else np.ascontiguousarray(label[sl], dtype=np.uint8)
    return CachedCase(
        case_id=case.case_id, patient_id=case.patient_id, image=np.ascontiguousarray(image, dtype=np.float32),
        label=cropped, spacing=scan.spacing, affine=ras_affine(scan.origin, scan.spacing, scan.direction),
        original_shape=tuple(int(s) for s in scan.hu.shape),  # type: ignore[arg-type]
        crop=box, convention=case.convention, channel_names=CT_CHANNELS,
        foreground_voxels=None if cropped is None else int(np.count_nonzero(cropped)), findings=case.findings)
