"""Write a sweep's cases and split as an nnU-Net raw dataset or a MONAI (Auto3DSeg) datalist, so that nnU-Net or
Auto3DSeg train on exactly volbench's folds and test cases.

Both formats share one file layout under the output folder (nnU-Net's raw layout):
``imagesTr/<case>_<k:04d>.nii.gz`` (channel k), ``labelsTr/<case>.nii.gz``, and the test cases in ``imagesTs/`` and
``labelsTs/``. Images are the original files' voxels in their original space (a ``.nii.gz`` channel file is copied
byte for byte; anything else is written as float32 NIfTI with its affine); labels are rewritten as uint8 in the
export convention below. The index files differ:

- ``nnunet``: ``dataset.json`` (``channel_names``, ``labels``, ``regions_class_order`` for BraTS, ``numTraining``,
  ``file_ending`` ``.nii.gz``) and ``splits_final.json`` (one ``{"train", "val"}`` per volbench fold, holdout: one).
- ``datalist``: ``datalist.json`` with ``training`` entries (``image``: one path, or a list of paths in channel order;
  ``label``; ``fold``: the fold whose validation set holds the case; under a holdout split the validation cases carry
  ``fold`` 0 and the training cases no ``fold``, which MONAI's ``datafold_read`` reads as always-train) and
  ``testing`` entries with ``image`` and ``label``; paths relative to the output folder (``--data_path`` when read
  back); ``channel_names`` and ``labels`` as in ``dataset.json``.

Label convention of the export: BraTS as nnU-Net's own BraTS conversion (1 oedema, 2 necrotic / non-enhancing core,
3 enhancing; volbench's ``msd`` convention) with the regions ``whole_tumor`` [1, 2, 3], ``tumor_core`` [2, 3] and
``enhancing_tumor`` [3], ``regions_class_order`` [1, 2, 3]; binary datasets as 0 background, 1 the dataset's region
(e.g. ``ich``). LUNA16 has no label files (its labels are annotation lists) and is refused.

The export is written into a temporary sibling folder and renamed onto the output folder when complete: a failed
export leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .ct_adapters import CTOptions
from .ct_io import read_ct
from .ct_preprocess import binary_mask
from .conventions import from_internal, to_internal
from .nifti_io import _umask, load_label, save_volume
from .preprocess import _load_modalities
from .splits import iter_folds
from .types import CaseFiles, DatasetInfo, MODALITY_ORDER

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("nnunet", "datalist")
FILE_ENDING = ".nii.gz"
BRATS_EXPORT_CONVENTION = "msd"  # nnU-Net's BraTS labels: 1 oedema, 2 necrotic / non-enhancing core, 3 enhancing
BRATS_REGIONS: dict[str, list[int]] = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
BRATS_CHANNEL_NAMES: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}


@dataclass(frozen=True)
class ExportCase:
    """One case as written: its channel arrays or source files, affine and label in the export convention."""

    channels: list[np.ndarray | Path]  # a Path: a .nii.gz file copied as it is
    affine: np.ndarray
    label: np.ndarray | None


def label_definition(info: DatasetInfo) -> dict[str, Any]:
    """``labels`` (and ``regions_class_order`` for BraTS) of ``dataset.json`` for the export convention."""
    if info.label_kind == "brats":
        return {"labels": {"background": 0, **BRATS_REGIONS}, "regions_class_order": [1, 2, 3]}
    if info.label_kind == "binary":
        return {"labels": {"background": 0, info.region: 1}}
    raise ValueError(f"export: datasets with label kind {info.label_kind!r} cannot be exported")


def channel_names(info: DatasetInfo) -> dict[str, str]:
    """``channel_names`` of ``dataset.json``: BraTS modality names, ``CT`` (nnU-Net's CT normalisation) for CT."""
    return {str(k): BRATS_CHANNEL_NAMES.get(c, "CT" if c == "ct" else c) for k, c in enumerate(info.channels)}


def read_brats_case(case: CaseFiles) -> ExportCase:
    """The four modalities (copied when single ``.nii.gz`` files) and the label in nnU-Net's BraTS convention."""
    arrays, files, affine, _ = _load_modalities(case)
    single_files = case.image_4d is None and all(str(f).endswith(FILE_ENDING) for f in files)
    channels: list[np.ndarray | Path] = list(files) if single_files else list(arrays)
    label = None
    if case.label is not None:
        raw, _, _ = load_label(case.label)
        label = from_internal(to_internal(raw, case.convention, source=str(case.label)), BRATS_EXPORT_CONVENTION)
    return ExportCase(channels=channels, affine=affine, label=label)


def read_ct_case(case: CaseFiles, ct: CTOptions) -> ExportCase:
    """The CT image in HU (copied when a ``.nii.gz``) and its 0/1 mask (all background for an empty label)."""
    if case.findings is not None:
        raise ValueError(f"export: case {case.case_id} is a LUNA16 scan; its labels are annotation lists, not "
                         "label files, and cannot be exported")
    path = case.images["ct"]
    image = read_ct(path, mask=False, npy_spacing=ct.spacing, allow_pickle=case.allow_pickle)
    label = None
    if case.label is not None:
        mask = read_ct(case.label, mask=True, npy_spacing=ct.spacing, allow_pickle=case.allow_pickle)
        label = binary_mask(mask.data, str(case.label))
    elif case.empty_label:
        label = np.zeros(image.data.shape, dtype=np.uint8)
    source: np.ndarray | Path = path if str(path).endswith(FILE_ENDING) else image.data
    return ExportCase(channels=[source], affine=image.affine, label=label)


def case_reader(info: DatasetInfo, ct: CTOptions) -> Callable[[CaseFiles], ExportCase]:
    """How a case of this dataset is read for export."""
    if info.label_kind == "brats" and tuple(info.channels) == MODALITY_ORDER:
        return read_brats_case
    if tuple(info.channels) == ("ct",):
        return lambda case: read_ct_case(case, ct)
    raise ValueError(f"export: dataset {info.name!r} (channels {info.channels}) cannot be exported")


def _write_case(root: Path, case_id: str, case: ExportCase, images: str, labels: str) -> list[str]:
    """Write one case's channel files and label; returns the image paths relative to ``root``."""
    rel = []
    for k, channel in enumerate(case.channels):
        target = root / images / f"{case_id}_{k:04d}{FILE_ENDING}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(channel, Path):
            shutil.copyfile(channel, target)
        else:
            save_volume(target, np.asarray(channel, dtype=np.float32), case.affine)
        rel.append(str(target.relative_to(root)))
    if case.label is None:
        raise ValueError(f"export: case {case_id} has no label; every exported case must be labelled")
    save_volume(root / labels / f"{case_id}{FILE_ENDING}", case.label.astype(np.uint8), case.affine)
    return rel


def _fold_of_case(splits: dict[str, Any]) -> dict[str, int]:
    """Datalist ``fold`` of each validation case (holdout: fold 0)."""
    return {c: (0 if fold is None else int(fold)) for fold, _, val in iter_folds(splits) for c in val}


def _index_files(fmt: str, info: DatasetInfo, splits: dict[str, Any], written: dict[str, list[str]],
                 name: str) -> dict[str, Any]:
    """File name -> JSON content of the format's index files."""
    test = set(splits["test"])
    train_ids = [c for c in written if c not in test]
    labels = label_definition(info)
    if fmt == "nnunet":
        dataset = {"name": name, "channel_names": channel_names(info), **labels, "numTraining": len(train_ids),
                   "file_ending": FILE_ENDING, "description": "exported by volbench evaluate_experiment.py export"}
        folds = [{"train": sorted(tr), "val": sorted(val)} for _, tr, val in iter_folds(splits)]
        return {"dataset.json": dataset, "splits_final.json": folds}
    fold_of = _fold_of_case(splits)

    def entry(case_id: str, folder: str) -> dict[str, Any]:
        images = written[case_id]
        item: dict[str, Any] = {"image": images[0] if len(images) == 1 else images,
                                "label": f"{folder}/{case_id}{FILE_ENDING}"}
        return item

    training = [dict(entry(c, "labelsTr"), **({"fold": fold_of[c]} if c in fold_of else {})) for c in train_ids]
    testing = [entry(c, "labelsTs") for c in written if c in test]
    return {"datalist.json": {"name": name, "channel_names": channel_names(info), **labels,
                              "training": training, "testing": testing}}


def export_dataset(cases: dict[str, CaseFiles], info: DatasetInfo, splits: dict[str, Any], output_dir: Path, *,
                   fmt: str, ct: CTOptions | None = None, progress: Callable[[Any], Any] = iter) -> list[Path]:
    """Write every case of ``splits`` (train, validation and test of every fold) in ``fmt``; returns the index files.

    Raises:
        ValueError: an unknown format, an existing non-empty ``output_dir``, a case of the split without files, a
            dataset that cannot be exported (naming it).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"--output_dir {output_dir} exists and is not empty; export writes a new folder")
    ids = sorted({c for _, tr, val in iter_folds(splits) for c in (*tr, *val)}) + sorted(splits["test"])
    missing = [c for c in ids if c not in cases]
    if missing:
        raise ValueError(f"export: the split's cases {missing[:10]} have no files in the dataset")
    read = case_reader(info, ct or CTOptions())
    test = set(splits["test"])
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        written = {}
        for case_id in progress(ids):
            images, labels = ("imagesTs", "labelsTs") if case_id in test else ("imagesTr", "labelsTr")
            written[case_id] = _write_case(staging, case_id, read(cases[case_id]), images, labels)
        index = _index_files(fmt, info, splits, written, output_dir.name)
        for file_name, content in index.items():
            (staging / file_name).write_text(json.dumps(content, indent=2) + "\n")
        os.chmod(staging, 0o777 & ~_umask())
        if output_dir.exists():
            output_dir.rmdir()  # empty (checked above)
        os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported %d cases (%d test) as %s to %s", len(ids), len(test), fmt, output_dir)
    return [output_dir / name for name in index]

