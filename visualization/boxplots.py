"""Per-case Dice box plots per model and region, with every case as a point and n per box."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from visualization._common import (
    PER_CASE_CSV,
    detect_regions,
    keep_ok_runs,
    read_csv,
    rotate_labels,
    save_figure,
)

logger = logging.getLogger(__name__)

OUTPUT = "dice_boxplots.png"


def long_dice(frame: pd.DataFrame, regions: list[str]) -> pd.DataFrame:
    """Per-case Dice in long form (model, region, dice), NaN cases dropped."""
    cols = {f"dice_{r}": r.upper() for r in regions}
    data = frame[["model", *cols]].rename(columns=cols)
    long = data.melt(id_vars="model", var_name="region", value_name="dice")
    long["dice"] = pd.to_numeric(long["dice"], errors="coerce")
    return long.dropna(subset=["dice"])


def boxplot_figure(long: pd.DataFrame, regions: list[str]) -> Figure:
    """Boxes per model and region over the per-case Dice in ``long`` (:func:`long_dice`), every case drawn
    as a point over its box (jittered sideways, fixed seed), and ``n=`` (cases x runs) above each box.

    Boxes: median, quartiles, whiskers at 1.5 IQR (matplotlib's defaults); no separate outlier marks,
    since every point is drawn.
    """
    models = sorted(long["model"].unique())
    names = [r.upper() for r in regions]
    colours = colormaps["Set2"]
    width = float(np.clip(2.5 + len(models) * (0.3 * len(regions) + 0.3), 7.0, 40.0))
    fig = Figure(figsize=(width, 5.8), layout="constrained")
    ax = fig.subplots()
    box_width = 0.8 / len(names)
    rng = np.random.default_rng(0)
    groups = long.groupby(["model", "region"])["dice"]
    for j, region in enumerate(names):
        xs, values = [], []
        for i, model in enumerate(models):
            if (model, region) in groups.groups:
                xs.append(i - 0.4 + box_width * (j + 0.5))
                values.append(groups.get_group((model, region)).to_numpy())
        if not xs:
            continue
        boxes = ax.boxplot(values, positions=xs, widths=box_width * 0.85, patch_artist=True, showfliers=False,
                           manage_ticks=False, medianprops={"color": "black"})
        for box in boxes["boxes"]:
            box.set(facecolor=colours(j), alpha=0.8)
        for x, v in zip(xs, values):
            ax.scatter(x + rng.uniform(-0.3, 0.3, len(v)) * box_width, v, s=6, color="0.2", alpha=0.6, zorder=3)
            ax.text(x, 1.03, f"n={len(v)}", ha="center", va="bottom", fontsize="xx-small")
    ax.legend(handles=[Patch(color=colours(j), label=name) for j, name in enumerate(names)], fontsize="small",
              loc="lower left")
    ax.set_xticks(range(len(models)), models)
    rotate_labels(ax, len(models))
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.set_ylim(-0.02, 1.12)
    ax.set_ylabel("per-case test Dice")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Per-case test Dice (ok runs, all seeds/folds; points = cases, n = cases x runs per box; "
                 "cases without a Dice value, both masks empty, left out)", fontsize="medium")
    return fig


def draw_dice_boxplots(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``dice_boxplots.png`` (:func:`boxplot_figure`) over the test cases of ok runs.

    Returns the written path, or None when the input is missing, has no region columns or no
    finite per-case Dice of ok runs.
    """
    results_dir = Path(results_dir)
    frame = read_csv(results_dir, PER_CASE_CSV)
    if frame is None:
        return None
    found = detect_regions(frame.columns, regions)
    if not found:
        logger.info("skipping Dice box plots: no dice region columns in %s", PER_CASE_CSV)
        return None
    long = long_dice(keep_ok_runs(results_dir, frame), found)
    if long.empty:
        logger.info("skipping Dice box plots: no per-case Dice of ok runs")
        return None
    return save_figure(boxplot_figure(long, found), results_dir / OUTPUT)
