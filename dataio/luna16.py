"""The LUNA16 lung-nodule release (``--dataset_version luna16``): its layout, annotation CSVs, coordinates and folds.

Layout, as distributed::

    {data_path}/subset0 .. subset9/<seriesuid>.mhd + <seriesuid>.raw   (the .mhd's ElementDataFile)
    {data_path}/annotations.csv            seriesuid,coordX,coordY,coordZ,diameter_mm (header row)
    {data_path}/annotations_excluded.csv   same columns; findings that must not count (diameter may be -1)
    {data_path}/seriesuids.csv             one series uid a line, no header (optional)
    {data_path}/candidates.csv             ignored

``data_path`` may also be the folder above, holding ``luna``, ``luna16`` or ``LUNA16``. ``--annotations FILE``
replaces ``annotations.csv`` (e.g. the book chapter's ``annotations_with_malignancy.csv``; extra columns are
ignored); a relative FILE that does not exist from the working folder is looked up in the data folder.

Case id = patient id = the series uid; each case records its subset number. A series without an annotation row is a
negative scan (an all-background label). Annotation rows of series that are not on disk (e.g. subsets not
downloaded) are counted in one warning.

Coordinates: the CSVs give world millimetres in ITK physical coordinates, LPS+ (x towards the patient's Left, y
Posterior, z Superior). Inside volbench world coordinates are NIfTI-style RAS+ millimetres (``CachedCase.affine``,
``Finding.centre_ras_mm``): ``x_ras = -x_lps``, ``y_ras = -y_lps``, ``z_ras = z_lps`` (:func:`lps_to_ras`).
An ITK image maps its continuous index ``i = (x, y, z)`` (volbench array axes; axis 2 = slices) to the physical
point ``p = origin + D @ (spacing * i)`` with the direction matrix ``D`` (:func:`voxel_to_world`); the inverse is
``i = (D^-1 @ (p - origin)) / spacing`` (:func:`world_to_voxel`). (The book chapter's ``xyz2irc`` multiplies the
row vector ``p - origin`` by ``D^-1`` from the right, i.e. applies ``D^-T``: right only for a symmetric ``D``.)
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .types import CaseFiles, Finding

logger = logging.getLogger(__name__)

LUNA_CONVENTION = "binary"
ANNOTATIONS_NAME = "annotations.csv"
EXCLUDED_NAME = "annotations_excluded.csv"
SERIESUIDS_NAME = "seriesuids.csv"
ANNOTATION_COLUMNS: tuple[str, ...] = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
LUNA_PATTERN = ("{data_path}/subset0..subset9/<seriesuid>.mhd + .raw, {data_path}/annotations.csv "
                "(seriesuid,coordX,coordY,coordZ,diameter_mm), optional annotations_excluded.csv and seriesuids.csv")
_SUBSET_RE = re.compile(r"^subset(\d+)$")
_NESTINGS = ("", "luna", "luna16", "LUNA16")
_LPS_RAS = np.array([-1.0, -1.0, 1.0])


# --- coordinates ------------------------------------------------------------------------------------------------

def _points(points: Any, what: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape[-1:] != (3,) or arr.ndim > 2:
        raise ValueError(f"{what}: expected a point (3,) or points (N, 3), got shape {arr.shape}")
    return arr


def lps_to_ras(points: Any) -> np.ndarray:
    """World LPS+ mm (ITK, LUNA16 CSVs) -> RAS+ mm (volbench): x and y change sign. Shape (3,) or (N, 3)."""
    return _points(points, "lps_to_ras") * _LPS_RAS


def ras_to_lps(points: Any) -> np.ndarray:
    """World RAS+ mm (volbench) -> LPS+ mm (ITK, LUNA16 CSVs): x and y change sign. Shape (3,) or (N, 3)."""
    return _points(points, "ras_to_lps") * _LPS_RAS


def _direction(direction: Any) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    if d.size != 9:
        raise ValueError(f"direction must hold 9 values (a 3x3 matrix, row-major as ITK gives it), got {d.size}")
    return d.reshape(3, 3)


def voxel_to_world(index_xyz: Any, origin: Sequence[float], spacing: Sequence[float], direction: Any) -> np.ndarray:
    """ITK continuous index (x, y, z) -> physical point (LPS+ mm): ``origin + D @ (spacing * index)``.

    ``direction`` is ITK's 3x3 direction matrix (or its 9 values, row-major); shape (3,) or (N, 3) in and out.
    """
    index = _points(index_xyz, "voxel_to_world")
    return np.asarray(origin, dtype=np.float64) + (index * np.asarray(spacing, dtype=np.float64)) @ _direction(
        direction).T


def world_to_voxel(point_xyz: Any, origin: Sequence[float], spacing: Sequence[float], direction: Any) -> np.ndarray:
    """Physical point (LPS+ mm) -> ITK continuous index (x, y, z): ``(D^-1 @ (point - origin)) / spacing``.

    Correct for any invertible direction matrix, symmetric or not; shape (3,) or (N, 3) in and out.
    """
    rel = _points(point_xyz, "world_to_voxel") - np.asarray(origin, dtype=np.float64)
    return (rel @ np.linalg.inv(_direction(direction)).T) / np.asarray(spacing, dtype=np.float64)


def lps_affine(origin: Sequence[float], spacing: Sequence[float], direction: Any) -> np.ndarray:
    """4x4 map from array index (x, y, z) to the ITK physical point (LPS+ mm): ``[D @ diag(spacing) | origin]``."""
    affine = np.eye(4)
    affine[:3, :3] = _direction(direction) @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


def ras_affine(origin: Sequence[float], spacing: Sequence[float], direction: Any) -> np.ndarray:
    """4x4 NIfTI-style affine (array index (x, y, z) -> RAS+ mm): ``diag(-1, -1, 1, 1) @ lps_affine``."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine(origin, spacing, direction)


