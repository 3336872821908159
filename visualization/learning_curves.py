"""Learning curves: mean train/val loss and validation Dice per epoch (and validation mAP on the lesion track),
with a +-std band over runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from visualization._common import (
    EPOCHS_CSV,
    dice_mean_column,
    detect_regions,
    keep_ok_runs,
    model_colors,
    no_data,
    numeric,
    read_csv,
    save_figure,
)

logger = logging.getLogger(__name__)

OUTPUT = "learning_curves.png"


def epoch_stats(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and std over runs of ``column`` per (model, epoch); columns: model, epoch, mean, std."""
    stats = frame.groupby(["model", "epoch"], sort=True)[column].agg(["mean", "std"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    return stats.dropna(subset=["mean"])


def _band(ax: object, stats: pd.DataFrame, color: object, label: str, style: str = "-") -> bool:
    """Plot a mean line with a shaded +-std band; False when there is nothing to plot."""
    if stats.empty:
        return False
    ax.plot(stats["epoch"], stats["mean"], style, color=color, label=label, marker=".")
    ax.fill_between(
        stats["epoch"], stats["mean"] - stats["std"], stats["mean"] + stats["std"],
        color=color, alpha=0.15, linewidth=0,
    )
    return True


def epoch_frame(results_dir: Path, regions: list[str] | None) -> tuple[pd.DataFrame, list[str]] | None:
    """ok-run epoch rows with numeric columns and a ``val_dice_mean`` column, and the regions it averages."""
    frame = read_csv(results_dir, EPOCHS_CSV)
    if frame is None:
        return None
    if "epoch" not in frame.columns:
        logger.info("skipping learning curves: no 'epoch' column in %s", EPOCHS_CSV)
        return None
    frame = keep_ok_runs(results_dir, frame)
    if frame.empty:
        logger.info("skipping learning curves: no epoch rows of ok runs")
        return None
    frame = numeric(frame, [c for c in frame.columns if c not in ("model", "status", "error")])
    found = detect_regions(frame.columns, regions, prefix="val_dice_")
    frame["val_dice_mean"] = dice_mean_column(frame, found, prefix="val_dice_")
    return frame.dropna(subset=["epoch"]), found


def dice_title(regions: list[str]) -> str:
    """What the Dice panel plots: the validation Dice averaged over these regions."""
    names = ", ".join(r.upper() for r in regions) if regions else "the regions"
    return f"Validation Dice, mean of {names} (val_dice_mean)"


def draw_learning_curves(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``learning_curves.png``: losses (left) and validation Dice, the mean over the dataset's regions
    (e.g. WT, TC, ET; the title names them), per model (right).

    Each line is the mean over the model's ok runs (seeds x folds) per epoch; the band is +-1 std
    across runs (zero for a single run). Returns the written path, or None when there is no input.
    """
    results_dir = Path(results_dir)
    prepared = epoch_frame(results_dir, regions)
    if prepared is None or prepared[0].empty:
        return None
    fig = learning_figure(*prepared)
    if fig is None:
        logger.info("skipping learning curves: no loss or Dice values")
        return None
    return save_figure(fig, results_dir / OUTPUT)


def learning_figure(frame: pd.DataFrame, found: list[str]) -> Figure | None:
    """Loss and validation-Dice panels of ok-run epoch rows (``val_dice_mean`` = mean over ``found``);
    None when there is nothing to plot."""
    models = sorted(frame["model"].unique())
    colors = model_colors(models)
    lesion = "val_map" in frame.columns and frame["val_map"].notna().any()  # the lesion track: a mAP panel too
    fig = Figure(figsize=(19 if lesion else 13, 5), layout="constrained")
    axes = fig.subplots(1, 3 if lesion else 2)
    ax_loss, ax_dice = axes[0], axes[1]
    drew_loss = drew_dice = False
    for model in models:
        rows = frame[frame["model"] == model]
        labelled = False
        for column, style in (("train_loss", "-"), ("val_loss", "--")):
            if column in rows.columns:
                label = "_nolegend_" if labelled else model
                drew = _band(ax_loss, epoch_stats(rows, column), colors[model], label, style)
                labelled |= drew
                drew_loss |= drew
        drew_dice |= _band(ax_dice, epoch_stats(rows, "val_dice_mean"), colors[model], model)
    if lesion:
        drew_map = any([_band(axes[2], epoch_stats(frame[frame["model"] == m], "val_map"), colors[m], m)
                        for m in models])
        _finish_axis(axes[2], drew_map, "Validation mAP (IoU 0.1:0.5:0.05)", "validation mAP", len(models))
    _finish_axis(ax_loss, drew_loss, "Loss (solid: train, dashed: val)", "loss", len(models))
    _finish_axis(ax_dice, drew_dice, dice_title(found), "validation Dice", len(models))
    if not (drew_loss or drew_dice):
        return None
    fig.suptitle("Learning curves (mean +- std over seeds/folds)")
    return fig


def _finish_axis(ax: object, drew: bool, title: str, ylabel: str, n_models: int) -> None:
    """Title, labels and a legend sized for the number of models."""
    if not drew:
        no_data(ax, "no data")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if drew:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small" if n_models <= 10 else "x-small", ncol=1 + n_models // 12)
