"""Layouts of the CT haemorrhage (ICH) data: an image/label folder pair, or a CSV manifest with a mask folder.

Layouts of ``--dataset_version ich`` (one CT channel ``ct``, binary labels 0 background / 1 haemorrhage):

a. folders: ``{data_path}/images/CASE.{nii.gz,nii,npy}`` and ``{data_path}/labels/`` holding the label of
   each image named ``CASE`` (like the image) or ``CASE_seg`` / ``CASE_mask`` / ``CASE_label``, in any of
   ``.nii.gz``, ``.nii``, ``.npy``. Optional separate test folders (``--test_image_dir``,
   ``--test_label_dir``, same naming) whose cases form the test split.
b. manifest: ``--manifest FILE.csv`` with columns ``path,ich[,patient_id]`` (the SAM-Med3D fine-tuning
   seed's table): ``path`` is the image (relative to the CSV's folder, or absolute), ``ich`` 0/1 says whether
   the scan holds a haemorrhage; ``--mask_dir DIR`` holds the masks ``{stem}.{nii.gz,nii,npy}`` of the image
   files. A row with ``ich`` = 1 needs a mask; ``ich`` = 0 without a mask is an all-background label; the
   ``ich`` value must agree with the mask (checked when the case is preprocessed).

Case id = the image file name without its extension. Patient id = the case id, the manifest's
``patient_id`` when given, or (``--patient_regex``) the first group of the regex (the whole match when it has
no group) searched in the file stem; a stem that does not match is an error.
Pickled images (``.pkl``, ``.pickle``) are refused unless ``allow_pickle`` (see :mod:`dataio.ct_io`).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .ct_io import MASK_EXTS, NIFTI_EXTS, is_pickle, pickle_refusal, split_ext
from .input_errors import map_all
from .types import CaseFiles

logger = logging.getLogger(__name__)

CT_CONVENTION = "binary"
IMAGES_DIR, LABELS_DIR = "images", "labels"
LABEL_SUFFIXES: tuple[str, ...] = ("", "_seg", "_mask", "_label")
FOLDER_PATTERN = ("{data_path}/images/CASE.{nii.gz,nii,npy} + {data_path}/labels/CASE[_seg|_mask|_label]."
                  "{nii.gz,nii,npy}, or --manifest FILE.csv (columns path,ich,patient_id) with --mask_dir DIR")


@dataclass
class CTOptions:
    """Options of the CT layouts and preprocessing (CLI flags in brackets; spacings in mm, HU in Hounsfield units):
    the ``ich`` layouts, and (``annotations``, ``nodule_hu_threshold``, ``use_subset_folds``) LUNA16's.
    The sweep's ``DataOptions`` extends this class, so each flag is declared once.

    Attributes:
        test_image_dir, test_label_dir: separate test folders (``--test_image_dir``, ``--test_label_dir``).
        patient_regex: patient id from the file stem (``--patient_regex``); ``None``: one patient per file.
        manifest, mask_dir: the CSV layout (``--manifest``, ``--mask_dir``).
        spacing: voxel spacing of files without a header, ``.npy`` / ``.pkl`` (``--spacing``).
        hu_window: HU range mapped to [0, 1] with clipping (``--hu_window``); ``None``: the dataset's own
            (:func:`dataio.adapters.default_hu_window`: ich [0, 120], LUNA16 [-1000, 1000]).
        target_spacing: resample to this spacing (``--target_spacing``); ``None``: keep each scan's grid.
        allow_pickle: read ``.pkl`` / ``.pickle`` files (``--allow_pickle``).
        annotations: LUNA16 annotation CSV (``--annotations``); ``None``: ``annotations.csv`` of the data folder.
        nodule_hu_threshold: LUNA16 nodule masks keep the voxels above this HU (``--nodule_hu_threshold``).
        use_subset_folds: LUNA16 cross-validation folds from the release's subsets (``--use_subset_folds``,
            :func:`dataio.luna16.subset_splits`); not used by the data loading itself.
    """

    test_image_dir: str | None = None
    test_label_dir: str | None = None
    patient_regex: str | None = None
    manifest: str | None = None
    mask_dir: str | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_window: tuple[float, float] | None = None
    target_spacing: tuple[float, float, float] | None = None
    allow_pickle: bool = False
    annotations: str | None = None
    nodule_hu_threshold: float = -700.0
    use_subset_folds: bool = False


def _compile(regex: str | None) -> re.Pattern[str] | None:
    if regex is None:
        return None
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ValueError(f"--patient_regex {regex!r} is not a valid regular expression: {exc}") from None


def patient_of(stem: str, pattern: re.Pattern[str] | None, source: Path) -> str:
    """Patient id of a file stem: the first group of ``pattern`` (the whole match without groups), else the stem."""
    if pattern is None:
        return stem
    match = pattern.search(stem)
    if match is None:
        raise ValueError(f"{source}: file name stem {stem!r} does not match --patient_regex {pattern.pattern!r}; "
                         "every file needs a patient id (use a regex that matches every name)")
    value = match.group(1) if pattern.groups else match.group(0)
    if not value:
        raise ValueError(f"{source}: --patient_regex {pattern.pattern!r} gives an empty patient id for {stem!r}")
    return value


def _ct_files(folder: Path, what: str) -> dict[str, Path]:
    """stem -> file of the CT files in ``folder``; two files with one stem are an error."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        parts = split_ext(path.name)
        if parts is not None:
            found.setdefault(parts[0], []).append(path)
    clashes = {s: p for s, p in found.items() if len(p) > 1}
    if clashes:
        stem, paths = next(iter(sorted(clashes.items())))
        raise ValueError(f"{what} {folder}: {len(paths)} files share the name {stem!r}: "
                         f"{', '.join(p.name for p in paths)}; keep one format per case")
    return {s: p[0] for s, p in found.items()}


