"""Comparison statistics built from the sweep tables: the extended ``model_comparison.csv``, the paired tests of
``statistical_tests.csv`` and the challenge-style ``ranking.csv`` (functions of frames; the reducer writes them).

Conventions (every table):

- Only ok runs count: rows of the per-case and validation tables are kept when their (model, seed, fold) is an
  ok run of the runs table.
- Every bootstrap is a percentile bootstrap with ``StatsOptions.bootstrap_resamples`` resamples and the Generator
  ``np.random.default_rng(StatsOptions.stats_seed)``, the same seed for each interval (so each interval is
  reproducible on its own); see ``metrics.statistics`` and ``metrics.ranking``.
- Model order: the sweep's ``resolved_models`` (config.json), then models in order of first appearance.
- Direction: ``hd95_*`` (and ``lesion_hd95_*``) are better when lower; every other tested or ranked metric when
  higher. Differences are always ``model_a - model_b``, whatever the direction.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from itertools import combinations
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from metrics.detection import LESION_COLUMNS
from metrics.lesion_bootstrap import ScanSet, scan_bootstrap_ci, scans_from_rows
from metrics.ranking import bootstrap_rank_stability, pareto_front, rank_then_aggregate
from metrics.statistics import bootstrap_ci, holm, paired_bootstrap_diff_ci, paired_wilcoxon, variance_shares
from utils.schema import BRATS_CLASS_NAMES, BRATS_REGION_NAMES, is_per_click

from engine.options.stats_options import StatsOptions

log = logging.getLogger(__name__)

# columns model_comparison.csv gains per metric (after <m>_mean, <m>_std)
EXTENDED_SUFFIXES = ("_ci_low", "_ci_high", "_n_runs", "_n_cases", "_oof_mean", "_seed_share", "_fold_share")
# Pareto columns of model_comparison.csv: column -> cost axis (accuracy: ACCURACY_COLUMN, higher is better)
PARETO_AXES = {"pareto_pam": "pam_train_mb", "pareto_latency": "latency_ms", "pareto_flops": "flops_torch",
               "pareto_params": "params"}
# model_comparison.csv's copy of ranking.csv's rank-then-aggregate rank (its own ``rank`` ranks by mean Dice)
FINAL_RANK = "final_rank"
ACCURACY_COLUMN = "dice_mean_mean"
# dataset-level metrics: one value per run, no per-case value (their CI is over scans when the boxes table has the
# runs' boxes, else over runs; see lesion_scan_intervals)
DATASET_LEVEL_PREFIXES = ("ap_", "map", "mar", "froc_")
# per-case columns that statistical_tests.csv tests
TESTED_PREFIXES = ("dice_", "hd95_", "lesion_dice_", "lesion_hd95_")
LOWER_IS_BETTER_PREFIXES = ("hd95_", "lesion_hd95_")
TEST_COLUMNS = ["comparison", "metric", "model_a", "model_b", "baseline", "n", "n_nonzero", "mean_a", "mean_b",
                "mean_diff", "diff_ci_low", "diff_ci_high", "statistic", "p_value", "p_holm", "rank_biserial",
                "enough", "higher_is_better", "note"]


def is_extended_column(name: str) -> bool:
    """True for the columns :func:`extend_comparison` adds (the incremental reducer leaves them out)."""
    return name.startswith("pareto_") or name.endswith(EXTENDED_SUFFIXES) or name == FINAL_RANK


def add_final_rank(comparison: pd.DataFrame, ranking: pd.DataFrame | None) -> pd.DataFrame:
    """``comparison`` with ``final_rank`` (ranking.csv's rank then aggregate, the one ranking the report shows)
    right after ``rank`` (which ranks by mean Dice over runs, ``dice_mean_mean``); NaN for a model ranking.csv lacks
    (no per-case rows), and the column is left out without a ranking. Values of other columns are unchanged."""
    if ranking is None or FINAL_RANK not in ranking or "model" not in comparison:
        return comparison
    ranks = dict(zip(ranking["model"].astype(str), pd.to_numeric(ranking[FINAL_RANK], errors="coerce")))
    table = comparison.copy()
    table[FINAL_RANK] = [ranks.get(str(m), np.nan) for m in table["model"]]
    columns = [c for c in table.columns if c != FINAL_RANK]
    at = columns.index("rank") + 1 if "rank" in columns else 1
    return table[columns[:at] + [FINAL_RANK] + columns[at:]]


def higher_is_better(metric: str) -> bool:
    """False for ``hd95_*`` and ``lesion_hd95_*`` (distances), True for every other metric."""
    return not metric.startswith(LOWER_IS_BETTER_PREFIXES)


def _run_keys(frame: pd.DataFrame) -> pd.Series:
    """One string per row, ``model|seed|fold`` (fold empty for holdout; 1, 1.0 and "1" alike)."""
    seed = _key_part(frame["seed"])
    fold = _key_part(frame["fold"]) if "fold" in frame else pd.Series("", index=frame.index)
    return frame["model"].astype(str) + "|" + seed + "|" + fold


def _key_part(values: pd.Series) -> pd.Series:
    """Integers as strings, missing values as "" (pandas 3 turns ``Int64`` NA into NaN under ``astype(str)``,
    which would make every holdout key NaN)."""
    numbers = pd.to_numeric(values, errors="coerce").astype("Int64")
    return numbers.astype(object).where(numbers.notna(), "").astype(str)


def ok_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose status is ok (all of them when the table has no status)."""
    return runs[runs["status"].astype(str) == "ok"] if "status" in runs else runs


def ok_rows(frame: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame | None:
    """Rows of a per-run table (per case, validation cases) that belong to ok runs; None for no table or rows."""
    if frame is None or frame.empty or not {"model", "seed"} <= set(frame.columns):
        return None
    kept = frame[_run_keys(frame).isin(set(_run_keys(ok_runs(runs))))].copy()
    if kept.empty:
        return None
    kept["model"] = kept["model"].astype(str)
    return kept


def model_order(models: Sequence[str] | None, *frames: pd.DataFrame | None) -> list[str]:
    """``models`` (the sweep's order) that have rows in the frames, then the frames' other models in order."""
    present = list(dict.fromkeys(m for f in frames if f is not None and "model" in f for m in f["model"].astype(str)))
    first = [m for m in (models or []) if m in present]
    return first + [m for m in present if m not in first]


def region_names(columns: Sequence[str]) -> list[str]:
    """Regions of ``dice_<region>`` columns: wt/tc/et when present, else every ``dice_*`` except the mean and the
    BraTS class columns (ncr, ed)."""
    cols = [str(c) for c in columns]
    brats = [r for r in BRATS_REGION_NAMES if f"dice_{r}" in cols]
    if brats:
        return brats
    return [c[len("dice_"):] for c in cols if c.startswith("dice_") and c[len("dice_"):] not in
            ("mean", *BRATS_CLASS_NAMES) and not is_per_click(c)]


@contextmanager
def _quiet_grid_warnings() -> Iterator[None]:
    """Drop ``variance_shares``' per-call "missing runs" warnings (logged once per model here instead)."""
    target = logging.getLogger("metrics.statistics")

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("variance_shares:")

    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)


# --- model_comparison.csv: intervals, counts, out-of-fold means, variance shares, Pareto fronts -------------------

def _numeric(frame: pd.DataFrame | None, column: str) -> pd.Series:
    """``frame[column]`` as floats; an empty series when the frame or the column is missing."""
    if frame is None or column not in frame:
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[column], errors="coerce")


