"""Modality contribution: mean attention weight per input modality and network stage, per model."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from visualization._common import MODALITY_CSV, keep_ok_runs, read_csv, rotate_labels, save_figure

logger = logging.getLogger(__name__)

OUTPUT = "modality_contribution.png"
_REQUIRED = ("stage", "modality", "weight")


def modality_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std across cases of the weight per (model, stage, modality).

    A case seen in several runs (seeds/folds) is first averaged over those runs, so each case
    counts once. Columns: model, stage, modality, mean, std (0 for a single case).
    """
    data = frame.copy()
    data["weight"] = pd.to_numeric(data["weight"], errors="coerce")
    data = data.dropna(subset=["weight"])
    case = data["case_id"] if "case_id" in data.columns else pd.Series("all", index=data.index)
    data = data.assign(case_id=case.astype(str), stage=data["stage"].astype(str),
                       modality=data["modality"].astype(str))
    per_case = data.groupby(["model", "stage", "modality", "case_id"], sort=False)["weight"].mean()
    stats = per_case.groupby(["model", "stage", "modality"], sort=False).agg(["mean", "std"])
    stats["std"] = stats["std"].fillna(0.0)
    return stats.reset_index()


def _draw_panel(ax: object, stats: pd.DataFrame, modalities: list[str]) -> None:
    """Grouped bars: stages on x, one bar per modality, error bars across cases."""
    stages = list(dict.fromkeys(stats["stage"]))
    x = np.arange(len(stages))
    width = 0.8 / max(len(modalities), 1)
    cmap = colormaps["Set2"]
    for i, modality in enumerate(modalities):
        rows = stats[stats["modality"] == modality].set_index("stage").reindex(stages)
        offset = (i - (len(modalities) - 1) / 2) * width
        ax.bar(x + offset, rows["mean"].to_numpy(), width, yerr=rows["std"].fillna(0).to_numpy(),
               capsize=2, label=modality, color=cmap(i % cmap.N), error_kw={"linewidth": 0.8})
    ax.set_xticks(x, stages)
    rotate_labels(ax, len(stages))
    ax.set_ylabel("mean weight")
    ax.grid(axis="y", alpha=0.3)


def draw_modality_contribution(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``modality_contribution.png`` from ``modality_attention.csv`` (ok runs only).

    One panel per model; ``regions`` is accepted for a uniform signature and unused.
    Returns the written path, or None when the input is missing or has no ok rows.
    """
    results_dir = Path(results_dir)
    frame = read_csv(results_dir, MODALITY_CSV)
    if frame is None:
        return None
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        logger.info("skipping modality contribution: %s lacks %s", MODALITY_CSV, missing)
        return None
    stats = modality_stats(keep_ok_runs(results_dir, frame))
    if stats.empty:
        logger.info("skipping modality contribution: no weights of ok runs")
        return None
    models = sorted(stats["model"].unique())
    modalities = list(dict.fromkeys(stats["modality"]))
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, model in zip(axes, models):
        _draw_panel(ax, stats[stats["model"] == model], modalities)
        ax.set_title(model)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    axes[0].legend(title="modality", fontsize="small")
    fig.suptitle("Modality contribution per stage (mean +- std across cases)")
    return save_figure(fig, results_dir / OUTPUT)
