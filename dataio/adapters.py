"""Dataset adapters: find the files of every case of a dataset release on disk.

One small finder per layout, chosen from ``_FINDERS`` by ``dataset_version``. Each finder accepts
``data_path`` pointing at the archive's parent folder, at the archive's inner folder, or at the seed
repository's ``{data_path}/BRATS2018`` / ``BRATS2021`` nesting.

Layouts (file names as released):
- brats2018: ``MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/Brats18_*/Brats18_*_{t1,t1ce,t2,flair,seg}.nii.gz``
- brats2021 / synthetic: ``BraTS2021_Training_Data/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``
- brats2023: ``<any folder up to 2 levels down>/BraTS-<TAG>-XXXXX-YYY/``
  ``BraTS-<TAG>-XXXXX-YYY-{t1n,t1c,t2w,t2f,seg}.nii.gz``
  (patient id ``XXXXX``; ``YYY`` numbers the time points)
- msd_task01: ``Task01_BrainTumour/imagesTr/BRATS_XXX.nii.gz`` (4D: FLAIR, T1w, T1gd, T2w) + ``labelsTr/``
- ich / synthetic_ich (head CT, one channel ``ct``, binary haemorrhage labels): ``images/`` + ``labels/``
  folders or a CSV manifest with a mask folder, see :mod:`dataio.ct_adapters`.
- luna16 / synthetic_luna (chest CT, one channel ``ct``, binary nodule labels built from the annotation CSV):
  ``subset0..subset9/<seriesuid>.mhd`` + ``.raw`` and ``annotations.csv``, see :mod:`dataio.luna16`.
- nnunet / datalist (``DESCRIBED_VERSIONS``: any channels, multi-class labels and regions declared by a file): an
  nnU-Net raw folder (:mod:`dataio.nnunet_raw`) or a MONAI datalist (:mod:`dataio.datalist`); their description
  decides channels and labels, so they are read by :mod:`dataio.described`, not by :func:`discover_cases`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from .ct_adapters import FOLDER_PATTERN, CTOptions, find_ct_cases
from .luna16 import LUNA_PATTERN, find_luna_cases
from .types import CaseFiles, DatasetInfo
from .input_errors import map_all, raise_if_any

logger = logging.getLogger(__name__)

DATASET_VERSIONS: tuple[str, ...] = ("synthetic", "brats2018", "brats2021", "brats2023", "msd_task01", "ich",
                                     "synthetic_ich", "luna16", "synthetic_luna", "nnunet", "datalist")
CT_VERSIONS: tuple[str, ...] = ("ich", "synthetic_ich")  # head CT, one channel, binary haemorrhage labels
LUNA_VERSIONS: tuple[str, ...] = ("luna16", "synthetic_luna")  # chest CT, one channel, binary nodule labels
DESCRIBED_VERSIONS: tuple[str, ...] = ("nnunet", "datalist")  # channels and labels from a description file
SYNTHETIC_VERSIONS: tuple[str, ...] = ("synthetic", "synthetic_ich", "synthetic_luna")  # generated without --data_path
# HU window of each CT version when --hu_window is not given: ich's brain window, the LUNA chapter's clip
DEFAULT_HU_WINDOWS: dict[str, tuple[float, float]] = {"ich": (0.0, 120.0), "synthetic_ich": (0.0, 120.0),
                                                      "luna16": (-1000.0, 1000.0), "synthetic_luna": (-1000.0, 1000.0)}


def dataset_info(dataset_version: str) -> DatasetInfo:
    """Channels and label kind of a dataset version: four BraTS MRI modalities with BraTS labels, or one CT channel
    ``ct`` with binary labels: region ``ich`` (``ich``, ``synthetic_ich``) or ``nodule`` (``luna16``,
    ``synthetic_luna``, whose lesion hit rule is LUNA16's ``radius``). For ``nnunet`` / ``datalist`` only the label kind
    ``multiclass`` is known before the description file is read (one generic channel and label stand in; the
    loaded dataset's info, :func:`dataio.described.open_described`, has the file's)."""
    if dataset_version not in DATASET_VERSIONS:
        raise ValueError(f"unknown dataset_version {dataset_version!r}; known: {', '.join(DATASET_VERSIONS)}")
    if dataset_version in DESCRIBED_VERSIONS:
        return DatasetInfo(name=dataset_version, channels=("ch0",), label_kind="multiclass", labels=("label1",))
    if dataset_version in CT_VERSIONS:
        return DatasetInfo(name=dataset_version, channels=("ct",), label_kind="binary", region="ich")
    if dataset_version in LUNA_VERSIONS:
        return DatasetInfo(name=dataset_version, channels=("ct",), label_kind="binary", region="nodule",
                           lesion_hit="radius")
    return DatasetInfo(name=dataset_version)


def default_hu_window(dataset_version: str, hu_window: tuple[float, float] | None = None) -> tuple[float, float]:
    """The HU window of a CT version: ``hu_window`` when given (``--hu_window``), else the version's own
    (:data:`DEFAULT_HU_WINDOWS`: ich [0, 120], LUNA16 [-1000, 1000]); floats.

    Raises:
        ValueError: for a version that is not CT (BraTS MRI has no HU window).
    """
    if dataset_version not in DEFAULT_HU_WINDOWS:
        raise ValueError(f"--hu_window: --dataset_version {dataset_version} is not a CT version "
                         f"({', '.join(DEFAULT_HU_WINDOWS)})")
    window = DEFAULT_HU_WINDOWS[dataset_version] if hu_window is None else hu_window
    return float(window[0]), float(window[1])


_BRATS21_SUFFIX = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
_BRATS23_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
_MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")
_NIFTI_EXTS = (".nii.gz", ".nii")

_RE_BRATS18 = re.compile(r"^Brats18_.+$")
_RE_BRATS21 = re.compile(r"^BraTS2021_\d+$")
_RE_BRATS23 = re.compile(r"^BraTS-[A-Za-z]+-(\d+)-(\d+)$")

EXPECTED_PATTERN: dict[str, str] = {
    "brats2018": "{data_path}/MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/Brats18_*/"
                 "Brats18_*_{t1,t1ce,t2,flair,seg}.nii.gz",
    "brats2021": "{data_path}/BraTS2021_Training_Data/BraTS2021_XXXXX/"
                 "BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz",
    "synthetic": "{data_path}/BraTS2021_Training_Data/BraTS2021_XXXXX/"
                 "BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz",
    "brats2023": "{data_path}/<folder, up to 2 levels>/BraTS-GLI-XXXXX-YYY/"
                 "BraTS-GLI-XXXXX-YYY-{t1n,t1c,t2w,t2f,seg}.nii.gz",
    "msd_task01": "{data_path}/Task01_BrainTumour/imagesTr/BRATS_XXX.nii.gz and labelsTr/BRATS_XXX.nii.gz",
    "ich": FOLDER_PATTERN,
    "synthetic_ich": "{data_path}/images/ICHSYN_XXXXX.nii.gz + {data_path}/labels/ICHSYN_XXXXX.nii.gz",
    "luna16": LUNA_PATTERN,
    "synthetic_luna": LUNA_PATTERN,
    "nnunet": "{data_path}/dataset.json, imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz [, imagesTs/ + labelsTs/]",
    "datalist": "{data_path}/datalist.json (or --datalist FILE) listing training/testing image and label paths",
}


def _existing(folder: Path, stem: str) -> Path | None:
    for ext in _NIFTI_EXTS:
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _subdirs(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and pattern.match(p.name))


def _candidates(data_path: Path, inner: str, seed_nesting: str) -> list[Path]:
    """Folders that may hold the case folders: data_path, its inner folder, and the seed's nesting."""
    return [data_path, data_path / inner, data_path / seed_nesting, data_path / seed_nesting / inner]


def _case_from_folder(folder: Path, suffixes: dict[str, str], sep: str, *, patient_id: str,
                      convention: str, require_labels: bool) -> CaseFiles:
    """Build CaseFiles for a one-file-per-modality case folder named like its files' prefix."""
    case_id = folder.name
    images: dict[str, Path] = {}
    missing: list[str] = []  # every missing file of the case, reported together
    for modality, suffix in suffixes.items():
        found = _existing(folder, f"{case_id}{sep}{suffix}")
        if found is None:
            missing.append(f"case {case_id}: missing {modality} file {folder / f'{case_id}{sep}{suffix}.nii.gz'}")
        else:
            images[modality] = found
    label = _existing(folder, f"{case_id}{sep}seg")
    if label is None and require_labels:
        missing.append(f"case {case_id}: missing label file {folder / f'{case_id}{sep}seg.nii.gz'} "
                       "(pass require_labels=False for unlabelled data)")
    raise_if_any(missing)
    return CaseFiles(case_id=case_id, patient_id=patient_id, images=images, label=label, convention=convention)


def _brats21_cases(folders: list[Path], require_labels: bool) -> list[CaseFiles]:
    """Cases of BraTS 2018/2021 folders (``<id>/<id>_<suffix>.nii.gz``); every folder's missing files at once."""
    return map_all(lambda f: _case_from_folder(f, _BRATS21_SUFFIX, "_", patient_id=f.name, convention="brats2021",
                                               require_labels=require_labels), folders)


def _find_brats2018(data_path: Path, require_labels: bool) -> list[CaseFiles]:
    for root in _candidates(data_path, "MICCAI_BraTS_2018_Data_Training", "BRATS2018"):
        folders = [f for grade in ("HGG", "LGG") for f in _subdirs(root / grade, _RE_BRATS18)]
        folders += _subdirs(root, _RE_BRATS18)
        if folders:
            return _brats21_cases(folders, require_labels)
    return []


def _find_brats2021(data_path: Path, require_labels: bool) -> list[CaseFiles]:
    for root in _candidates(data_path, "BraTS2021_Training_Data", "BRATS2021"):
        folders = _subdirs(root, _RE_BRATS21)
        if folders:
            return _brats21_cases(folders, require_labels)
    return []


def _walk(data_path: Path, depth: int) -> Iterable[Path]:
    """``data_path`` and its sub-folders down to ``depth`` levels (breadth first, sorted)."""
    level = [data_path] if data_path.is_dir() else []
    for _ in range(depth + 1):
        yield from level
        level = sorted(c for p in level for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))


