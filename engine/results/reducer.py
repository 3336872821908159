"""The one reducer: sweep-level tables (ARCHITECTURE.md section 4) built from the per-job folders.

:func:`reduce_results` is pure in the sense that it reads only ``jobs/*/`` and rewrites every sweep table
from them (finished jobs only, in the sweep's job order); it runs at the end of a sweep and on demand
(``evaluate_experiment.py --results_dir DIR --aggregate``). While a sweep runs,
:class:`IncrementalReducer` brings the tables up to date after each job by appending that job's rows and
recomputing only its model's comparison row, so an N-job sweep spends O(N) on result writing.
Both hold the results folder's file lock while they write, so processes sharing a folder lose no row.

The metric columns of the runs table (those the comparison averages and the statistics test) are those the jobs
recorded in their ``job.json`` (``result_columns``, from their task); job folders written before jobs recorded them,
and tables without job folders, go by the column-name prefixes of ``utils.schema.METRIC_PREFIXES``.

The full reduce also writes the comparison statistics (``engine.results.comparison_stats``): the extended
``model_comparison.csv`` (bootstrap CIs, counts, out-of-fold means, variance shares, Pareto fronts),
``statistical_tests.csv`` and ``ranking.csv``, with the ``--baseline``/``--stats_seed``/``--bootstrap_resamples``
recorded in the folder's ``config.json`` (defaults when absent). The per-job incremental path writes the basic
comparison row only (mean, std, counts, rank, efficiency); the statistics appear with the full reduce at the end
of the sweep (or ``evaluate_experiment.py --results_dir DIR --aggregate``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Collection, Iterable

import numpy as np
import pandas as pd
from filelock import FileLock

from utils.atomic import OutputWriteError, atomic_write_csv
from utils.schema import (COMPARISON_CSV, CONFIG_JSON, EFFICIENCY_COLUMNS, JOBS_DIR, LOCK_FILE, METRIC_PREFIXES,
                          RANKING_CSV, RUN_LEADING, RUN_TRAILING, SOURCE_COLUMN, STAGE_PAM_CSV, STATISTICAL_TESTS_CSV,
                          TABLES)

from engine.results.comparison_stats import (add_final_rank, extend_comparison, is_extended_column, ranking_table,
                                             statistical_tests)
from engine.results.efficiency_store import stage_pam_table
from engine.options.stats_options import StatsOptions, stats_options_from_config

from engine.results.job_results import JobFolder, job_folders, read_result_csv

log = logging.getLogger(__name__)


def results_lock(output_dir: Path) -> FileLock:
    """The lock every writer of the sweep tables in ``output_dir`` holds."""
    return FileLock(str(Path(output_dir) / LOCK_FILE))


def order_columns(frame: pd.DataFrame, leading: Iterable[str], trailing: Iterable[str] = ()) -> pd.DataFrame:
    """``frame`` with ``leading`` columns first and ``trailing`` last (those present), the rest between."""
    leading, trailing = list(leading), list(trailing)
    middle = [c for c in frame.columns if c not in leading and c not in trailing]
    return frame[[c for c in leading if c in frame.columns] + middle + [c for c in trailing if c in frame.columns]]


def _ordered(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    if table == "runs":
        return order_columns(frame, RUN_LEADING, RUN_TRAILING)
    if table == "stage_pam":
        return frame
    return order_columns(frame, TABLES[table][2])


def metric_columns(runs: pd.DataFrame, recorded: Collection[str] | None = None) -> list[str]:
    """Test-metric columns of the runs table, in its column order: those in ``recorded`` (what the jobs recorded,
    :func:`sweep_metric_columns`), or with ``None`` those named by the prefixes (``dice_*``, ``hd95_*``, ...)."""
    if recorded is None:
        return [c for c in runs.columns if c.startswith(METRIC_PREFIXES)]
    return [c for c in runs.columns if c in recorded]


def job_metric_columns(folder: JobFolder, runs: pd.DataFrame | None = None) -> set[str]:
    """The metric columns of a finished job: what its job.json records, else (folders written before jobs recorded
    them) the columns of its run table (``runs``, read when None) named by the prefixes."""
    recorded = folder.result_columns()
    if recorded is not None:
        return set(recorded)
    runs = folder.read_table("runs") if runs is None else runs
    return set() if runs is None else set(metric_columns(runs))


def sweep_metric_columns(output_dir: Path) -> set[str] | None:
    """The metric columns of the finished jobs under ``output_dir/jobs`` (:func:`job_metric_columns`); None when
    the folder has no job folders (its tables go by the prefixes)."""
    jobs_root = Path(output_dir) / JOBS_DIR
    if not jobs_root.is_dir():
        return None
    finished = [f for f in job_folders(jobs_root) if f.table_path("runs").is_file()]
    return set().union(*(job_metric_columns(f) for f in finished))


def comparison_row(model: str, group: pd.DataFrame, metrics: Collection[str] | None = None) -> dict[str, Any]:
    """One model's comparison row: n_runs, n_ok, its efficiency as measured, mean/std over ok runs of every
    metric (``metrics``: :func:`metric_columns`) and of train_time_s (NaN-skipping; ``std`` with ddof=1, NaN for
    one run)."""
    ok = group[group["status"] == "ok"]
    row: dict[str, Any] = dict(model=model, n_runs=len(group), n_ok=len(ok))
    if SOURCE_COLUMN in group.columns:  # volbench, external or ensemble (folders made before: no column)
        row[SOURCE_COLUMN] = group[SOURCE_COLUMN].dropna().astype(str).iloc[0] if group[SOURCE_COLUMN].notna().any() \
            else "volbench"
    measured = group.dropna(subset=[c for c in ("params",) if c in group.columns])
    for col in EFFICIENCY_COLUMNS:
        if col in group.columns:
            row[col] = measured[col].iloc[0] if len(measured) else np.nan
    for col in metric_columns(group, metrics) + [c for c in ("train_time_s",) if c in group.columns]:
        values = pd.to_numeric(ok[col], errors="coerce")
        row[f"{col}_mean"] = values.mean() if values.notna().any() else np.nan
        row[f"{col}_std"] = values.std(ddof=1) if values.notna().sum() > 1 else np.nan
    return row


def rank_comparison(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The comparison table of ``rows`` with ``rank`` by mean Dice (1 = best, ties share the best rank)."""
    table = pd.DataFrame(rows)
    if "dice_mean_mean" in table:
        table["rank"] = table["dice_mean_mean"].rank(ascending=False, method="min")
    else:
        table["rank"] = np.nan
    return order_columns(table, ["model", "rank", "n_runs", "n_ok"])