def _of_model(frame: pd.DataFrame | None, model: str) -> pd.DataFrame | None:
    return None if frame is None else frame[frame["model"] == model]


def metric_summary(metric: str, runs: pd.DataFrame, per_case: pd.DataFrame | None, val_cases: pd.DataFrame | None,
                   options: StatsOptions) -> dict[str, Any]:
    """The extended columns of one model and metric (``runs``, ``per_case``, ``val_cases``: that model's ok rows).

    - ``<m>_ci_low``, ``<m>_ci_high``: 95% percentile bootstrap CI of the mean over ok runs
      (``metrics.statistics.bootstrap_ci``; NaN below 2 runs with a value). :func:`extend_comparison` replaces
      them for the dataset-level lesion metrics (``ap_*``, ``map``, ``mar``, ``froc_*``) by the scan bootstrap of
      :func:`lesion_scan_intervals` wherever the boxes table allows it.
    - ``<m>_n_runs``: ok runs with a value; ``<m>_n_cases``: non-NaN per-case values (cases x runs) of the test
      per-case table, NaN when that table has no such column (e.g. AP).
    - ``<m>_oof_mean``: pooled out-of-fold mean, the mean of every validation row (each job's validation cases at
      its best epoch; with ``--use_5fold`` each non-test case once per seed) of the column of the same name;
      NaN when the validation rows have no such column (e.g. ``hd95_*``: validation computes Dice, precision and
      recall only).
    - ``<m>_seed_share``, ``<m>_fold_share``: ``metrics.statistics.variance_shares`` over the ok runs (holdout
      runs are one fold: fold share NaN, seed share 1 or 0).
    """
    values = _numeric(runs, metric)
    low, high = bootstrap_ci(values, n_resamples=options.bootstrap_resamples, seed=options.stats_seed)
    cases = _numeric(per_case, metric)
    oof = _numeric(val_cases, metric)
    shares = {"seed": np.nan, "fold": np.nan}
    if values.notna().any():
        grid = pd.DataFrame({"seed": runs["seed"].to_numpy(),
                             "fold": runs["fold"].to_numpy() if "fold" in runs else np.nan,
                             "value": values.to_numpy()})
        shares = variance_shares(grid, "value")
    has_cases = per_case is not None and metric in per_case
    return {f"{metric}_ci_low": low, f"{metric}_ci_high": high, f"{metric}_n_runs": int(values.notna().sum()),
            f"{metric}_n_cases": int(cases.notna().sum()) if has_cases else np.nan,
            f"{metric}_oof_mean": float(oof.mean()) if oof.notna().any() else np.nan,
            f"{metric}_seed_share": shares["seed"], f"{metric}_fold_share": shares["fold"]}


