"""Model comparison chart: Dice per region, activation memory and latency per model (bars).

Error bars say what varies: Dice bars carry the std over runs (seeds x folds, ddof=1); PAM and latency
bars carry the spread of the measurement itself (its ``*_std`` column: ``pam_runs`` / ``latency_runs``
repeats), pooled over the model's runs, because one model is measured the same way in every run and a
std over runs of one shared measurement would be about 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from visualization._common import (
    detect_regions,
    load_ok_results,
    no_data,
    numeric,
    per_model_stats,
    rotate_labels,
    save_figure,
)

logger = logging.getLogger(__name__)

OUTPUT = "model_comparison_chart.png"
PAM_COLUMNS = ("pam_train_mb", "pam_infer_mb")
MEASURED = (*PAM_COLUMNS, "latency_ms")  # each has a ``{column}_std`` of its own repeats


def measurement_spread(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model (sorted): the mean over runs of each column, and the pooled spread of its measurements.

    With ``{column}_std`` present the spread is ``sqrt(mean_i(std_i^2 + (mean_i - mean)^2))`` over the
    model's runs i (the std of all repeats pooled; equal to ``std_i`` when every run holds the same
    measurement). Without it, the std over runs (ddof=1). NaN cells are left out.
    """
    cols = [c for c in columns if c in frame.columns]
    means, stds = per_model_stats(frame, cols)
    for col in cols:
        if f"{col}_std" not in frame.columns:
            continue
        data = numeric(frame[["model", col, f"{col}_std"]], [col, f"{col}_std"]).dropna(subset=[col])
        data["_sq"] = data[f"{col}_std"] ** 2 + (data[col] - data["model"].map(means[col])) ** 2
        pooled = np.sqrt(data.groupby("model")["_sq"].mean())
        stds[col] = pooled.reindex(stds.index)
    return means, stds


def _grouped_bars(
    ax: object, means: pd.DataFrame, stds: pd.DataFrame, columns: Sequence[str],
    labels: Sequence[str], cmap_name: str = "Set2",
) -> bool:
    """Bars per model (x) grouped by ``columns``, with std error bars; False when all values are NaN."""
    cols = [c for c in columns if c in means.columns and means[c].notna().any()]
    if not cols:
        return False
    x = np.arange(len(means.index))
    width = 0.8 / len(cols)
    cmap = colormaps[cmap_name]
    for i, col in enumerate(cols):
        offset = (i - (len(cols) - 1) / 2) * width
        err = stds[col].fillna(0.0).to_numpy() if col in stds.columns else None
        ax.bar(x + offset, means[col].to_numpy(), width, yerr=err, capsize=2,
               label=labels[list(columns).index(col)], color=cmap(i), error_kw={"linewidth": 0.8})
    ax.set_xticks(x, list(means.index))
    rotate_labels(ax, len(x))
    ax.grid(axis="y", alpha=0.3)
    if len(columns) > 1:  # name the bars even when only one of the requested columns exists
        ax.legend(fontsize="small")
    return True


def _figure_size(n_models: int, n_regions: int) -> tuple[float, float]:
    """Width grows with the model count (capped) so 1..30 models stay readable."""
    width = 2.0 + n_models * (0.22 * max(n_regions, 1) + 0.35)
    height = 9.0 if n_models <= 15 else 10.5
    return float(np.clip(width, 9.0, 40.0)), height


def comparison_figure(frame: pd.DataFrame, regions: list[str] | None = None) -> Figure:
    """The figure of ``model_comparison_chart.png`` from ok result rows (see the module docstring).

    Top: test Dice per region per model, mean +- std over runs. Bottom: PAM train/inference (MB) and
    latency (ms, batch 1) per model, mean +- the measurement's own pooled spread.
    """
    found = detect_regions(frame.columns, regions)
    dice_cols = [f"dice_{r}" for r in found]
    dice_means, dice_stds = per_model_stats(frame, dice_cols)
    means, spread = measurement_spread(frame, MEASURED)
    n_models = len(dice_means.index)
    fig = Figure(figsize=_figure_size(n_models, len(found)), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(1.2, 1.0))
    ax_dice = fig.add_subplot(grid[0, :])
    ax_pam = fig.add_subplot(grid[1, 0])
    ax_lat = fig.add_subplot(grid[1, 1])

    if not _grouped_bars(ax_dice, dice_means, dice_stds, dice_cols, [r.upper() for r in found]):
        no_data(ax_dice, "no Dice columns")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_ylim(0, 1.05)
    ax_dice.set_title("Test Dice per region (mean +- std over seeds/folds)")

    if not _grouped_bars(ax_pam, means, spread, PAM_COLUMNS, ("train", "inference"), "Paired"):
        no_data(ax_pam, "no PAM columns")
    ax_pam.set_ylabel("MB")
    ax_pam.set_title("Peak activation memory\n(mean +- std of the repeated measurement)")

    if not _grouped_bars(ax_lat, means, spread, ("latency_ms",), ("latency",), "Pastel1"):
        no_data(ax_lat, "no latency column")
    ax_lat.set_ylabel("ms")
    ax_lat.set_title("Inference latency, batch 1\n(mean +- std of the timed runs)")
    fig.suptitle(f"Model comparison ({n_models} models)")
    return fig


def draw_model_comparison(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``model_comparison_chart.png`` (:func:`comparison_figure`) from the ok rows of the results CSV.

    Returns the written path, or None when there are no ok rows.
    """
    results_dir = Path(results_dir)
    frame = load_ok_results(results_dir)
    if frame is None:
        return None
    return save_figure(comparison_figure(frame, regions), results_dir / OUTPUT)