def build_comparison(runs: pd.DataFrame, metrics: Collection[str] | None = None) -> pd.DataFrame:
    """One row per model (in order of first appearance): see :func:`comparison_row` and :func:`rank_comparison`."""
    return rank_comparison([comparison_row(m, g, metrics) for m, g in runs.groupby("model", sort=False)])


def collect_tables(output_dir: Path) -> dict[str, pd.DataFrame]:
    """Every table of the finished jobs under ``output_dir/jobs``, concatenated in job order.

    Stage-wise PAM (``stage_pam``) is per model: read from ``efficiency/``, models in order of their first run.
    """
    parts: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    for folder in job_folders(Path(output_dir) / JOBS_DIR):
        own = _job_tables(folder)
        if "runs" not in own:
            continue  # unfinished (running, or killed and not yet resumed)
        for table, frame in own.items():
            parts[table].append(frame)
    tables = {t: pd.concat(frames, ignore_index=True, sort=False) for t, frames in parts.items() if frames}
    models = list(dict.fromkeys(tables["runs"]["model"].astype(str))) if "runs" in tables else []
    stages = stage_pam_table(output_dir, models)
    if stages is not None:
        tables["stage_pam"] = stages
    return tables


def _job_tables(folder: JobFolder) -> dict[str, pd.DataFrame]:
    """The non-empty tables of one job folder, each read once."""
    frames = {t: folder.read_table(t) for t in TABLES}
    return {t: f for t, f in frames.items() if f is not None and not f.empty}