def lesion_scan_intervals(model: str, runs: pd.DataFrame, boxes: pd.DataFrame | None, metrics: Sequence[str],
                          options: StatsOptions) -> dict[str, float]:
    """Scan-bootstrap ``<m>_ci_low``/``<m>_ci_high`` of the dataset-level lesion metrics of ``metrics`` (the
    ``LESION_COLUMNS`` among them) for one model (``runs``, ``boxes``: that model's ok rows).

    - Resamples the test scans, not the runs: each resample draws the model's scans with replacement
      (``np.random.default_rng(options.stats_seed)``, ``options.bootstrap_resamples`` resamples, the draws of
      ``metrics.statistics.bootstrap_scans_ci``), every ok run's metric is recomputed on the same drawn scans from
      its boxes (``metrics.lesion_bootstrap``, equal to ``detection_metrics`` on those scans) and the statistic is
      the mean over the runs; the interval is the 2.5 / 97.5 percentiles over the resamples (NaN resamples, i.e.
      no lesion drawn, dropped; NaN below 2 scans).
    - Scans: those of the first run's boxes in their order; when the runs hold different scans only the scans
      every run holds are used (a warning says so).
    - ``{}`` (the intervals over runs stay) when there is no such metric, no boxes table, or an ok run of the
      model has no boxes rows (logged). A run whose recomputed full-set value differs from its runs-table value by
      more than 1e-6 is logged as a warning (the boxes table does not describe that run).
    """
    wanted = [m for m in metrics if m in LESION_COLUMNS]
    if not wanted or boxes is None or runs.empty:
        return {}
    run_keys, box_keys = _run_keys(runs), _run_keys(boxes)
    missing = sorted(set(run_keys) - set(box_keys))
    if missing:
        log.info("%s: ok runs %s have no boxes table; its AP/FROC intervals stay over runs", model, ", ".join(missing))
        return {}
    loaded = [(key, *scans_from_rows(boxes[box_keys == key])) for key in run_keys]
    common = [c.case_id for c in loaded[0][1]]
    for _, scans, _ in loaded[1:]:
        held = {c.case_id for c in scans}
        common = [c for c in common if c in held]
    if any(len(scans) != len(common) for _, scans, _ in loaded):
        log.warning("%s: its runs hold different test scans; the scan bootstrap uses the %d scans all of them hold",
                    model, len(common))
    sets = []
    for key, scans, settings in loaded:
        by_id = {c.case_id: c for c in scans}
        sets.append(ScanSet([by_id[c] for c in common], **settings))
        if len(scans) == len(common):
            _check_recomputed(model, key, sets[-1], runs[run_keys == key].iloc[0], wanted)
    ci = scan_bootstrap_ci(sets, n_resamples=options.bootstrap_resamples, seed=options.stats_seed)
    out: dict[str, float] = {}
    for metric in wanted:
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = ci[metric]
    return out


