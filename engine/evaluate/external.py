"""Other tools' predictions as rows of a sweep: ``--external_predictions NAME=DIR``.

A prediction folder holds one label file per test case, ``{case_id}.nii.gz`` (or ``.nii``), in the image's original
space (nnU-Net's output layout); ``{case_id}_probabilities.nii.gz`` beside it (4D, channels last, channel k the
probability of internal label k, as ``--save_probabilities`` writes) replaces the one-hot labels when present, so
that the lesion scores of a volbench model's own files are its probabilities. Each file must have the image's shape
and affine (within 1e-3); its labels are read in the dataset's convention, or in the convention (or the explicit
``file:internal`` table) that ``--external_label_map [NAME=]MAP`` gives. The prediction is cropped to the cached
case's box and scored by the sweep's own test accumulator (``engine.evaluation.score_predictions``), so an external
row is computed by the same code, in the same space, on the same cases as a trained model's.

Rows: a job folder ``jobs/<NAME>_seed_0`` (seed 0, fold empty: one run over the sweep's test cases) whose run row has
status ``ok``, ``source`` ``external``, ``epochs`` 0 and no efficiency columns; the reducer puts it into every table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataio.conventions import CONVENTIONS, remap_labels, to_internal
from dataio.nifti_io import load_label, load_volume, read_header
from dataio.types import CachedCase
from engine.evaluation import EvaluationResult, score_predictions
from engine.results.job_results import JobFolder
from engine.tasks.base import Task
from utils.schema import JOBS_DIR, SOURCE_COLUMN

log = logging.getLogger(__name__)

EXTERNAL_SEED = 0
EXTERNAL_INDEX = 1 << 20  # job.json index: external rows come after every trained job
AFFINE_TOLERANCE = 1e-3
LABEL_SUFFIXES = (".nii.gz", ".nii")
PROBABILITY_SUFFIX = "_probabilities.nii.gz"


@dataclass(frozen=True)
class ExternalSource:
    """One other tool's prediction folder: its row name, folder and label map (a convention name, an explicit
    ``{file label: internal label}`` table, or None for the dataset's own convention)."""

    name: str
    folder: Path
    label_map: str | dict[int, int] | None = None


def _parse_map(text: str, flag: str) -> str | dict[int, int]:
    """A convention name, or ``file:internal`` pairs separated by commas (``1:2,2:1,4:3``)."""
    if text in CONVENTIONS:
        return text
    try:
        pairs = [item.split(":") for item in text.split(",")]
        return {int(a): int(b) for a, b in pairs}
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give a label convention ({', '.join(CONVENTIONS)}) or file:internal "
                         "pairs such as 1:2,2:1,4:3") from None


def _name_value(item: str, flag: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"{flag} {item!r}: expected NAME=VALUE")
    return name, value


def parse_external(values: list[str] | None, label_maps: list[str] | None = None) -> list[ExternalSource]:
    """``--external_predictions NAME=DIR ...`` with ``--external_label_map [NAME=]MAP ...`` (a bare MAP applies to
    every source without its own). Raises ``ValueError`` naming the flag for malformed or repeated entries."""
    sources = [_name_value(v, "--external_predictions") for v in values or []]
    names = [n for n, _ in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--external_predictions names {repeated} more than once")
    default, own = None, {}
    for item in label_maps or []:
        name, sep, value = item.partition("=")
        if sep and name in names:
            own[name] = _parse_map(value, "--external_label_map")
        elif sep and not _looks_like_map(item):
            raise ValueError(f"--external_label_map {item!r}: {name!r} is not a name of --external_predictions "
                             f"({', '.join(names) or 'none given'})")
        else:
            default = _parse_map(item, "--external_label_map")
    return [ExternalSource(n, Path(d), own.get(n, default)) for n, d in sources]


def _looks_like_map(item: str) -> bool:
    return all(":" in part for part in item.split(","))


def prediction_file(folder: Path, case_id: str) -> Path | None:
    """The label file of ``case_id`` in ``folder`` (``.nii.gz`` before ``.nii``), or None."""
    return next((folder / f"{case_id}{s}" for s in LABEL_SUFFIXES if (folder / f"{case_id}{s}").is_file()), None)


def check_sources(sources: list[ExternalSource], case_ids: list[str], models: list[str]) -> None:
    """Every name is new and every folder holds a file for every test case, before anything runs.

    Raises:
        ValueError: a name that is also a model of the sweep, a missing folder, missing cases (named).
    """
    for source in sources:
        if source.name in models:
            raise ValueError(f"--external_predictions {source.name}: the name is a model of this sweep; give "
                             "the external row another name")
        if not source.folder.is_dir():
            raise ValueError(f"--external_predictions {source.name}={source.folder}: not a folder")
        missing = [c for c in case_ids if prediction_file(source.folder, c) is None]
        if missing:
            raise ValueError(f"--external_predictions {source.name}: {source.folder} has no prediction for the test "
                             f"cases {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)} of "
                             f"{len(case_ids)}; expected {{case_id}}.nii.gz)")


def _check_grid(path: Path, case: CachedCase, shape: tuple[int, ...], affine: np.ndarray) -> None:
    if tuple(shape[:3]) != tuple(case.original_shape):
        raise ValueError(f"{path}: shape {tuple(shape[:3])} differs from the image's {tuple(case.original_shape)} of "
                         f"case {case.case_id}; predictions must be in the image's original space")
    if not np.allclose(affine, case.affine, atol=AFFINE_TOLERANCE, rtol=0.0):
        raise ValueError(f"{path}: affine differs from the image's of case {case.case_id} by more than "
                         f"{AFFINE_TOLERANCE}:\n{affine}\nvs\n{case.affine}")


def _internal(array: np.ndarray, source: ExternalSource, case: CachedCase, path: Path) -> np.ndarray:
    if isinstance(source.label_map, dict):
        return remap_labels(array, source.label_map, source=str(path))
    return to_internal(array, source.label_map or case.convention, source=str(path))


def read_prediction(source: ExternalSource, case: CachedCase, n_classes: int) -> torch.Tensor:
    """The case's prediction as the task's (K, D, H, W) logits on the cached crop: log-probabilities when a
    probability file is present, else the one-hot internal labels (float)."""
    crop = case.crop.slices()
    probabilities = source.folder / f"{case.case_id}{PROBABILITY_SUFFIX}"
    if probabilities.is_file():
        shape, affine = read_header(probabilities)
        _check_grid(probabilities, case, shape, affine)
        data, _, _ = load_volume(probabilities)
        if data.ndim != 4 or data.shape[3] != n_classes:
            raise ValueError(f"{probabilities}: shape {data.shape}; expected (X, Y, Z, {n_classes}) probabilities")
        cropped = np.moveaxis(data, -1, 0)[(slice(None), *crop)]
        return torch.from_numpy(np.log(np.clip(cropped, 1e-12, None)).astype(np.float32))
    path = prediction_file(source.folder, case.case_id)
    assert path is not None  # check_sources ran first
    array, affine, _ = load_label(path)
    _check_grid(path, case, array.shape, affine)
    labels = _internal(array, source, case, path)[crop]
    if labels.max(initial=0) >= n_classes:
        raise ValueError(f"{path}: internal labels up to {int(labels.max())} but the task has {n_classes} classes")
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), n_classes)
    return onehot.permute(3, 0, 1, 2).float()