def write_tables(output_dir: Path, tables: dict[str, pd.DataFrame], options: StatsOptions | None = None,
                 models: list[str] | None = None, metrics: Collection[str] | None = None) -> list[Path]:
    """Write every sweep-level table of ``tables``, the comparison and the statistics (:func:`write_statistics`)
    atomically; returns the files. ``options``/``models`` (the statistics flags, the sweep's model order): read
    from ``output_dir/config.json`` when None (:func:`recorded_stats`); ``metrics``: the recorded metric columns
    (:func:`metric_columns`)."""
    written = []
    for table, frame in tables.items():
        path = Path(output_dir) / (STAGE_PAM_CSV if table == "stage_pam" else TABLES[table][1])
        atomic_write_csv(path, _ordered(table, frame))
        written.append(path)
    if "runs" in tables:
        path = Path(output_dir) / COMPARISON_CSV
        basic = build_comparison(tables["runs"], metrics)
        atomic_write_csv(path, basic)  # stays as it is if a statistic below fails
        written.append(path)
        if options is None or models is None:
            recorded, order = recorded_stats(output_dir)
            options, models = options or recorded, models if models is not None else order
        try:
            written += write_statistics(output_dir, tables, basic, options, models, metrics)
        except OutputWriteError:
            raise
        except Exception:  # the statistics are derived: a failure there must not lose the sweep's tables
            log.exception("the comparison statistics of %s failed; %s holds the basic comparison", output_dir,
                          COMPARISON_CSV)
    return list(dict.fromkeys(written))


def recorded_stats(output_dir: Path) -> tuple[StatsOptions, list[str]]:
    """The statistics flags and the model order (``resolved_models``) recorded in ``output_dir/config.json``
    (:func:`engine.options.stats_options.stats_options_from_config`); defaults and no order without a readable record."""
    path = Path(output_dir) / CONFIG_JSON
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return stats_options_from_config(config), [str(m) for m in config.get("resolved_models") or []]
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: cannot read the statistics flags (%s); the defaults are used", path, exc)
        return StatsOptions(), []


def write_statistics(output_dir: Path, tables: dict[str, pd.DataFrame], basic: pd.DataFrame, options: StatsOptions,
                     models: list[str], metrics: Collection[str] | None = None) -> list[Path]:
    """Write the extended ``model_comparison.csv``, ``statistical_tests.csv`` and ``ranking.csv``
    (``engine.results.comparison_stats``) from the tables of ok runs; a statistics file that cannot be computed (no
    per-case rows) is removed, so none is left from an earlier reduce."""
    output_dir = Path(output_dir)
    runs = tables["runs"]
    per_case, val_cases = tables.get("per_case"), tables.get("val_cases")
    comparison = extend_comparison(basic, runs, metric_columns(runs, metrics), per_case, val_cases, options,
                                   boxes=tables.get("boxes"))  # AP/FROC intervals by bootstrapping scans
    tests = statistical_tests(per_case, runs, options, models) if per_case is not None else None
    ranking = ranking_table(per_case, runs, options)
    atomic_write_csv(output_dir / COMPARISON_CSV, add_final_rank(comparison, ranking))  # one ranking in the report
    written = [output_dir / COMPARISON_CSV]
    for name, frame in ((STATISTICAL_TESTS_CSV, tests), (RANKING_CSV, ranking)):
        if frame is None:
            (output_dir / name).unlink(missing_ok=True)
            continue
        atomic_write_csv(output_dir / name, frame)
        written.append(output_dir / name)
    return written


