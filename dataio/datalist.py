"""``--dataset_version datalist``: a MONAI datalist JSON (Auto3DSeg style; MSD's ``dataset.json`` is one too).

The file (``--datalist FILE``, default ``datalist.json`` in ``--data_path``) holds::

    {"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "fold": 0}, ...],
     "testing":  [{"image": "imagesTs/t.nii.gz", "label": "labelsTs/t.nii.gz"}, ...],
     "labels": {...}, "channel_names": {...}}          (the last two optional)

- Paths are relative to ``--data_path`` (absolute paths are kept). ``image`` is one file (3D: one channel; 4D:
  channels last) or a list of files, one per channel. The case id is the first image file's name without its
  NIfTI ending (and without nnU-Net's ``_0000`` channel suffix); each case is its own patient.
- ``fold`` keys, when training entries carry them, are the folds (MONAI's ``datafold_read`` rule): fold k validates
  on the entries with ``fold == k`` and trains on all others, entries without a ``fold`` included (they train in
  every fold), taken as given; the test set is then the ``testing`` entries with a ``label``, which must exist. Without ``fold`` keys the sweep draws its split, with the labelled ``testing``
  entries as the fixed test set when there are any. ``testing`` entries without a label are not used.
- ``labels`` (nnU-Net's name -> value form with regions, or MSD's value -> name) and ``channel_names`` / ``modality``
  (``{"0": "FLAIR", ...}``) are read as in :mod:`dataio.label_names`; without ``labels`` the foreground labels are
  ``label1``..``labelK``, K the highest value in the label files; without channel names the channels are ``ch0``...
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from .described import DescribedDataset
from .input_errors import raise_if_any
from .label_names import channel_names, parse_labels
from .nifti_io import read_header
from .nnunet_raw import read_json
from .types import CaseFiles

logger = logging.getLogger(__name__)

DEFAULT_DATALIST = "datalist.json"
_ENDINGS = (".nii.gz", ".nii")


def datalist_path(data_path: Path, datalist: str | None) -> Path:
    """The datalist file: ``datalist`` as given when it exists (absolute or from the working folder), else relative
    to ``data_path``; ``datalist.json`` in ``data_path`` when not given."""
    if datalist is None:
        return Path(data_path).expanduser() / DEFAULT_DATALIST
    given = Path(datalist).expanduser()
    return given if given.is_absolute() or given.is_file() else Path(data_path).expanduser() / given


def _case_id(path: str) -> str:
    name = Path(path).name
    stem = name[: -len(next((e for e in _ENDINGS if name.endswith(e)), ""))] if name.endswith(_ENDINGS) else name
    return re.sub(r"_\d{4}$", "", stem)


def _entry(item: Any, where: str, root: Path) -> tuple[str, list[Path], Path | None, Any]:
    """(case id, image files, label file or None, fold value or None) of one datalist entry."""
    if isinstance(item, str):
        item = {"image": item}
    if not isinstance(item, dict) or "image" not in item:
        raise ValueError(f"{where}: an entry must be an object with 'image' (and 'label'), got {item!r}")
    images = item["image"] if isinstance(item["image"], list) else [item["image"]]
    if not images or not all(isinstance(p, str) for p in images):
        raise ValueError(f"{where}: 'image' must be a path or a non-empty list of paths")
    label = item.get("label")
    if label is not None and not isinstance(label, str):
        raise ValueError(f"{where}: 'label' must be a path, got {label!r}")
    return (_case_id(images[0]), [root / p for p in images], None if label is None else root / label,
            item.get("fold"))


def _channel_count(images: list[Path]) -> int:
    if len(images) > 1:
        return len(images)
    shape, _ = read_header(images[0])
    return shape[3] if len(shape) == 4 else 1


def _names(meta: dict[str, Any], n_channels: int, source: Path) -> tuple[str, ...]:
    named = meta.get("channel_names", meta.get("modality"))
    if named is None:
        return tuple(f"ch{k}" for k in range(n_channels))
    if not isinstance(named, dict) or sorted(named, key=str) != [str(k) for k in range(n_channels)]:
        raise ValueError(f"{source}: 'channel_names' must name the {n_channels} image channel(s) as "
                         f"\"0\".. \"{n_channels - 1}\", got {named!r}")
    return channel_names([str(named[str(k)]) for k in range(n_channels)])


def _case(entry: tuple[str, list[Path], Path | None, Any], channels: tuple[str, ...], origin: str,
          fixed_split: str) -> tuple[CaseFiles, list[str]]:
    case_id, images, label, _ = entry
    problems = [f"{origin}: case {case_id}: image file {p} is missing" for p in images if not p.is_file()]
    if label is not None and not label.is_file():
        problems.append(f"{origin}: case {case_id}: label file {label} is missing")
    if len(images) > 1 and len(images) != len(channels):
        problems.append(f"{origin}: case {case_id} lists {len(images)} image files, the dataset has "
                        f"{len(channels)} channels")
    if len(images) == 1:
        case = CaseFiles(case_id=case_id, patient_id=case_id, image_4d=images[0], channel_order=channels, label=label,
                         convention="identity", origin=origin, fixed_split=fixed_split)
    else:
        case = CaseFiles(case_id=case_id, patient_id=case_id, images=dict(zip(channels, images)), label=label,
                         convention="identity", origin=origin, fixed_split=fixed_split)
    return case, problems


def _folds(entries: list[tuple[str, list[Path], Path | None, Any]], source: Path
           ) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] | None:
    values = [fold for _, _, _, fold in entries if fold is not None]
    if not values:
        return None
    bad = sorted({repr(v) for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 0})
    if bad:
        raise ValueError(f"{source}: 'fold' values must be integers >= 0, got {', '.join(bad)}")
    return tuple((tuple(c for c, _, _, f in entries if f != k), tuple(c for c, _, _, f in entries if f == k))
                 for k in sorted(set(values)))


def read_datalist(data_path: Path, datalist: str | None = None) -> DescribedDataset:
    """The cases and description of a MONAI datalist (module docstring).

    Raises:
        ValueError / :class:`~dataio.input_errors.InputErrors`: naming the datalist and each bad entry or file.
    """
    root = Path(data_path).expanduser()
    source = datalist_path(root, datalist)
    meta = read_json(source, "MONAI datalist")
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list) or not meta["training"]:
        raise ValueError(f"{source}: expected an object with a non-empty 'training' list")
    train = [_entry(item, f"{source} training[{i}]", root) for i, item in enumerate(meta["training"])]
    test = [_entry(item, f"{source} testing[{i}]", root) for i, item in enumerate(meta.get("testing") or [])]
    unlabelled = [e for e in test if e[2] is None]
    if unlabelled:
        logger.info("%s: %d testing entries have no label and are not used", source, len(unlabelled))
    test = [e for e in test if e[2] is not None]
    problems = [f"{source} training entry {e[0]}: no 'label'" for e in train if e[2] is None]
    ids = [e[0] for e in train + test]
    problems += [f"{source}: case id {c} is listed twice" for c in sorted({c for c in ids if ids.count(c) > 1})]
    raise_if_any(problems)
    if not train[0][1][0].is_file():
        raise ValueError(f"{source}: image file {train[0][1][0]} of case {train[0][0]} is missing")
    channels = _names(meta, _channel_count(train[0][1]), source)
    scheme = (parse_labels(meta["labels"], str(source), meta.get("regions_class_order"))
              if meta.get("labels") is not None else None)
    built = [_case(e, channels, str(source), "") for e in train] + [_case(e, channels, str(source), "test")
                                                                    for e in test]
    raise_if_any([p for _, found in built for p in found], len(built))
    folds = _folds(train, source)
    if folds is not None and not test:
        raise ValueError(f"{source}: the training entries' 'fold' keys cover every training case, so the test set "
                         "must come from 'testing' entries with a 'label', and there are none")
    cases = sorted((c for c, _ in built if not c.fixed_split), key=lambda c: c.case_id) + sorted(
        (c for c, _ in built if c.fixed_split), key=lambda c: c.case_id)
    return DescribedDataset(version="datalist", source=source, channels=channels, scheme=scheme, cases=tuple(cases),
                            folds=folds, folds_source=str(source))