def score_source(source: ExternalSource, cases: list[CachedCase], task: Task) -> EvaluationResult:
    """Test metrics of ``source``'s predictions of ``cases`` (labelled), by ``task``'s test accumulator."""
    labelled = [c for c in cases if c.label is not None]
    return score_predictions(labelled, task, lambda case: read_prediction(source, case, task.n_outputs),
                             desc=source.name)


def _fresh_folder(output_dir: Path, source: ExternalSource, position: int,
                  **info: Any) -> tuple[JobFolder, dict[str, Any]]:
    """The source's job folder ``jobs/<name>_seed_0``, emptied, with its ``job.json`` (``info`` added); its run keys."""
    keys = dict(model=source.name, seed=EXTERNAL_SEED, fold=None)
    folder = JobFolder.of(Path(output_dir) / JOBS_DIR, source.name, EXTERNAL_SEED, None)
    folder.clear_results()
    folder.write_job(dict(keys, index=EXTERNAL_INDEX + position, source="external", **info))
    return folder, keys


def write_external_job(output_dir: Path, source: ExternalSource, cases: list[CachedCase], task: Task, *,
                       position: int = 0) -> dict[str, Any]:
    """Score ``source`` and write it as the job folder ``jobs/<name>_seed_0``; returns its run row."""
    result = score_source(source, cases, task)
    folder, keys = _fresh_folder(output_dir, source, position, result_columns=list(task.result_columns()),
                                 folder=str(source.folder))
    for table, rows in result.all_tables().items():
        folder.write_table(table, [dict(keys, **r) for r in rows])
    row = dict(keys, status="ok", error="", epochs=0, n_test_cases=len(result.per_case),
               **{k: v for k, v in result.aggregate.items() if not k.startswith("n_")}, **task.run_labels(),
               **{SOURCE_COLUMN: "external"})
    folder.write_table("runs", [row])
    log.info("external predictions %s (%s): %d test cases scored", source.name, source.folder, len(result.per_case))
    return row


def add_external_rows(output_dir: Path, sources: list[ExternalSource], cases: list[CachedCase],
                      task: Task) -> list[dict[str, Any]]:
    """Score every source into its job folder; a source whose files fail (shape, affine, labels) is recorded as
    a failed row naming the file, and the others go on."""
    rows = []
    for position, source in enumerate(sources):
        try:
            rows.append(write_external_job(output_dir, source, cases, task, position=position))
        except ValueError as exc:
            log.error("external predictions %s failed: %s", source.name, exc)
            folder, keys = _fresh_folder(output_dir, source, position)
            row = dict(keys, status="failed", error=f"{type(exc).__name__}: {exc}"[:500], epochs=0,
                       **task.run_labels(), **{SOURCE_COLUMN: "external"})
            folder.write_table("runs", [row])
            rows.append(row)
    return rows