def _find_brats2023(data_path: Path, require_labels: bool) -> list[CaseFiles]:
    for root in _walk(data_path, 2):
        folders = _subdirs(root, _RE_BRATS23)
        if folders:
            return map_all(lambda f: _case_from_folder(f, _BRATS23_SUFFIX, "-",
                                                       patient_id=_RE_BRATS23.match(f.name).group(1),
                                                       convention="brats2023", require_labels=require_labels),
                           folders)
    return []


def _nifti_stem(path: Path) -> str:
    return path.name[: -len(next(e for e in _NIFTI_EXTS if path.name.endswith(e)))]


def _find_msd_task01(data_path: Path, require_labels: bool) -> list[CaseFiles]:
    for root in _candidates(data_path, "Task01_BrainTumour", "MSD") + [data_path / "MSD" / "Task01_BrainTumour"]:
        images_dir = root / "imagesTr"
        if not images_dir.is_dir():
            continue
        files = sorted(p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name.endswith(_NIFTI_EXTS))
        cases, missing = [], []
        for image in files:
            case_id = _nifti_stem(image)
            label = _existing(root / "labelsTr", case_id)
            if label is None and require_labels:
                missing.append(f"case {case_id}: missing label file {root / 'labelsTr' / image.name} "
                               "(pass require_labels=False for unlabelled data)")
            cases.append(CaseFiles(case_id=case_id, patient_id=case_id, image_4d=image,
                                   channel_order=_MSD_CHANNELS, label=label, convention="msd"))
        raise_if_any(missing, len(files))
        if cases:
            return cases
    return []