def _check_recomputed(model: str, key: str, scans: ScanSet, run: pd.Series, metrics: Sequence[str]) -> None:
    """Warn when a metric recomputed from the run's boxes differs from the run's recorded value (> 1e-6)."""
    again = scans.metrics_dict()
    differ = [m for m in metrics if m in run and not _close(again[m], pd.to_numeric(run[m], errors="coerce"))]
    if differ:
        log.warning("%s: run %s: %s recomputed from its boxes differ from the runs table; its scan intervals may "
                    "not describe it", model, key, ", ".join(differ))


def _close(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or bool(abs(a - b) <= 1e-6)


def _note_incomplete_grid(model: str, runs: pd.DataFrame) -> None:
    """Log once per model when its ok runs do not fill the seeds x folds grid."""
    folds = runs["fold"].astype(object).where(runs["fold"].notna(), "holdout") if "fold" in runs else \
        pd.Series("holdout", index=runs.index)
    cells = set(zip(runs["seed"].tolist(), folds.tolist()))
    n_grid = runs["seed"].nunique() * folds.nunique()
    if len(cells) < n_grid:
        log.info("%s: its ok runs fill %d of the %d seed x fold cells; the variance shares use the largest complete "
                 "sub-grid (seeds or folds with missing runs left out)", model, len(cells), n_grid)


def _extended_order(columns: Sequence[str], metrics: Sequence[str]) -> list[str]:
    """The basic columns, each metric's extended columns right after its ``<m>_std``, the Pareto columns last."""
    wanted = set(metrics)
    order: list[str] = []
    for column in columns:
        order.append(column)
        if column.endswith("_std") and column[:-len("_std")] in wanted:
            order += [column[:-len("_std")] + suffix for suffix in EXTENDED_SUFFIXES]
    return order + list(PARETO_AXES)


def add_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the boolean columns of :data:`PARETO_AXES`: True for models on the front of ``dice_mean_mean``
    (higher better) against that cost (lower better); all False without the accuracy or the cost column
    (``metrics.ranking.pareto_front``: NaN never on the front, equal models both on it)."""
    table = table.copy()
    for column, cost in PARETO_AXES.items():
        if ACCURACY_COLUMN in table and cost in table and len(table):
            table[column] = pareto_front(table.assign(**{cost: pd.to_numeric(table[cost], errors="coerce"),
                                                         ACCURACY_COLUMN: pd.to_numeric(table[ACCURACY_COLUMN],
                                                                                        errors="coerce")}),
                                         accuracy=ACCURACY_COLUMN, cost=cost).to_numpy()
        else:
            table[column] = False
    return table


def extend_comparison(basic: pd.DataFrame, runs: pd.DataFrame, metrics: Sequence[str],
                      per_case: pd.DataFrame | None = None, val_cases: pd.DataFrame | None = None,
                      options: StatsOptions | None = None, boxes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The full ``model_comparison.csv``: ``basic`` (the reducer's rows: mean, std, n_runs, rank, efficiency) with,
    per metric of ``metrics``, the columns of :func:`metric_summary` after its ``<m>_std``, and the Pareto columns
    of :func:`add_pareto` last. ``boxes``: the sweep's boxes table (``utils.schema.TABLES["boxes"]``); with it the
    dataset-level lesion metrics get the scan-bootstrap intervals of :func:`lesion_scan_intervals`, without it
    (older sweeps, BraTS) their intervals stay over runs. Values of the basic columns are unchanged."""
    options = options or StatsOptions()
    ok = ok_runs(runs).copy()
    ok["model"] = ok["model"].astype(str)
    cases, val = ok_rows(per_case, runs), ok_rows(val_cases, runs)
    box_rows = ok_rows(boxes, runs) if any(m in LESION_COLUMNS for m in metrics) else None
    extra = []
    with _quiet_grid_warnings():
        for model in basic["model"].astype(str):
            own = ok[ok["model"] == model]
            if len(own) > 1:
                _note_incomplete_grid(model, own)
            row: dict[str, Any] = {}
            for metric in metrics:
                row.update(metric_summary(metric, own, _of_model(cases, model), _of_model(val, model), options))
            row.update(lesion_scan_intervals(model, own, _of_model(box_rows, model), metrics, options))
            extra.append(row)
    added = pd.DataFrame(extra, index=range(len(basic)))
    table = pd.concat([basic.reset_index(drop=True), added], axis=1)
    table = add_pareto(table)
    return table[[c for c in _extended_order(basic.columns, metrics) if c in table]]


# --- statistical_tests.csv: paired tests on the per-case test results -----------------------------------------------

def tested_metrics(columns: Sequence[str]) -> list[str]:
    """Per-case columns that are tested: Dice and HD95 per region/class (``dice_*``, ``hd95_*``) and the BraTS
    lesion-wise ones (``lesion_dice_*``, ``lesion_hd95_*``), in table order; never a promptable model's per-click
    columns (``utils.schema.is_per_click``), which only it has."""
    return [str(c) for c in columns if str(c).startswith(TESTED_PREFIXES) and not is_per_click(c)]


def case_values(per_case: pd.DataFrame, metric: str, models: Sequence[str]) -> pd.DataFrame:
    """Cases x models: each case's value per model, the mean over that model's ok runs (seeds and folds; NaN runs
    skipped, NaN when every run is NaN); a case a model has no row for is NaN."""
    values = per_case.assign(_value=pd.to_numeric(per_case[metric], errors="coerce"))
    grid = values.groupby(["case_id", "model"], sort=True)["_value"].mean().unstack("model")
    return grid.reindex(columns=list(models))


def resolve_baseline(requested: str | None, models: Sequence[str]) -> str:
    """``requested`` when it is one of ``models`` (the models with per-case results, in sweep order), else the first
    model (a warning names ``--baseline`` and the models when a requested one has no results)."""
    if requested is not None and requested not in models:
        log.warning("--baseline %s has no per-case test results here (models: %s); %s is used as the baseline",
                    requested, ", ".join(models), models[0])
    return requested if requested in models else models[0]


def compare_pair(grid: pd.DataFrame, a: str, b: str, options: StatsOptions) -> dict[str, Any]:
    """Paired statistics of models ``a`` and ``b`` over the cases with a value for both (differences ``a - b``):
    ``metrics.statistics.paired_wilcoxon`` (two-sided, zero differences dropped; ``enough``/``note`` when too few
    non-zero pairs can reach p < 0.05) and ``paired_bootstrap_diff_ci`` (percentile CI of the mean difference)."""
    x, y = grid[a].to_numpy(dtype=float), grid[b].to_numpy(dtype=float)
    both = ~(np.isnan(x) | np.isnan(y))
    test = paired_wilcoxon(x, y)
    mean_diff, low, high = paired_bootstrap_diff_ci(x, y, n_resamples=options.bootstrap_resamples,
                                                    seed=options.stats_seed)
    return dict(model_a=a, model_b=b, n=test["n"], n_nonzero=test["n_nonzero"],
                mean_a=float(x[both].mean()) if both.any() else np.nan,
                mean_b=float(y[both].mean()) if both.any() else np.nan, mean_diff=mean_diff, diff_ci_low=low,
                diff_ci_high=high, statistic=test["statistic"], p_value=test["p"],
                rank_biserial=test["rank_biserial"], enough=test["enough"], note=test["note"])


def statistical_tests(per_case: pd.DataFrame | None, runs: pd.DataFrame, options: StatsOptions | None = None,
                      models: Sequence[str] | None = None) -> pd.DataFrame:
    """``statistical_tests.csv``: per tested metric (:func:`tested_metrics`), each model against the baseline
    (``comparison`` "baseline", ``model_a`` the model, ``model_b`` the baseline) and every unordered pair of models
    (``comparison`` "pairwise", in model order), on the per-case test values of :func:`case_values`.

    - ``p_holm``: Holm-adjusted p-value over the comparisons of the same metric within the same family (the
      baseline family and the pairwise family are corrected separately).
    - ``baseline``: the baseline used (:func:`resolve_baseline`); ``higher_is_better``: the metric's direction.
    - ``enough`` False: too few non-zero pairs for p < 0.05 to be possible; ``note`` says so and the p-value is
      not evidence.
    Columns :data:`TEST_COLUMNS`; no rows when fewer than two models have per-case results.
    """
    options = options or StatsOptions()
    cases = ok_rows(per_case, runs)
    if cases is None or "case_id" not in cases:
        return pd.DataFrame(columns=TEST_COLUMNS)
    order = model_order(models, cases)
    if len(order) < 2:
        return pd.DataFrame(columns=TEST_COLUMNS)
    baseline = resolve_baseline(options.baseline, order)
    families = {"baseline": [(m, baseline) for m in order if m != baseline], "pairwise": list(combinations(order, 2))}
    rows = []
    for metric in tested_metrics(cases.columns):
        grid = case_values(cases, metric, order)
        for family, pairs in families.items():
            for a, b in pairs:
                rows.append(dict(compare_pair(grid, a, b, options), comparison=family, metric=metric,
                                 baseline=baseline, higher_is_better=higher_is_better(metric)))
    table = pd.DataFrame(rows, columns=TEST_COLUMNS)
    if len(table):
        table["p_holm"] = table.groupby(["comparison", "metric"], sort=False)["p_value"].transform(
            lambda p: holm(p.to_numpy(dtype=float)))
    return table


# --- ranking.csv: rank then aggregate, and its bootstrap stability ------------------------------------------------

def ranking_metrics(columns: Sequence[str]) -> dict[str, str]:
    """Columns ranked per case: ``dice_<region>`` ("max") and ``hd95_<region>`` ("min") of :func:`region_names`
    (wt/tc/et for BraTS, the dataset's region otherwise), the ones present."""
    cols = set(map(str, columns))
    metrics = {f"dice_{r}": "max" for r in region_names(list(columns)) if f"dice_{r}" in cols}
    metrics.update({f"hd95_{r}": "min" for r in region_names(list(columns)) if f"hd95_{r}" in cols})
    return metrics


def ranking_table(per_case: pd.DataFrame | None, runs: pd.DataFrame,
                  options: StatsOptions | None = None) -> pd.DataFrame | None:
    """``ranking.csv``: ``metrics.ranking.rank_then_aggregate`` over the ok per-case test rows (several runs of a
    model averaged per case first; ties mean rank; a missing or NaN value last) merged per model with
    ``bootstrap_rank_stability`` (cases resampled; ``p_rank_k``, ``median_rank``, ``rank_ci_low``/``high``,
    ``p_keep_rank`` = share of resamples at ``final_rank``); ``n_resamples`` and ``metrics`` (the ranked columns
    and directions) on every row. None without per-case rows or ranked columns."""
    options = options or StatsOptions()
    cases = ok_rows(per_case, runs)
    if cases is None or "case_id" not in cases:
        return None
    metrics = ranking_metrics(cases.columns)
    if not metrics:
        return None
    frame = cases[["model", "case_id", *metrics]].copy()
    for column in metrics:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    ranks = rank_then_aggregate(frame, metrics=metrics)
    stability = bootstrap_rank_stability(frame, metrics=metrics, n_resamples=options.bootstrap_resamples,
                                         seed=options.stats_seed)
    table = ranks.merge(stability.drop(columns=["full_rank"]), on="model", how="left")
    table["n_resamples"] = options.bootstrap_resamples
    table["metrics"] = " ".join(f"{c}:{d}" for c, d in metrics.items())
    return table
