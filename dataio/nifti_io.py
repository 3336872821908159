"""NIfTI reading and atomic writing (nibabel), with errors that name the file.

Arrays keep the on-disk voxel order (i, j, k[, channel]); spacing is in mm along i, j, k.
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

logger = logging.getLogger(__name__)

# what nibabel / gzip raise on unreadable, truncated or corrupt files
_READ_ERRORS = (ImageFileError, gzip.BadGzipFile, EOFError, zlib.error, OSError, ValueError)


def _open(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise ValueError(f"NIfTI file {path} does not exist")
    try:
        return nib.load(str(path))
    except _READ_ERRORS as exc:
        raise ValueError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from exc


def _spacing(img: nib.Nifti1Image) -> tuple[float, float, float]:
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if len(zooms) < 3:
        raise ValueError(f"NIfTI file {img.get_filename()} has {len(zooms)} spatial dims; expected 3")
    return zooms  # type: ignore[return-value]


def load_volume(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Load a 3D (or 4D, channels last) NIfTI as float32.

    Returns:
        (array float32, 4x4 affine float64, spacing in mm along the three spatial axes).

    Raises:
        ValueError: naming the file when it is missing, unreadable or truncated.
    """
    path = Path(path)
    img = _open(path)
    try:
        data = img.get_fdata(dtype=np.float32)
    except _READ_ERRORS as exc:
        raise ValueError(f"cannot read voxel data of NIfTI file {path} (truncated or corrupt?): "
                         f"{type(exc).__name__}: {exc}") from exc
    return data, np.asarray(img.affine, dtype=np.float64), _spacing(img)


def load_label(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Load a label NIfTI with its stored values (no float conversion when the file holds integers).

    Returns:
        (array as stored, scaled if the header asks for it; 4x4 affine; spacing in mm).
    """
    path = Path(path)
    img = _open(path)
    try:
        data = np.asarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise ValueError(f"cannot read voxel data of NIfTI file {path} (truncated or corrupt?): "
                         f"{type(exc).__name__}: {exc}") from exc
    return data, np.asarray(img.affine, dtype=np.float64), _spacing(img)


def read_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a NIfTI file without reading its voxels."""
    img = _open(Path(path))
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)


def _storable(array: np.ndarray, path: Path) -> np.ndarray:
    """nibabel refuses int64 without an explicit dtype; store 64-bit integers as int32 when they fit."""
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise ValueError(f"cannot write {path}: integer values exceed the int32 range")
        return array.astype(np.int32)
    if array.dtype == bool:
        return array.astype(np.uint8)
    return array


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def save_volume(path: str | os.PathLike[str], array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` (dtype kept) with ``affine`` to ``path`` atomically.

    nibabel chooses gzip from the file suffix, so the temporary file sits in the same folder with the
    same suffix (``.nii.gz`` or ``.nii``) and is moved onto ``path`` with ``os.replace``.
    """
    path = Path(path)
    name = path.name
    if name.endswith(".nii.gz"):
        suffix = ".nii.gz"
    elif name.endswith(".nii"):
        suffix = ".nii"
    else:
        raise ValueError(f"cannot write {path}: NIfTI file names must end in .nii or .nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name[: -len(suffix)]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        img = nib.Nifti1Image(_storable(np.asarray(array), path), np.asarray(affine, dtype=np.float64))
        img.header.set_xyzt_units("mm")
        nib.save(img, str(tmp_path))
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; others must read phantoms/predictions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