_FINDERS: dict[str, Callable[[Path, bool], list[CaseFiles]]] = {
    "synthetic": _find_brats2021,
    "brats2018": _find_brats2018,
    "brats2021": _find_brats2021,
    "brats2023": _find_brats2023,
    "msd_task01": _find_msd_task01,
}


def discover_cases(data_path: Path | None, dataset_version: str, *, require_labels: bool = True,
                   ct: CTOptions | None = None) -> list[CaseFiles]:
    """List the cases of a dataset release, sorted by case id.

    Args:
        data_path: folder holding the release (or its inner folder); may be ``None`` for ``ich`` with
            ``ct.manifest``.
        dataset_version: one of ``DATASET_VERSIONS``.
        require_labels: when True a case without a ``seg`` / ``labelsTr`` file is an error.
        ct: layout options of ``ich`` (manifest, test folders, patient regex, pickles); ``synthetic_ich``
            reads its phantom folder with none of them. ``luna16`` takes ``ct.annotations`` (the annotation CSV);
            ``synthetic_luna`` reads its phantoms' own ``annotations.csv``.

    Raises:
        ValueError: unknown version (lists the known ones); missing or empty dataset folder (shows the
            expected layout); missing modality or label file (names the case and file); duplicate case ids.
    """
    if dataset_version in CT_VERSIONS:
        options = (ct or CTOptions()) if dataset_version == "ich" else CTOptions()
        if dataset_version == "synthetic_ich" and data_path is None:
            raise ValueError("discover_cases: the synthetic_ich phantom folder is needed (see load_dataset)")
        cases = find_ct_cases(data_path, options, require_labels=require_labels)
        logger.info("found %d %s cases", len(cases), dataset_version)
        return cases
    if dataset_version in LUNA_VERSIONS:
        annotations = (ct or CTOptions()).annotations if dataset_version == "luna16" else None
        return find_luna_cases(data_path, annotations=annotations, require_labels=require_labels)
    if dataset_version in DESCRIBED_VERSIONS:
        raise ValueError(f"--dataset_version {dataset_version} is read from its description file by "
                         "dataio.described (engine.options.data_options.DataOptions), not by discover_cases")
    if dataset_version not in _FINDERS:
        raise ValueError(f"unknown dataset_version {dataset_version!r}; known: {', '.join(DATASET_VERSIONS)}")
    if data_path is None:
        raise ValueError(f"--data_path is required for --dataset_version {dataset_version}")
    data_path = Path(data_path).expanduser()
    if not data_path.is_dir():
        raise ValueError(f"--data_path {data_path} is not a folder; expected the {dataset_version} layout "
                         f"{EXPECTED_PATTERN[dataset_version]}")
    cases = _FINDERS[dataset_version](data_path, require_labels)
    if not cases:
        raise ValueError(f"no {dataset_version} cases found under {data_path}; expected the layout "
                         f"{EXPECTED_PATTERN[dataset_version]}")
    cases.sort(key=lambda c: c.case_id)
    duplicates = sorted(i for i, n in Counter(c.case_id for c in cases).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate case ids under {data_path}: {duplicates[:10]}")
    logger.info("found %d %s cases under %s", len(cases), dataset_version, data_path)
    return cases