# --- files ------------------------------------------------------------------------------------------------------

def raw_file_of(mhd: Path) -> Path | None:
    """The voxel file named by a ``.mhd`` header's ``ElementDataFile`` (``None`` for ``LOCAL``: data in the header).

    Raises:
        ValueError: the header is unreadable or names no ``ElementDataFile``, or that file does not exist.
    """
    try:
        lines = mhd.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {mhd}: {exc}") from exc
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    value = next((v.strip() for k, v in values.items() if k.strip() == "ElementDataFile"), None)
    if not value:
        raise ValueError(f"{mhd}: the header names no ElementDataFile (the .raw holding the voxels)")
    if value.upper() == "LOCAL":
        return None
    if value.upper().startswith("LIST") or "%" in value:
        raise ValueError(f"{mhd}: ElementDataFile {value!r} (a list of slice files) is not supported; LUNA16 "
                         "headers name one .raw file")
    raw = mhd.parent / value
    if not raw.is_file():
        raise ValueError(f"{mhd}: its voxel file {raw} (ElementDataFile {value}) does not exist; copy the .raw "
                         "beside the .mhd")
    return raw


@dataclass(frozen=True)
class AnnotationRow:
    """One row of a LUNA16 annotation CSV: series, centre in LPS+ mm, diameter in mm, and where it was read."""

    seriesuid: str
    centre_lps_mm: tuple[float, float, float]
    diameter_mm: float
    origin: str