def _check_pickle(path: Path, allow_pickle: bool) -> None:
    if is_pickle(path) and not allow_pickle:
        raise ValueError(pickle_refusal(path))


def _label_for(stem: str, labels: dict[str, Path], label_dir: Path) -> Path | None:
    matches = [labels[stem + suffix] for suffix in LABEL_SUFFIXES if stem + suffix in labels]
    if len(matches) > 1:
        raise ValueError(f"label folder {label_dir}: several labels for image {stem!r}: "
                         f"{', '.join(m.name for m in matches)}; keep one")
    return matches[0] if matches else None


def find_folder_cases(image_dir: Path, label_dir: Path | None, options: CTOptions, *, require_labels: bool,
                      fixed_split: str = "", image_flag: str = "--data_path DIR/images",
                      label_flag: str = "--data_path DIR/labels") -> list[CaseFiles]:
    """Cases of an image folder and its label folder (layout a).

    Raises:
        ValueError: missing folder, no image file, a missing label (``require_labels``), a pickled file
            without ``--allow_pickle``, a file stem not matching ``--patient_regex``.
    """
    image_dir = Path(image_dir).expanduser()
    if not image_dir.is_dir():
        raise ValueError(f"{image_flag}: image folder {image_dir} does not exist; expected {FOLDER_PATTERN}")
    images = _ct_files(image_dir, "image folder")
    if not images:
        raise ValueError(f"{image_flag}: image folder {image_dir} holds no .nii.gz, .nii, .npy (or .pkl) files; "
                         f"expected {FOLDER_PATTERN}")
    labels: dict[str, Path] = {}
    if label_dir is not None:
        label_dir = Path(label_dir).expanduser()
        if not label_dir.is_dir():
            if require_labels:
                raise ValueError(f"{label_flag}: label folder {label_dir} does not exist; expected {FOLDER_PATTERN}")
            label_dir = None
        else:
            labels = _ct_files(label_dir, "label folder")
    elif require_labels:
        raise ValueError(f"{image_flag}: no label folder given for image folder {image_dir}")
    pattern = _compile(options.patient_regex)

    def case_of(item: tuple[str, Path]) -> CaseFiles:
        stem, image = item
        _check_pickle(image, options.allow_pickle)
        label = _label_for(stem, labels, label_dir) if label_dir is not None else None
        if label is None and require_labels:
            raise ValueError(f"image {image} has no label in {label_dir} (expected {stem}.nii.gz, .nii or .npy, "
                             f"optionally with suffix {'/'.join(s for s in LABEL_SUFFIXES if s)})")
        if label is not None:
            _check_pickle(label, options.allow_pickle)
        return CaseFiles(case_id=stem, patient_id=patient_of(stem, pattern, image), images={"ct": image},
                         label=label, convention=CT_CONVENTION, origin=str(image),
                         allow_pickle=options.allow_pickle, fixed_split=fixed_split)

    return map_all(case_of, sorted(images.items()))  # every image without a label (or pickled) at once


def _parse_flag(value: str, manifest: Path, line: int) -> bool:
    text = (value or "").strip().lower()
    if text in ("1", "1.0", "true", "yes"):
        return True
    if text in ("0", "0.0", "false", "no"):
        return False
    raise ValueError(f"--manifest {manifest} line {line}: column ich is {value!r}; expected 0 or 1")


