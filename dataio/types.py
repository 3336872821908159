"""Data records shared by the adapters, the cache, the samplers and the runner.

Conventions (volbench-wide):
- Arrays are channel-first, spatial axes in the order stored on disk (NIfTI i, j, k), called D, H, W.
- Images hold one channel per named channel of the dataset (``CachedCase.channel_names``): for BraTS
  the modalities in ``MODALITY_ORDER`` = (t1, t1ce, t2, flair), float32, z-scored inside the brain mask,
  0 outside; other datasets name their own channels (e.g. one CT channel).
- Labels use the internal map {0 background, 1 NCR/NET, 2 ED, 3 ET} for BraTS, {0, 1} for binary
  datasets (CT: 1 = haemorrhage), uint8.
- Spacing is in millimetres per voxel along (D, H, W).
- World coordinates (``CachedCase.affine``, :class:`Finding` centres) are NIfTI-style RAS+ millimetres: x grows
  towards the patient's Right, y Anterior, z Superior. DICOM/ITK files (LUNA16's ``.mhd`` headers and CSVs) use
  LPS+ (x Left, y Posterior): ``x_lps = -x_ras``, ``y_lps = -y_ras``, z the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODALITY_ORDER: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
INTERNAL_LABELS: tuple[int, ...] = (0, 1, 2, 3)
LABEL_NAMES: dict[int, str] = {0: "background", 1: "ncr", 2: "ed", 3: "et"}


LABEL_KINDS: tuple[str, ...] = ("brats", "binary", "multiclass")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset offers the models and tasks, known before any model is built.

    Attributes:
        name: dataset version (``synthetic``, ``brats2021``, ...).
        channels: image channel names in the cached order (models take them by name or all of them).
        label_kind: ``brats`` (internal BraTS labels 0-3, regions WT/TC/ET), ``binary`` (0/1) or ``multiclass``
            (labels 0..N-1 of a dataset described by a file: nnU-Net raw, MONAI datalist).
        region: name of the foreground region of a binary dataset, used in column names
            (``dice_<region>``); ignored for ``brats``.
        lesion_hit: the dataset's own lesion hit rule (``--lesion_hit`` when not given): ``iou`` (box IoU >= 0.1),
            or LUNA16's ``radius`` (a prediction's centre within the nodule's radius, world mm).
        labels: ``multiclass``: the column name of each foreground label (``labels[i]`` is label ``i + 1``).
        regions: ``multiclass``: (column name, member labels) of each named region (``dataio.label_names``).
    """

    name: str
    channels: tuple[str, ...] = MODALITY_ORDER
    label_kind: str = "brats"
    region: str = "lesion"
    lesion_hit: str = "iou"
    labels: tuple[str, ...] = ()
    regions: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.label_kind not in LABEL_KINDS:
            raise ValueError(f"dataset {self.name!r}: label_kind {self.label_kind!r} is not one of {LABEL_KINDS}")
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"dataset {self.name!r}: channel names must be unique and non-empty, got {self.channels}")
        if self.label_kind == "multiclass" and not self.labels:
            raise ValueError(f"dataset {self.name!r}: multiclass labels need at least one foreground label name")

    @property
    def stratify_by_lesion(self) -> bool:
        """Splits keep the share of scans with a lesion (``binary`` labels: a scan with a foreground voxel)."""
        return self.label_kind == "binary"