def read_annotation_rows(path: Path) -> list[AnnotationRow]:
    """Rows of an annotation CSV with the columns :data:`ANNOTATION_COLUMNS` (extra columns ignored).

    Raises:
        ValueError: naming the file (and line) when it cannot be read, lacks a column or holds a non-number.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [(f or "").strip() for f in reader.fieldnames or []]
            raw = [({(k or "").strip(): (v or "").strip() for k, v in row.items()}, reader.line_num) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read annotation file {path}: {exc}") from exc
    missing = [c for c in ANNOTATION_COLUMNS if c not in fields]
    if missing:
        raise ValueError(f"annotation file {path}: missing columns {missing}; expected the header "
                         f"{','.join(ANNOTATION_COLUMNS)} (found {fields})")
    rows = []
    for row, line in raw:
        if not any(row.values()):
            continue
        try:
            values = [float(row[c]) for c in ANNOTATION_COLUMNS[1:]]
        except (TypeError, ValueError):
            raise ValueError(f"annotation file {path} line {line}: coordX, coordY, coordZ and diameter_mm must be "
                             f"numbers, got {[row.get(c) for c in ANNOTATION_COLUMNS[1:]]}") from None
        if not all(math.isfinite(v) for v in values) or not row["seriesuid"]:
            raise ValueError(f"annotation file {path} line {line}: empty seriesuid or a non-finite value {values}")
        rows.append(AnnotationRow(row["seriesuid"], (values[0], values[1], values[2]), values[3],
                                  f"{path} line {line}"))
    return rows


def _data_folder(data_path: Path) -> Path:
    for nesting in _NESTINGS:
        folder = data_path / nesting if nesting else data_path
        if folder.is_dir() and any(p.is_dir() and _SUBSET_RE.match(p.name) for p in folder.iterdir()):
            return folder
    raise ValueError(f"--data_path {data_path} holds no subset0..subset9 folders; expected the luna16 layout "
                     f"{LUNA_PATTERN}")


def _scans(folder: Path) -> dict[str, tuple[Path, int]]:
    """Series uid -> (``.mhd`` file, subset number) of every scan of the subset folders."""
    found: dict[str, tuple[Path, int]] = {}
    subsets = sorted((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _SUBSET_RE.match(p.name)))
    for number, subset in subsets:
        for mhd in sorted(subset.glob("*.mhd")):
            if mhd.name.startswith("."):
                continue
            uid = mhd.name[: -len(".mhd")]
            if uid in found:
                raise ValueError(f"series {uid} is in two subsets: {found[uid][0]} and {mhd}; each series must be in "
                                 "one subset folder")
            found[uid] = (mhd, number)
    return found


def _annotation_file(folder: Path, annotations: str | None) -> Path:
    if annotations is None:
        return folder / ANNOTATIONS_NAME
    given = Path(annotations).expanduser()
    if given.is_absolute() or given.is_file():
        return given
    return folder / given


def _check_listed(folder: Path, scans: dict[str, tuple[Path, int]]) -> None:
    """Warn about scans that ``seriesuids.csv`` (when present) does not list."""
    listing = folder / SERIESUIDS_NAME
    if not listing.is_file():
        return
    listed = {line.strip() for line in listing.read_text(encoding="utf-8-sig").splitlines() if line.strip()}
    unlisted = sorted(set(scans) - listed)
    if unlisted:
        logger.warning("%d series on disk are not listed in %s (e.g. %s)", len(unlisted), listing, unlisted[0])


def find_luna_cases(data_path: Path | None, *, annotations: str | None = None,
                    require_labels: bool = True) -> list[CaseFiles]:
    """The LUNA16 scans under ``data_path`` (layout in the module docstring), sorted by series uid.

    Each case has ``images={"ct": <.mhd>}``, ``extra_files=(<.raw>,)``, its ``subset`` and ``findings``: its
    annotation rows (``excluded=False``) then its ``annotations_excluded.csv`` rows (``excluded=True``), centres in
    RAS+ mm; ``findings`` is ``None`` only when no annotation file exists and ``require_labels`` is False.

    Raises:
        ValueError: no data folder or no subset folders or scans, a missing ``.raw``, a series in two subsets, a
            missing annotation file (``--annotations`` given, or ``require_labels``), a malformed CSV row.
    """
    if data_path is None:
        raise ValueError(f"--data_path is required for --dataset_version luna16; expected {LUNA_PATTERN}")
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data_path {root} is not a folder; expected the luna16 layout {LUNA_PATTERN}")
    folder = _data_folder(root)
    scans = _scans(folder)
    if not scans:
        raise ValueError(f"no .mhd scans in the subset folders of {folder}; expected {LUNA_PATTERN}")
    _check_listed(folder, scans)
    findings = _findings_by_series(folder, annotations, set(scans), require_labels)
    cases = []
    for uid, (mhd, subset) in sorted(scans.items()):
        raw = raw_file_of(mhd)
        cases.append(CaseFiles(case_id=uid, patient_id=uid, images={"ct": mhd}, convention=LUNA_CONVENTION,
                               origin=str(mhd), extra_files=() if raw is None else (raw,),
                               findings=None if findings is None else tuple(findings.get(uid, ())), subset=subset))
    n_positive = sum(1 for c in cases if c.findings and any(not f.excluded for f in c.findings))
    logger.info("found %d LUNA16 scans in %d subsets under %s (%d with nodules)", len(cases),
                len({c.subset for c in cases}), folder, n_positive)
    return cases


def _findings_by_series(folder: Path, annotations: str | None, on_disk: set[str],
                        require_labels: bool) -> dict[str, list[Finding]] | None:
    """Series uid -> findings (annotations, then excluded ones); ``None`` when unlabelled (see find_luna_cases)."""
    path = _annotation_file(folder, annotations)
    if not path.is_file():
        if annotations is not None or require_labels:
            flag = f"--annotations {annotations}" if annotations is not None else "the annotation file"
            raise ValueError(f"{flag}: {path} does not exist; LUNA16 labels are built from its rows "
                             f"({','.join(ANNOTATION_COLUMNS)})")
        logger.info("no %s: the LUNA16 scans are read without labels", path)
        return None
    rows = [(r, False) for r in read_annotation_rows(path)]
    excluded = folder / EXCLUDED_NAME
    if excluded.is_file():
        rows += [(r, True) for r in read_annotation_rows(excluded)]
    else:
        logger.info("no %s: no finding is excluded from the evaluation", excluded)
    by_series: dict[str, list[Finding]] = {}
    absent = [r for r, _ in rows if r.seriesuid not in on_disk]
    for row, is_excluded in rows:
        if row.seriesuid in on_disk:
            x, y, z = (float(v) for v in lps_to_ras(row.centre_lps_mm))
            by_series.setdefault(row.seriesuid, []).append(
                Finding(centre_ras_mm=(x, y, z), diameter_mm=row.diameter_mm, excluded=is_excluded, origin=row.origin))
    if absent:
        logger.warning("%d annotation rows (%d series) name series that are not in the subset folders of %s "
                       "(subsets not downloaded?); they are ignored", len(absent),
                       len({r.seriesuid for r in absent}), folder)
    return by_series


# --- folds ------------------------------------------------------------------------------------------------------

def subset_splits(case_ids: list[str], subsets: dict[str, int], *, split_seed: int | None = None) -> dict[str, Any]:
    """Cross-validation folds from the release's subsets (``--use_subset_folds``), in the split format of
    :func:`dataio.splits.make_splits` with ``use_5fold=True`` (``mode`` ``"5fold"``, whatever the fold count).

    Rule: the highest-numbered subset present is the test set; every other subset present, in increasing order, is
    the validation set of one fold (fold k validates on the k-th of them) and the remaining non-test subsets train.
    So LUNA16's ten subsets give test = subset9 and nine folds. The dict also records ``subset_folds: True``,
    ``test_subset`` and ``fold_subsets`` (the validation subset of each fold); case id lists are sorted.

    Raises:
        ValueError: duplicate case ids, a case without a subset number, or fewer than 3 subsets present.
    """
    from .splits import check_disjoint  # here: dataio.splits imports scikit-learn, which the adapters need not

    if len(set(case_ids)) != len(case_ids):
        raise ValueError("--use_subset_folds: duplicate case ids")
    missing = sorted(c for c in case_ids if c not in subsets)
    if missing:
        raise ValueError(f"--use_subset_folds: {len(missing)} cases have no subset number (e.g. {missing[0]}); "
                         "the folds need the LUNA16 subsetN folders")
    present = sorted({int(subsets[c]) for c in case_ids})
    if len(present) < 3:
        raise ValueError(f"--use_subset_folds needs cases from at least 3 subsets (test, validation and training "
                         f"each take one), got subsets {present}")
    test_subset, fold_subsets = present[-1], present[:-1]

    def cases_in(numbers: list[int]) -> list[str]:
        return sorted(c for c in case_ids if int(subsets[c]) in numbers)

    folds = [{"fold": k, "train": cases_in([s for s in fold_subsets if s != v]), "val": cases_in([v])}
             for k, v in enumerate(fold_subsets)]
    splits = {"split_seed": split_seed, "mode": "5fold", "test": cases_in([test_subset]), "folds": folds,
              "subset_folds": True, "test_subset": test_subset, "fold_subsets": fold_subsets}
    check_disjoint(splits)
    logger.info("subset folds: test subset%d (%d cases), %d folds validating on subsets %s", test_subset,
                len(splits["test"]), len(folds), fold_subsets)
    return splits
