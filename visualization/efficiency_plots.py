"""Parameter efficiency: mean Dice against parameters, FLOPs and training activation memory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from visualization._common import (
    detect_regions,
    dice_mean_column,
    load_ok_results,
    model_colors,
    no_data,
    per_model_stats,
    save_figure,
)

logger = logging.getLogger(__name__)

OUTPUT = "parameter_efficiency.png"


def efficiency_table(frame: pd.DataFrame, regions: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-model mean/std of dice_mean, params_m, gflops and pam_train_mb from ok result rows.

    GFLOPs come from ``flops_torch``, falling back to ``flops_thop`` where that is missing.
    """
    data = frame.copy()
    data["dice_mean"] = dice_mean_column(data, regions)
    data["params_m"] = _column(data, "params") / 1e6
    data["gflops"] = _column(data, "flops_torch").fillna(_column(data, "flops_thop")) / 1e9
    data["pam_train_mb"] = _column(data, "pam_train_mb")
    return per_model_stats(data, ["dice_mean", "params_m", "gflops", "pam_train_mb"])


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """``frame[name]`` as floats, or all NaN when the column is missing."""
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce")


def _scatter(
    ax: object, means: pd.DataFrame, stds: pd.DataFrame, x_col: str, colors: dict, log: bool
) -> bool:
    """Scatter dice_mean against ``x_col`` with y error bars and model labels; False if no points."""
    points = means[[x_col, "dice_mean"]].replace([np.inf, -np.inf], np.nan).dropna()
    if points.empty:
        return False
    for model, row in points.iterrows():
        err = stds.at[model, "dice_mean"]
        ax.errorbar(row[x_col], row["dice_mean"], yerr=0.0 if pd.isna(err) else err,
                    fmt="o", color=colors[model], capsize=3, markersize=6)
        ax.annotate(model, (row[x_col], row["dice_mean"]), textcoords="offset points",
                    xytext=(4, 4), fontsize="x-small")
    if log and (points[x_col] > 0).all():
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.grid(alpha=0.3, which="both")
    return True


def draw_parameter_efficiency(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``parameter_efficiency.png``: three panels of mean Dice (error bar = std over runs)
    against params (millions, log x), GFLOPs (log x) and PAM train (MB), one labelled point per model.
    Returns the written path, or None when there are no ok rows or no Dice values.
    """
    results_dir = Path(results_dir)
    frame = load_ok_results(results_dir)
    if frame is None:
        return None
    means, stds = efficiency_table(frame, detect_regions(frame.columns, regions))
    if means["dice_mean"].isna().all():
        logger.info("skipping parameter efficiency: no Dice values in ok rows")
        return None
    colors = model_colors(list(means.index))
    fig = Figure(figsize=(16, 5.5), layout="constrained")
    panels = (
        ("params_m", "parameters (M)", True),
        ("gflops", "GFLOPs", True),
        ("pam_train_mb", "PAM train (MB)", False),
    )
    for ax, (column, label, log) in zip(fig.subplots(1, 3), panels):
        if not _scatter(ax, means, stds, column, colors, log):
            no_data(ax, f"no {column} values")
        ax.set_xlabel(f"{label}, log scale" if ax.get_xscale() == "log" else label)
        ax.set_ylabel("mean Dice")
    fig.suptitle("Parameter efficiency (mean +- std over seeds/folds)")
    return save_figure(fig, results_dir / OUTPUT)
