"""Helpers for the data-layer tests: tiny NIfTI files laid out exactly like the released datasets."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

BRATS21_FILES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
BRATS23_FILES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
MODS = ("t1", "t1ce", "t2", "flair")


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` with nibabel (plain, non-atomic: the way a dataset archive would hold it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def head_arrays(shape: tuple[int, int, int], seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Modality arrays (float32, 0 outside a box-shaped 'head', distinct level per modality) and an
    internal-label array (0..3) with a tumour of all three classes inside the head."""
    rng = np.random.default_rng(seed)
    head = np.zeros(shape, dtype=bool)
    head[2:-3, 3:-2, 2:-2] = True
    images = {}
    for k, m in enumerate(MODS):
        vol = (100.0 * (k + 1) + 10.0 * rng.standard_normal(shape)).astype(np.float32)
        images[m] = np.where(head, np.abs(vol) + 1.0, 0.0).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    c = [s // 2 for s in shape]
    label[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 2
    label[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 3
    label[c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 1, c[2] - 1:c[2] + 1] = 1
    return images, label


# internal label -> file label for the conventions (test-side table, written independently of the code)
TO_FILE = {"brats2021": {0: 0, 1: 1, 2: 2, 3: 4}, "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
           "msd": {0: 0, 1: 2, 2: 1, 3: 3}}


def file_label(internal: np.ndarray, convention: str) -> np.ndarray:
    out = np.zeros_like(internal)
    for src, dst in TO_FILE[convention].items():
        out[internal == src] = dst
    return out


def write_split_case(folder: Path, case_id: str, sep: str, names: dict[str, str], convention: str,
                     shape: tuple[int, int, int] = (16, 16, 16), seed: int = 0, with_label: bool = True) -> None:
    """One case folder with one file per modality named ``{case_id}{sep}{suffix}.nii.gz``."""
    images, label = head_arrays(shape, seed)
    for m, suffix in names.items():
        write_nifti(folder / f"{case_id}{sep}{suffix}.nii.gz", images[m])
    if with_label:
        write_nifti(folder / f"{case_id}{sep}seg.nii.gz", file_label(label, convention))


def make_brats2018(root: Path, shape: tuple[int, int, int] = (16, 16, 16)) -> list[str]:
    base = root / "MICCAI_BraTS_2018_Data_Training"
    ids = [("HGG", "Brats18_CBICA_AAB_1"), ("HGG", "Brats18_2013_2_1"), ("LGG", "Brats18_TCIA09_141_1")]
    for i, (grade, case_id) in enumerate(ids):
        write_split_case(base / grade / case_id, case_id, "_", BRATS21_FILES, "brats2021", shape, seed=i)
    return sorted(c for _, c in ids)


def make_brats2021(root: Path, n: int = 3, shape: tuple[int, int, int] = (16, 16, 16)) -> list[str]:
    ids = [f"BraTS2021_{i:05d}" for i in (2, 0, 11)][:n]
    for i, case_id in enumerate(ids):
        write_split_case(root / "BraTS2021_Training_Data" / case_id, case_id, "_", BRATS21_FILES, "brats2021",
                         shape, seed=i)
    return sorted(ids)


def make_brats2023(root: Path, shape: tuple[int, int, int] = (16, 16, 16)) -> list[str]:
    base = root / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    ids = ["BraTS-GLI-00005-000", "BraTS-GLI-00005-001", "BraTS-GLI-00002-000"]
    for i, case_id in enumerate(ids):
        write_split_case(base / case_id, case_id, "-", BRATS23_FILES, "brats2023", shape, seed=i)
    return sorted(ids)


def make_msd(root: Path, shape: tuple[int, int, int] = (16, 16, 16)) -> list[str]:
    """MSD Task01 layout: 4D images with channels FLAIR, T1w, T1gd, T2w, plus macOS ``._`` junk files."""
    base = root / "Task01_BrainTumour"
    ids = ["BRATS_003", "BRATS_001"]
    for i, case_id in enumerate(ids):
        images, label = head_arrays(shape, seed=i)
        stack = np.stack([images[m] for m in ("flair", "t1", "t1ce", "t2")], axis=-1)
        write_nifti(base / "imagesTr" / f"{case_id}.nii.gz", stack)
        write_nifti(base / "labelsTr" / f"{case_id}.nii.gz", file_label(label, "msd"))
    (base / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (base / "labelsTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    return sorted(ids)
