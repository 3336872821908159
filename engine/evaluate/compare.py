"""Several sweeps in one comparison (``evaluate_experiment.py --compare DIR1 DIR2 ... --output_dir OUT``).

The union of the folders' finished runs is reduced into OUT exactly as one sweep's are (the reducer's tables,
the comparison statistics, the charts). Folders are refused when their data differ, since synthetic case ids
repeat across phantom sets and the paired statistics need the same test cases:

- the data flags recorded in each ``config.json`` (``engine.options.data_options.DATA_FIELDS`` except ``cache_dir`` and
  ``allow_pickle``, which say where the cache lives and whether pickles may be read, not what the data is) must
  be equal, and
- the test case ids of each ``splits.json`` must be the same set.

A run (model, seed, fold) found in two folders is an error naming both. Each folder's tables are read from its
job folders (``jobs/``) when it has them, else from its sweep tables. The statistics flags default to the first
folder's recorded values. OUT gets a ``config.json`` naming the compared folders (and the flags used) and the
first folder's ``splits.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from utils.atomic import atomic_write_json
from utils.schema import CONFIG_JSON, JOBS_DIR, RUN_KEYS, SPLITS_JSON, STAGE_PAM_CSV, TABLES, run_key

from engine.options.data_options import DATA_FIELDS, effective_hu_window
from engine.results.job_results import read_result_csv
from engine.results.reducer import collect_tables, metric_columns, results_lock, sweep_metric_columns, write_tables
from engine.options.stats_options import StatsOptions, stats_options_from_config

log = logging.getLogger(__name__)

IGNORED_DATA_FIELDS = ("cache_dir", "allow_pickle")


def read_record(folder: Path, name: str) -> dict[str, Any]:
    """``folder/name`` as JSON; ``ValueError`` naming the file when it is missing or unreadable."""
    path = Path(folder) / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--compare: {folder} has no {name} (not a sweep folder)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--compare: cannot read {path}: {exc}") from None


def data_flags(config: dict[str, Any]) -> dict[str, Any]:
    """The recorded data flags that define the data (lists and tuples alike; ``hu_window`` as the window the run
    applied, so records made before it defaulted to the dataset's own compare equal)."""
    flags = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()
             if k in DATA_FIELDS and k not in IGNORED_DATA_FIELDS}
    if "hu_window" in flags:
        window = effective_hu_window(str(config.get("dataset_version")), flags["hu_window"])
        flags["hu_window"] = None if window is None else list(window)
    return flags


def check_same_data(folders: Sequence[Path], configs: Sequence[dict[str, Any]],
                    splits: Sequence[dict[str, Any]]) -> None:
    """``ValueError`` naming the folders and the flags (or the test cases) when a folder's data differ from the
    first's."""
    first_flags, first_test = data_flags(configs[0]), sorted(map(str, splits[0].get("test") or []))
    for folder, config, split in zip(folders[1:], configs[1:], splits[1:]):
        flags = data_flags(config)
        differ = [f"--{k}: {first_flags.get(k)!r} vs {flags.get(k)!r}" for k in sorted(set(first_flags) | set(flags))
                  if first_flags.get(k) != flags.get(k)]
        if differ:
            raise ValueError(f"--compare: {folders[0]} and {folder} were run on different data ("
                             + "; ".join(differ) + ")")
        test = sorted(map(str, split.get("test") or []))
        if test != first_test:
            only = sorted(set(first_test) ^ set(test))
            raise ValueError(f"--compare: {folders[0]} and {folder} have different test cases in {SPLITS_JSON} "
                             f"({len(first_test)} vs {len(test)} cases; not in both: {only[:10]}): paired statistics "
                             "need the same cases")


def folder_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """A sweep folder's tables: reduced from its job folders when it has ``jobs/``, else its sweep CSVs."""
    folder = Path(folder)
    if (folder / JOBS_DIR).is_dir():
        return collect_tables(folder)
    tables = {}
    for table, (_, sweep_file, _) in TABLES.items():
        if (folder / sweep_file).is_file():
            tables[table] = read_result_csv(folder / sweep_file)
    if (folder / STAGE_PAM_CSV).is_file():
        tables["stage_pam"] = pd.read_csv(folder / STAGE_PAM_CSV)
    return tables


def folder_metric_columns(folder: Path, tables: dict[str, pd.DataFrame]) -> set[str]:
    """A compared folder's metric columns: those its jobs recorded, else (no job folders) its run columns named by
    the prefixes (``engine.results.reducer.metric_columns``)."""
    recorded = sweep_metric_columns(folder)
    return recorded if recorded is not None else set(metric_columns(tables["runs"]))


