"""Data records shared by the adapters, the cache, the samplers and the runner.

Conventions (volbench-wide):
- Arrays are channel-first, spatial axes in the order stored on disk (NIfTI i, j, k), called D, H, W.
- Images hold one channel per modality in ``MODALITY_ORDER`` = (t1, t1ce, t2, flair), float32,
  z-scored inside the brain mask, 0 outside.
- Labels use the internal map {0 background, 1 NCR/NET, 2 ED, 3 ET}, uint8.
- Spacing is in millimetres per voxel along (D, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODALITY_ORDER: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
INTERNAL_LABELS: tuple[int, ...] = (0, 1, 2, 3)
LABEL_NAMES: dict[int, str] = {0: "background", 1: "ncr", 2: "ed", 3: "et"}


@dataclass(frozen=True)
class CaseFiles:
    """Where one case lives on disk, as found by a dataset adapter.

    Attributes:
        case_id: unique case name (e.g. ``BraTS2021_00000``).
        patient_id: patient the case belongs to (splits keep a patient's cases together).
        images: modality name -> file, for layouts with one file per modality.
        image_4d: a single 4D file holding every modality (MSD Task01); ``images`` is empty then.
        channel_order: modality names of the 4D file's channels, in file order.
        label: segmentation file, or ``None`` for unlabelled data.
        convention: label convention name (``brats2021``, ``brats2023``, ``msd``, ``internal``).
    """

    case_id: str
    patient_id: str
    images: dict[str, Path] = field(default_factory=dict)
    image_4d: Path | None = None
    channel_order: tuple[str, ...] = ()
    label: Path | None = None
    convention: str = "brats2021"


@dataclass(frozen=True)
class CropBox:
    """Brain bounding box in original voxel indices: ``start`` inclusive, ``stop`` exclusive."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]


@dataclass
class CachedCase:
    """One preprocessed case, as served by the cache (arrays may be read-only memory maps).

    Attributes:
        case_id, patient_id: as in :class:`CaseFiles`.
        image: float32 (4, D, H, W) in ``MODALITY_ORDER``, cropped to the brain box.
        label: uint8 (D, H, W) internal labels, same crop; ``None`` for unlabelled data.
        spacing: mm per voxel (D, H, W).
        affine: 4x4 affine of the original image.
        original_shape: spatial shape of the original image before cropping.
        crop: where ``image`` sits in the original image.
        convention: label convention of the source dataset (to write predictions back).
    """

    case_id: str
    patient_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray
    original_shape: tuple[int, int, int]
    crop: CropBox
    convention: str

    def channels(self, modalities: tuple[str, ...] | list[str]) -> np.ndarray:
        """Image channels for the named modalities, in the given order (copy-free when possible)."""
        missing = [m for m in modalities if m not in MODALITY_ORDER]
        if missing:
            raise ValueError(f"case {self.case_id}: unknown modalities {missing}; known {MODALITY_ORDER}")
        idx = [MODALITY_ORDER.index(m) for m in modalities]
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return self.image[idx[0]: idx[0] + len(idx)]
        return self.image[idx]