@dataclass(frozen=True)
class Finding:
    """One annotated finding of a scan, for lesion-wise evaluation (LUNA16 nodules).

    Attributes:
        centre_ras_mm: centre in world RAS+ millimetres (see the module docstring).
        diameter_mm: diameter in mm; ``-1`` where the source gives none (LUNA16's excluded findings).
        excluded: a finding that neither counts as a miss nor makes a mark a false positive (LUNA16's
            ``annotations_excluded.csv``); ``False`` for the findings that must be detected.
        origin: where it was listed (e.g. ``annotations.csv line 12``), for messages; not compared.
    """

    centre_ras_mm: tuple[float, float, float]
    diameter_mm: float
    excluded: bool = False
    origin: str = field(default="", compare=False, repr=False)


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
        convention: label convention name (``brats2021``, ``brats2023``, ``msd``, ``internal``, ``binary``).
        empty_label: the case is labelled but has no label file: its label is all background (a CT manifest
            row with ``ich`` = 0 and no mask); ``label`` is ``None`` then.
        has_lesion: what the listing says about the case (CT manifest column ``ich``); preprocessing checks
            that the label agrees (foreground iff True). ``None``: nothing stated.
        origin: where the case was listed (e.g. ``manifest.csv line 3``), for error messages.
        allow_pickle: the user opted in to unpickling this case's ``.pkl`` files (``--allow_pickle``).
        fixed_split: ``"test"`` for cases of separate test folders (``--test_image_dir``); ``""`` otherwise.
        extra_files: further files the case is read from (a ``.mhd`` header's ``.raw`` voxel file), so that the
            cache notices when they change.
        findings: the annotated findings of the case (LUNA16: its rows of the annotation CSV and of
            ``annotations_excluded.csv``), from which the label is built; ``None``: the dataset lists none.
        subset: the release's subset number of the case (LUNA16 ``subsetN``); ``None``: the release has none.
    """

    case_id: str
    patient_id: str
    images: dict[str, Path] = field(default_factory=dict)
    image_4d: Path | None = None
    channel_order: tuple[str, ...] = ()
    label: Path | None = None
    convention: str = "brats2021"
    empty_label: bool = False
    has_lesion: bool | None = None
    origin: str = ""
    allow_pickle: bool = False
    fixed_split: str = ""
    extra_files: tuple[Path, ...] = ()
    findings: tuple[Finding, ...] | None = None
    subset: int | None = None

    @property
    def has_label(self) -> bool:
        """True when the case is labelled (a label file, an all-background label without a file, or findings
        from which the label is built)."""
        return self.label is not None or self.empty_label or self.findings is not None


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
        image: float32 (C, D, H, W), one channel per name in ``channel_names``, cropped to the brain box.
        label: uint8 (D, H, W) internal labels, same crop; ``None`` for unlabelled data.
        spacing: mm per voxel (D, H, W).
        affine: 4x4 affine of the original image.
        original_shape: spatial shape of the original image before cropping.
        crop: where ``image`` sits in the original image.
        convention: label convention of the source dataset (to write predictions back).
        channel_names: name of each image channel (BraTS: ``MODALITY_ORDER``).
        foreground_voxels: number of non-zero voxels of ``label`` (recorded when the entry is written, so
            lesion strata need not re-read labels); ``None`` for unlabelled cases and older cache entries.
        findings: the case's annotated findings (centres in RAS+ mm; LUNA16), excluded ones included, for
            lesion-wise evaluation; ``None``: the dataset has no annotation rows (or an older cache entry), and
            evaluation takes the lesions from the label's connected components.
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
    channel_names: tuple[str, ...] = MODALITY_ORDER
    foreground_voxels: int | None = None
    findings: tuple[Finding, ...] | None = None

    def channel_indices(self, modalities: tuple[str, ...] | list[str]) -> list[int]:
        """Indices of the named channels in ``image``; ``ValueError`` naming unknown ones."""
        missing = [m for m in modalities if m not in self.channel_names]
        if missing or not modalities:
            raise ValueError(f"case {self.case_id}: unknown channels {missing or list(modalities)}; "
                             f"known {self.channel_names}")
        return [self.channel_names.index(m) for m in modalities]

    def channels(self, modalities: tuple[str, ...] | list[str]) -> np.ndarray:
        """Image channels for the named modalities, in the given order (copy-free when possible)."""
        idx = self.channel_indices(modalities)
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return self.image[idx[0]: idx[0] + len(idx)]
        return self.image[idx]


@dataclass
class LoadedDataset:
    """A dataset ready for a sweep: what it offers (:class:`DatasetInfo`) and its cached cases.

    ``test_ids``: cases that form the test split whatever the split seed (separate test folders,
    ``--test_image_dir``); empty when the split draws the test cases itself.
    ``subsets``: case id -> the release's subset number (LUNA16 ``subsetN``, for ``--use_subset_folds``);
    empty when the release has no subsets.
    ``splits``: the split the dataset itself fixes (nnU-Net's ``splits_final.json``, a datalist's ``fold`` keys),
    in the format of :func:`dataio.splits.make_splits`; ``None``: the sweep makes the split.
    """

    info: DatasetInfo
    cases: list[CachedCase]
    test_ids: tuple[str, ...] = ()
    subsets: dict[str, int] = field(default_factory=dict)
    splits: dict[str, Any] | None = None
