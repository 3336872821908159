"""Reading CT volumes and masks stored as NIfTI, ``.npy`` or (opt-in) pickled arrays.

Formats:
- ``.nii.gz`` / ``.nii``: voxels, affine and spacing from the file (nibabel).
- ``.npy``: voxels only (read with ``allow_pickle=False``); spacing comes from ``--spacing`` (mm, default
  1 1 1) and the affine is ``diag(spacing)`` with the origin at 0. No affine check applies to them.
- ``.pkl`` / ``.pickle``: refused unless the user passes ``--allow_pickle``, because unpickling runs
  arbitrary code stored in the file. With the flag: a numpy array, or a dict holding one under ``image``
  or ``data`` (images) / ``label``, ``mask``, ``seg`` or ``data`` (masks); spacing as for ``.npy``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .nifti_io import load_label, load_volume

NIFTI_EXTS: tuple[str, ...] = (".nii.gz", ".nii")
PICKLE_EXTS: tuple[str, ...] = (".pkl", ".pickle")
CT_EXTS: tuple[str, ...] = NIFTI_EXTS + (".npy",) + PICKLE_EXTS
MASK_EXTS: tuple[str, ...] = NIFTI_EXTS + (".npy",)
_IMAGE_KEYS = ("image", "data")
_MASK_KEYS = ("label", "mask", "seg", "data")


def split_ext(name: str) -> tuple[str, str] | None:
    """``(stem, extension)`` of a CT file name (``.nii.gz`` before ``.nii``), or ``None`` for other files."""
    lower = name.lower()
    for ext in CT_EXTS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def is_pickle(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(PICKLE_EXTS)


def has_header(path: str | os.PathLike[str]) -> bool:
    """True for formats that carry an affine and spacing (NIfTI)."""
    return str(path).lower().endswith(NIFTI_EXTS)


def pickle_refusal(path: str | os.PathLike[str]) -> str:
    """The message that refuses a pickled file without ``--allow_pickle``."""
    return (f"{path}: pickled files (.pkl, .pickle) are refused by default because unpickling runs arbitrary code "
            "stored in the file; convert it to .npy or NIfTI, or pass --allow_pickle if you trust its source")


@dataclass
class CTArray:
    """One volume as read: the array (as stored for masks, float32 for images), its grid and its origin."""

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    has_affine: bool  # the file carries an affine (NIfTI): grids of two such files are compared


def _diag_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    return np.diag([float(s) for s in spacing] + [1.0])


def _from_pickle(path: Path, keys: tuple[str, ...], what: str, *, allow_pickle: bool) -> np.ndarray:
    """The array of a pickled file; refused (``ValueError``) unless the user opted in with ``--allow_pickle``."""
    if not allow_pickle:
        raise ValueError(pickle_refusal(path))
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 -- the user opted in with --allow_pickle (checked just above)
    except Exception as exc:  # unpickling can raise anything
        raise ValueError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), np.ndarray):
                return obj[key]
    kind = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{path}: the pickle holds {kind}; expected a numpy array or a dict with a numpy array under "
                     f"one of {list(keys)} ({what})")


def _from_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(f"{path} holds Python objects (a pickled array), not numbers; save a numeric array "
                             "with numpy.save") from exc
        raise ValueError(f"cannot read {path}: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def read_ct(path: str | os.PathLike[str], *, mask: bool, npy_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
            allow_pickle: bool = False) -> CTArray:
    """Read a 3D CT image (float32) or mask (values as stored) with its affine and spacing (mm).

    A trailing channel axis of size 1 (X, Y, Z, 1) is dropped.

    Raises:
        ValueError: naming the file when it is missing, unreadable, pickled without ``allow_pickle``, not
            numeric, or not 3D.
    """
    path = Path(path)
    if has_header(path):
        data, affine, spacing = load_label(path) if mask else load_volume(path)
        has_affine = True
    else:
        raw = _from_pickle(path, _MASK_KEYS if mask else _IMAGE_KEYS, "mask" if mask else "image",
                           allow_pickle=allow_pickle) if is_pickle(path) else _from_npy(path)
        if raw.dtype.kind not in "biuf":
            raise ValueError(f"{path}: array dtype {raw.dtype} is not numeric")
        data = raw if mask else raw.astype(np.float32, copy=False)
        spacing = tuple(float(s) for s in npy_spacing)
        affine, has_affine = _diag_affine(spacing), False  # type: ignore[arg-type]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path} has shape {tuple(data.shape)}; expected a 3D volume (X, Y, Z)")
    return CTArray(data=np.asarray(data), affine=np.asarray(affine, dtype=np.float64),
                   spacing=tuple(float(s) for s in spacing[:3]), has_affine=has_affine)  # type: ignore[arg-type]
