"""The tables of ``report.html``: compact, formatted views of the sweep tables, rendered as escaped HTML.

The CSV files stay the source of truth; these views only round and join columns (a metric cell reads
``mean [CI low, CI high]``, the 95% bootstrap interval over runs, or ``mean +- std`` without it).
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable, Mapping

import pandas as pd

LESION_METRICS = ("ap_10", "ap_30", "ap_50", "map", "mar", "froc_cpm")
TEST_VIEW = ("comparison", "metric", "model_a", "model_b", "n", "mean_diff", "diff_ci", "p_value", "p_holm",
             "rank_biserial", "note")
RANK_VIEW = ("final_rank", "model", "mean_rank", "rank_ci", "p_rank_1", "p_keep_rank", "n_cases", "n_resamples")
RUN_VIEW = ("model", "seed", "fold", "status", "error", "epochs", "best_epoch", "dice_mean", "map", "train_time_s")


def number(value: Any, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits; "" for a missing or non-numeric cell."""
    try:
        number_ = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    return "" if math.isnan(number_) else f"{number_:.{digits}g}"


def metric_cell(row: Mapping[str, Any], metric: str) -> str:
    """``mean [low, high]`` from ``<metric>_mean``/``_ci_low``/``_ci_high``, else ``mean +- std``, else ""."""
    mean = number(row.get(f"{metric}_mean"))
    if not mean:
        return ""
    low, high = number(row.get(f"{metric}_ci_low")), number(row.get(f"{metric}_ci_high"))
    if low and high:
        return f"{mean} [{low}, {high}]"
    std = number(row.get(f"{metric}_std"))
    return f"{mean} +- {std}" if std else mean


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _pair(low: Any, high: Any) -> str:
    """``[low, high]``, or "" when either end is missing."""
    a, b = number(low), number(high)
    return f"[{a}, {b}]" if a and b else ""


def _scaled(value: Any, scale: float) -> str:
    try:
        return number(float(value) * scale)
    except (TypeError, ValueError):
        return ""


def comparison_view(comparison: pd.DataFrame, regions: list[str]) -> pd.DataFrame:
    """One row per model: rank, runs, Dice and HD95 per region, lesion metrics, params, FLOPs, PAM, latency."""
    metrics = [f"dice_{r}" for r in regions] + ["dice_mean"] + [f"hd95_{r}" for r in regions]
    metrics += [m for m in LESION_METRICS if f"{m}_mean" in comparison.columns]
    metrics = [m for m in metrics if f"{m}_mean" in comparison.columns]
    rows = []
    rank_column, rank_header = _rank_column(comparison)
    if rank_column in comparison.columns:  # best first, as the ranking table below
        comparison = comparison.sort_values(rank_column, kind="stable", na_position="last")
    for _, row in comparison.iterrows():
        view: dict[str, str] = {rank_header: number(row.get(rank_column)), "model": str(row["model"]),
                                "ok runs": f"{number(row.get('n_ok'))}/{number(row.get('n_runs'))}"}
        view.update({m: metric_cell(row, m) for m in metrics})
        view["params (M)"] = _scaled(row.get("params"), 1e-6)
        view["GFLOPs"] = _scaled(row.get("flops_torch"), 1e-9)
        view["PAM train (MB)"] = number(row.get("pam_train_mb"))
        view["PAM infer (MB)"] = number(row.get("pam_infer_mb"))
        latency, spread = _float(row.get("latency_ms")), _float(row.get("latency_ms_std"))
        view["latency (ms)"] = "" if math.isnan(latency) else f"{latency:.1f}" + (
            "" if math.isnan(spread) else f" +- {spread:.1f}")
        rows.append(view)
    frame = pd.DataFrame(rows)
    return frame.loc[:, [c for c in frame.columns if (frame[c] != "").any() or c in (rank_header, "model")]]


RANK_THEN_AGGREGATE = "rank (rank then aggregate)"
RANK_MEAN_DICE = "rank (mean Dice)"


def _rank_column(comparison: pd.DataFrame) -> tuple[str, str]:
    """The one rank the page shows and its header: ``final_rank`` (ranking.csv's rank then aggregate, as the Ranking
    section) when the comparison has it with a value; else ``rank`` (by mean Dice over runs), named so."""
    if "final_rank" in comparison.columns and pd.to_numeric(comparison["final_rank"], errors="coerce").notna().any():
        return "final_rank", RANK_THEN_AGGREGATE
    return "rank", RANK_MEAN_DICE


def tests_view(tests: pd.DataFrame) -> pd.DataFrame:
    """The paired tests with rounded numbers and the difference's interval in one cell."""
    view = tests.copy()
    view["diff_ci"] = [_pair(a, b) for a, b in zip(view.get("diff_ci_low", []), view.get("diff_ci_high", []))]
    for column in ("mean_diff", "p_value", "p_holm", "rank_biserial"):
        if column in view.columns:
            view[column] = view[column].map(lambda v: number(v, 3))
    return view.loc[:, [c for c in TEST_VIEW if c in view.columns]].astype(object).fillna("")


def ranking_view(ranking: pd.DataFrame) -> pd.DataFrame:
    """The ranking, best first, with the 95% bootstrap rank interval in one cell."""
    view = ranking.sort_values("final_rank").copy()
    if "rank_ci_low" in view.columns:
        view["rank_ci"] = [_pair(a, b) for a, b in zip(view["rank_ci_low"], view["rank_ci_high"])]
    for column in ("mean_rank", "p_rank_1", "p_keep_rank"):
        if column in view.columns:
            view[column] = view[column].map(lambda v: number(v, 3))
    return view.loc[:, [c for c in RANK_VIEW if c in view.columns]]


def runs_view(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run with its status and error (failed runs stay visible), rounded."""
    view = runs.loc[:, [c for c in RUN_VIEW if c in runs.columns]].copy()
    for column in ("dice_mean", "map", "train_time_s"):
        if column in view.columns:
            view[column] = view[column].map(number)
    return view.astype(object).fillna("")


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    """(dotted key, value text) pairs of a nested JSON object, lists written as JSON-like text."""
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def key_value_table(mapping: Mapping[str, Any]) -> str:
    """A two-column HTML table of a (nested) JSON object, escaped."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in flatten(mapping))
    return f'<table class="kv">{rows}</table>'


def html_table(frame: pd.DataFrame) -> str:
    """``frame`` as an escaped HTML table without the index."""
    return frame.to_html(index=False, escape=True, na_rep="", border=0, classes="data")