def reduce_results(output_dir: Path) -> list[Path]:
    """Rebuild every sweep table of ``output_dir`` from its job folders (under the folder's lock).

    Raises:
        ValueError: ``output_dir`` has no ``jobs/`` folder (made before per-job results, or not a sweep).
    """
    output_dir = Path(output_dir)
    if not (output_dir / JOBS_DIR).is_dir():
        raise ValueError(f"{output_dir} has no {JOBS_DIR}/ folder: it was made before per-job results "
                         "(or is not a sweep folder); its tables are left as they are")
    with results_lock(output_dir):
        return write_tables(output_dir, collect_tables(output_dir), metrics=sweep_metric_columns(output_dir))


class IncrementalReducer:
    """Keeps the sweep tables of ``output_dir`` current after each finished job at a cost that does not grow
    with the number of finished jobs: the job's rows are appended, and its model's comparison row is
    recomputed from that model's run rows (read from disk once per model, then kept; rows that other
    processes add meanwhile reach the comparison with the next full :func:`reduce_results`).

    It writes the basic comparison only (mean, std, n_runs, n_ok, rank, efficiency; every model's extended
    statistics columns are dropped, since the CIs, tests and Pareto fronts depend on all runs): the extended
    ``model_comparison.csv``, ``statistical_tests.csv`` and ``ranking.csv`` come from the full reduce."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self._model_runs: dict[str, dict[str, dict[str, Any]]] = {}
        self._pam_models: set[str] = set()  # models whose stage-wise PAM this reducer has written

    def add_job(self, folder: JobFolder, model_jobs: list[JobFolder]) -> None:
        """Append ``folder``'s rows to the sweep tables and recompute its model's comparison row
        (``model_jobs``: every job folder of that model in the sweep, read the first time only)."""
        tables = _job_tables(folder)
        if "runs" not in tables:
            return
        run = tables["runs"].to_dict("records")[0]
        with results_lock(self.output_dir):
            for table, frame in tables.items():
                self._append(table, frame)
            self._update_comparison(folder, run, model_jobs, job_metric_columns(folder, tables["runs"]))
            if str(run["model"]) not in self._pam_models:  # a model's figures are measured once
                self._update_stage_pam()
                self._pam_models.add(str(run["model"]))

    def _update_stage_pam(self) -> None:
        """Rewrite the stage-wise PAM table from ``efficiency/`` (O(models)); model order as in the comparison."""
        comparison = self.output_dir / COMPARISON_CSV
        models = pd.read_csv(comparison, usecols=["model"])["model"].astype(str).tolist() if comparison.is_file() else []
        stages = stage_pam_table(self.output_dir, models)
        if stages is not None:
            atomic_write_csv(self.output_dir / STAGE_PAM_CSV, stages)

    def _append(self, table: str, frame: pd.DataFrame) -> None:
        path = self.output_dir / TABLES[table][1]
        if not path.is_file():
            atomic_write_csv(path, _ordered(table, frame))
            return
        header = list(pd.read_csv(path, nrows=0).columns)
        if set(frame.columns) <= set(header):  # the common case: one appended write, whatever the table size
            data = frame.reindex(columns=header).to_csv(index=False, header=False).encode("utf-8")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        merged = pd.concat([read_result_csv(path), frame], ignore_index=True, sort=False)  # new columns: rare
        atomic_write_csv(path, _ordered(table, merged))

    def _update_comparison(self, folder: JobFolder, run: dict[str, Any], model_jobs: list[JobFolder],
                           metrics: Collection[str]) -> None:
        model = str(run["model"])
        if model not in self._model_runs:
            self._model_runs[model] = {f.path.name: r for f in model_jobs
                                       if f.path != folder.path and (r := f.run_row()) is not None}
        self._model_runs[model][folder.path.name] = run
        own = comparison_row(model, pd.DataFrame(list(self._model_runs[model].values())), metrics)
        path = self.output_dir / COMPARISON_CSV
        others = [{k: v for k, v in r.items() if not is_extended_column(k)}  # basic until the full reduce
                  for r in read_result_csv(path).to_dict("records") if str(r["model"]) != model] \
            if path.is_file() else []
        atomic_write_csv(path, rank_comparison([*others, own]))
