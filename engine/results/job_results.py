"""Per-job result folders: each job writes its own rows, atomically, into ``jobs/<job>/``.

Files (names from ``utils.schema.TABLES``): ``job.json`` (model, seed, fold, index in the sweep's job
order, ``result_columns``: the metric columns its task adds to the run table, and the trainer settings),
``epochs.csv`` (rewritten as each epoch ends), ``per_case.csv``, ``confusion.csv``, ``attention.csv``,
``stage_pam.csv`` (the job that measured its model's efficiency) and ``run.csv``, written last: a job folder
with a ``run.csv`` is finished (ok or not); without one it is in progress or was killed.
The training state of an unfinished job lives beside them as ``latest.pth``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from utils.atomic import atomic_write_csv, atomic_write_json
from utils.schema import JOB_JSON, LATEST_CHECKPOINT, PREDICTIONS_DIR, SUBMISSION_FILES, TABLES, job_name


def read_result_csv(path: Path) -> pd.DataFrame:
    """A result CSV with ``fold`` as a nullable integer (holdout folds stay empty)."""
    return pd.read_csv(path, dtype={"fold": "Int64"})


class JobFolder:
    """The folder of one job of a sweep, ``output_dir/jobs/<model>_seed_<s>[_fold_<k>]``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, jobs_root: Path, model: str, seed: int, fold: int | None) -> "JobFolder":
        return cls(Path(jobs_root) / job_name(model, seed, fold))

    @property
    def latest_checkpoint(self) -> Path:
        return self.path / LATEST_CHECKPOINT

    def table_path(self, table: str) -> Path:
        return self.path / TABLES[table][0]

    def write_job(self, info: dict[str, Any]) -> None:
        """Identity of the job (model, seed, fold, index); written when the job starts."""
        atomic_write_json(self.path / JOB_JSON, info)

    def job(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / JOB_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def result_columns(self) -> list[str] | None:
        """The metric columns the job recorded (its task's ``result_columns``); None for folders written before
        jobs recorded them."""
        columns = (self.job() or {}).get("result_columns")
        return None if columns is None else [str(c) for c in columns]

    def write_table(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Replace table ``table`` of this job with ``rows`` (nothing is written for no rows)."""
        if rows:
            atomic_write_csv(self.table_path(table), pd.DataFrame(rows))

    def read_table(self, table: str) -> pd.DataFrame | None:
        path = self.table_path(table)
        return read_result_csv(path) if path.is_file() else None

    def run_row(self) -> dict[str, Any] | None:
        """The finished job's run row, or ``None`` while it has none."""
        frame = self.read_table("runs")
        return None if frame is None or frame.empty else frame.to_dict("records")[0]

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files that a killed write left in this folder (``.<name>.*.tmp``; only this job's
        process writes here); returns how many."""
        stale = list(self.path.glob(".*.tmp")) if self.path.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def clear_results(self) -> None:
        """Delete this job's tables (before it runs again from scratch); ``job.json`` and state stay."""
        for table in TABLES:
            self.table_path(table).unlink(missing_ok=True)


def write_submission(output_dir: Path, run: str, table: str, rows: list[dict[str, Any]]) -> Path:
    """Write table ``table`` of ``utils.schema.SUBMISSION_FILES`` (e.g. LUNA16's candidates) as
    ``output_dir/predictions/<run>/<file>`` in that tool's columns, atomically (a header only for no rows)."""
    name, columns = SUBMISSION_FILES[table]
    path = Path(output_dir) / PREDICTIONS_DIR / run / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(path, pd.DataFrame(rows, columns=list(columns)))
    return path


def job_folders(jobs_root: Path) -> list[JobFolder]:
    """Every job folder under ``jobs_root`` in the sweep's job order (``index`` of job.json, then name)."""
    if not Path(jobs_root).is_dir():
        return []
    folders = [JobFolder(p) for p in Path(jobs_root).iterdir() if p.is_dir() and (p / JOB_JSON).is_file()]

    def order(folder: JobFolder) -> tuple[int, str]:
        info = folder.job() or {}
        return (int(info.get("index", 1 << 30)), folder.path.name)

    return sorted(folders, key=order)