def check_unique_runs(folders: Sequence[Path], tables: Sequence[dict[str, pd.DataFrame]]) -> None:
    """``ValueError`` naming both folders when a run (model, seed, fold) is in two of them."""
    seen: dict[tuple, Path] = {}
    for folder, own in zip(folders, tables):
        runs = own.get("runs")
        for row in ([] if runs is None else runs[list(RUN_KEYS)].to_dict("records")):
            key = run_key(row)
            if key in seen:
                fold = "" if key[2] is None else f", fold {key[2]}"
                raise ValueError(f"--compare: the run {key[0]} seed {key[1]}{fold} is in both {seen[key]} and "
                                 f"{folder}; each run may come from one folder only")
            seen[key] = folder


def union_tables(tables: Sequence[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Every table concatenated in folder order; stage-wise PAM once per model (the first folder's)."""
    names = list(dict.fromkeys(t for own in tables for t in own))
    union = {name: pd.concat([own[name] for own in tables if name in own], ignore_index=True, sort=False)
             for name in names}
    if "stage_pam" in union and {"model", "stage"} <= set(union["stage_pam"].columns):
        union["stage_pam"] = union["stage_pam"].drop_duplicates(subset=["model", "stage"], keep="first")
    return union


def _check_output(folders: Sequence[Path], output_dir: Path) -> None:
    out = Path(output_dir).resolve()
    resolved = [Path(f).resolve() for f in folders]
    twice = [str(f) for f, r in zip(folders, resolved) if resolved.count(r) > 1]
    if twice:
        raise ValueError(f"--compare: {twice[0]} is given twice")
    for folder in folders:
        if not Path(folder).is_dir():
            raise ValueError(f"--compare: {folder} is not a folder")
        if Path(folder).resolve() == out:
            raise ValueError(f"--output_dir {output_dir} is one of the --compare folders: its tables would be "
                             "overwritten; choose another folder")
    if (out / JOBS_DIR).is_dir():
        raise ValueError(f"--output_dir {output_dir} is a sweep folder ({JOBS_DIR}/): choose another folder")


def _record(folders: Sequence[Path], configs: Sequence[dict[str, Any]], models: list[str],
            options: StatsOptions) -> dict[str, Any]:
    """OUT's ``config.json``: the shared data flags, the models, the statistics flags used and the folders."""
    sources = [dict(results_dir=str(f), resolved_models=c.get("resolved_models"), seeds=c.get("seeds"),
                    epochs=c.get("epochs"), use_5fold=c.get("use_5fold")) for f, c in zip(folders, configs)]
    return dict({k: configs[0][k] for k in DATA_FIELDS if k in configs[0]}, dataset=configs[0].get("dataset"),
                resolved_models=models, baseline=options.baseline, stats_seed=options.stats_seed,
                bootstrap_resamples=options.bootstrap_resamples, compared_sweeps=sources)


def compare_sweeps(folders: Sequence[Path], output_dir: Path, **stats_overrides: Any) -> list[Path]:
    """Build the tables and statistics of the union of ``folders``' runs in ``output_dir`` (see the module
    docstring); ``stats_overrides``: ``baseline``, ``stats_seed``, ``bootstrap_resamples`` (None: the first
    folder's recorded value). Returns the files written (tables; the caller draws the charts).

    Raises:
        ValueError: a folder is missing, not a sweep, holds other data or test cases, or shares a run with another.
    """
    folders = [Path(f) for f in folders]
    _check_output(folders, output_dir)
    configs = [read_record(f, CONFIG_JSON) for f in folders]
    splits = [read_record(f, SPLITS_JSON) for f in folders]
    check_same_data(folders, configs, splits)
    tables = [folder_tables(f) for f in folders]
    for folder, own in zip(folders, tables):
        if "runs" not in own:
            raise ValueError(f"--compare: {folder} has no finished runs")
    check_unique_runs(folders, tables)
    union = union_tables(tables)
    metrics = set().union(*(folder_metric_columns(f, own) for f, own in zip(folders, tables)))
    models = list(dict.fromkeys([*(m for c in configs for m in c.get("resolved_models") or []),
                                 *union["runs"]["model"].astype(str)]))
    options = stats_options_from_config(configs[0], **stats_overrides)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with results_lock(output_dir):
        written = write_tables(output_dir, union, options, models, metrics)
        atomic_write_json(output_dir / CONFIG_JSON, _record(folders, configs, models, options))
        shutil.copyfile(folders[0] / SPLITS_JSON, output_dir / SPLITS_JSON)
    log.info("--compare: %d runs of %d models from %d folders in %s", len(union["runs"]), len(models), len(folders),
             output_dir)
    return [*written, output_dir / CONFIG_JSON, output_dir / SPLITS_JSON]
