"""``--dataset_version nnunet``: an nnU-Net v2 raw dataset folder (``--data_path`` = the ``DatasetXXX_Name`` folder).

Layout (nnU-Net's own)::

    dataset.json                      channel_names, labels (+ regions_class_order), numTraining, file_ending
    imagesTr/{case}_{channel:04d}{file_ending}
    labelsTr/{case}{file_ending}
    imagesTs/ + labelsTs/             optional: the fixed test set (only when labelsTs/ is beside imagesTs/)

``file_ending`` must be ``.nii.gz`` or ``.nii`` (volbench reads NIfTI). ``--nnunet_splits FILE`` reads nnU-Net's
``splits_final.json`` (a list of ``{"train": [...], "val": [...]}``, one per fold, kept in the preprocessed folder)
as the folds, taken as given; the test set is then ``imagesTs``/``labelsTs`` and must exist. Without it the sweep
draws its split (with ``imagesTs``/``labelsTs`` as the fixed test set when present). Each case is its own patient.

Checks, each naming the file: ``dataset.json`` missing or malformed; a channel file or label file missing for a
case; ``numTraining`` not matching the training cases; a case of ``splits_final.json`` not on disk; label values
not declared by ``dataset.json`` (checked when the label files are read, :mod:`dataio.channels_preprocess`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from .described import DescribedDataset
from .input_errors import raise_if_any
from .label_names import LabelScheme, channel_names, parse_labels
from .types import CaseFiles

logger = logging.getLogger(__name__)

NNUNET_PATTERN = ("{data_path}/dataset.json, {data_path}/imagesTr/CASE_0000.nii.gz (one file per channel), "
                  "{data_path}/labelsTr/CASE.nii.gz [, imagesTs/ + labelsTs/]")
_ENDINGS = (".nii.gz", ".nii")


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``; ``ValueError`` naming ``what`` and the file when missing or invalid."""
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON: {exc}") from None


def _description(path: Path) -> tuple[tuple[str, ...], LabelScheme, str, int | None]:
    """(channel names, label scheme, file ending, numTraining) of ``dataset.json``."""
    meta = read_json(path, "nnU-Net dataset description")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the top level must be an object")
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels or sorted(channels, key=str) != [str(i) for i in
                                                                                      range(len(channels))]:
        raise ValueError(f"{path}: 'channel_names' must map \"0\", \"1\", ... to channel names, got {channels!r}")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in _ENDINGS:
        raise ValueError(f"{path}: file_ending {ending!r} is not supported; volbench reads NIfTI ({', '.join(_ENDINGS)})")
    n_training = meta.get("numTraining")
    if n_training is not None and (isinstance(n_training, bool) or not isinstance(n_training, int)):
        raise ValueError(f"{path}: 'numTraining' must be an integer, got {n_training!r}")
    scheme = parse_labels(meta.get("labels"), str(path), meta.get("regions_class_order"))
    names = channel_names([str(channels[str(i)]) for i in range(len(channels))])
    return names, scheme, ending, n_training


def _case_ids(images_dir: Path, ending: str) -> list[str]:
    """Case ids of the ``{case}_{XXXX}{ending}`` files of ``images_dir``."""
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    ids = {m.group(1) for p in images_dir.iterdir() if p.is_file() and (m := pattern.match(p.name))}
    return sorted(ids)


def _cases(images_dir: Path, labels_dir: Path, channels: tuple[str, ...], ending: str, origin: Path,
           fixed_split: str = "") -> tuple[list[CaseFiles], list[str]]:
    """CaseFiles of every case in ``images_dir`` and the problems found (missing channel or label files)."""
    cases, problems = [], []
    for case_id in _case_ids(images_dir, ending):
        images = {name: images_dir / f"{case_id}_{k:04d}{ending}" for k, name in enumerate(channels)}
        problems += [f"case {case_id}: channel {k} ({name}) file {path} is missing"
                     for k, (name, path) in enumerate(images.items()) if not path.is_file()]
        label = labels_dir / f"{case_id}{ending}"
        if not label.is_file():
            problems.append(f"case {case_id}: label file {label} is missing")
        cases.append(CaseFiles(case_id=case_id, patient_id=case_id, images=images, label=label,
                               convention="identity", origin=str(origin), fixed_split=fixed_split))
    return cases, problems


def read_splits_final(path: Path, on_disk: set[str]) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """Folds of nnU-Net's ``splits_final.json``: ``(train ids, val ids)`` each.

    Raises:
        ValueError: naming ``path``: not a non-empty list of ``{"train": [...], "val": [...]}``, or cases that are
            not training cases on disk.
    """
    data = read_json(path, "nnU-Net splits file")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of {{\"train\": [...], \"val\": [...]}}, one per fold")
    folds = []
    for k, fold in enumerate(data):
        if not isinstance(fold, dict) or not all(isinstance(fold.get(p), list) for p in ("train", "val")):
            raise ValueError(f"{path}: fold {k} must be an object with lists 'train' and 'val'")
        folds.append((tuple(map(str, fold["train"])), tuple(map(str, fold["val"]))))
    unknown = sorted({c for t, v in folds for c in t + v} - on_disk)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} case(s) are not training cases on disk (imagesTr/labelsTr): "
                         f"{unknown[:10]}")
    return tuple(folds)


def read_nnunet_raw(data_path: Path, splits_file: Path | None = None) -> DescribedDataset:
    """The cases and description of the nnU-Net raw dataset at ``data_path`` (module docstring).

    Raises:
        ValueError / :class:`~dataio.input_errors.InputErrors`: naming the file of each problem.
    """
    data_path = Path(data_path).expanduser()
    description = data_path / "dataset.json"
    if not (data_path / "imagesTr").is_dir() or not description.is_file():
        raise ValueError(f"no nnU-Net raw dataset at {data_path}; expected the layout {NNUNET_PATTERN}")
    channels, scheme, ending, n_training = _description(description)
    train, problems = _cases(data_path / "imagesTr", data_path / "labelsTr", channels, ending, description)
    if n_training is not None and n_training != len(train):
        problems.append(f"{description}: numTraining is {n_training} but imagesTr holds {len(train)} cases")
    test: list[CaseFiles] = []
    if (data_path / "imagesTs").is_dir() and (data_path / "labelsTs").is_dir():
        test, test_problems = _cases(data_path / "imagesTs", data_path / "labelsTs", channels, ending, description,
                                     fixed_split="test")
        problems += test_problems
        both = sorted({c.case_id for c in train} & {c.case_id for c in test})
        if both:
            problems.append(f"{data_path}: cases in both imagesTr and imagesTs: {both[:10]}")
    elif (data_path / "imagesTs").is_dir():
        logger.info("%s has imagesTs/ but no labelsTs/: its cases cannot be scored and are not used", data_path)
    raise_if_any(problems, len(train) + len(test))
    if not train:
        raise ValueError(f"no training cases under {data_path / 'imagesTr'}; expected the layout {NNUNET_PATTERN}")
    folds = None
    if splits_file is not None:
        if not test:
            raise ValueError(f"--nnunet_splits {splits_file}: its folds cover the training cases, so the test set "
                             f"must come from imagesTs/ with labelsTs/ beside it, and {data_path} has none")
        folds = read_splits_final(Path(splits_file), {c.case_id for c in train})
    return DescribedDataset(version="nnunet", source=description, channels=channels, scheme=scheme,
                            cases=tuple(train + test), folds=folds, folds_source=str(splits_file or ""))