def _mask_for(stem: str, mask_dir: Path) -> Path | None:
    for ext in MASK_EXTS:
        candidate = mask_dir / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def find_manifest_cases(manifest: Path, mask_dir: Path, options: CTOptions, *,
                        require_labels: bool = True) -> list[CaseFiles]:
    """Cases listed in a CSV manifest (layout b), with masks from ``mask_dir``.

    Raises:
        ValueError: missing manifest or mask folder, missing columns, an ``ich`` value other than 0/1, a
            listed image missing on disk (naming the line and path), a row with ``ich`` = 1 without a mask,
            a pickled image without ``--allow_pickle``, an empty manifest.
    """
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise ValueError(f"--manifest {manifest} does not exist")
    mask_dir = Path(mask_dir).expanduser()
    if not mask_dir.is_dir():
        raise ValueError(f"--mask_dir {mask_dir} is not a folder")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            rows = [({(k or "").strip(): (v or "").strip() for k, v in row.items()}, reader.line_num) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read --manifest {manifest}: {exc}") from exc
    missing = [c for c in ("path", "ich") if c not in fields]
    if missing:
        raise ValueError(f"--manifest {manifest}: missing columns {missing}; expected path,ich,patient_id "
                         f"(found {fields})")
    if not rows:
        raise ValueError(f"--manifest {manifest} lists no cases")
    pattern = _compile(options.patient_regex)
    cases = []
    for row, line in rows:
        if not row.get("path"):
            raise ValueError(f"--manifest {manifest} line {line}: empty path")
        image = Path(row["path"]).expanduser()
        image = image if image.is_absolute() else manifest.parent / image
        origin = f"--manifest {manifest} line {line}"
        if not image.is_file():
            raise ValueError(f"{origin}: image {image} (path {row['path']!r}) does not exist")
        parts = split_ext(image.name)
        if parts is None:
            raise ValueError(f"{origin}: image {image} is not a .nii.gz, .nii or .npy (or .pkl) file")
        _check_pickle(image, options.allow_pickle)
        stem = parts[0]
        lesion = _parse_flag(row["ich"], manifest, line)
        mask = _mask_for(stem, mask_dir)
        if mask is None and lesion:
            raise ValueError(f"{origin}: case {stem} has ich=1 but --mask_dir {mask_dir} holds no mask "
                             f"{stem}.nii.gz, {stem}.nii or {stem}.npy")
        patient = row.get("patient_id") or patient_of(stem, pattern, image)
        cases.append(CaseFiles(case_id=stem, patient_id=patient, images={"ct": image}, label=mask,
                               convention=CT_CONVENTION, empty_label=mask is None, has_lesion=lesion,
                               origin=origin, allow_pickle=options.allow_pickle))
    return cases


def _check_unique(cases: list[CaseFiles]) -> None:
    dupes = sorted(c for c, n in Counter(c.case_id for c in cases).items() if n > 1)
    if dupes:
        where = [c.origin for c in cases if c.case_id == dupes[0]]
        raise ValueError(f"case id {dupes[0]!r} (the file name without extension) is used by several files: "
                         f"{'; '.join(where)}; case ids must be unique")


def find_ct_cases(data_path: Path | None, options: CTOptions, *, require_labels: bool = True) -> list[CaseFiles]:
    """Cases of ``--dataset_version ich`` (or the synthetic CT phantoms): the manifest layout when
    ``options.manifest`` is set, else the folder layout under ``data_path``; plus the separate test folders.

    Test-folder cases carry ``fixed_split="test"``. Sorted by case id.
    """
    if options.manifest:
        if not options.mask_dir:
            raise ValueError("--manifest needs --mask_dir DIR (the folder holding the masks)")
        cases = find_manifest_cases(Path(options.manifest), Path(options.mask_dir), options,
                                    require_labels=require_labels)
    else:
        if data_path is None:
            raise ValueError("--data_path is required for --dataset_version ich (or --manifest FILE.csv with "
                             f"--mask_dir DIR); expected {FOLDER_PATTERN}")
        root = Path(data_path).expanduser()
        if not root.is_dir():
            raise ValueError(f"--data_path {root} is not a folder; expected the ich layout {FOLDER_PATTERN}")
        if not (root / IMAGES_DIR).is_dir():
            raise ValueError(f"--data_path {root} has no {IMAGES_DIR}/ folder; expected the ich layout "
                             f"{FOLDER_PATTERN}")
        cases = find_folder_cases(root / IMAGES_DIR, root / LABELS_DIR, options, require_labels=require_labels)
    if options.test_image_dir:
        label_dir = Path(options.test_label_dir) if options.test_label_dir else None
        cases += find_folder_cases(Path(options.test_image_dir), label_dir, options, require_labels=require_labels,
                                   fixed_split="test", image_flag="--test_image_dir", label_flag="--test_label_dir")
    _check_unique(cases)
    cases.sort(key=lambda c: c.case_id)
    n_test = sum(c.fixed_split == "test" for c in cases)
    logger.info("found %d CT cases%s", len(cases), f" ({n_test} in the test folders)" if n_test else "")
    return cases


def headerless(cases: list[CaseFiles]) -> bool:
    """True when some file of ``cases`` has no affine/spacing of its own (``.npy``, pickles)."""
    files = [p for c in cases for p in [*c.images.values(), c.label] if p is not None]
    return any(not str(p).lower().endswith(NIFTI_EXTS) for p in files)
