"""Per-case Dice box plots per model and region (seaborn)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

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


def draw_dice_boxplots(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``dice_boxplots.png``: one box per model and region over the test cases of ok runs.

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
    import seaborn as sns  # lazy: seaborn imports pyplot, kept out of `import visualization`

    models = sorted(long["model"].unique())
    width = float(np.clip(2.5 + len(models) * (0.3 * len(found) + 0.3), 7.0, 40.0))
    fig = Figure(figsize=(width, 5.5), layout="constrained")
    ax = fig.subplots()
    sns.boxplot(data=long, x="model", y="dice", hue="region", order=models,
                hue_order=[r.upper() for r in found], ax=ax, fliersize=2, palette="Set2")
    rotate_labels(ax, len(models))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("")
    ax.set_ylabel("per-case Dice")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Per-case test Dice (ok runs, all seeds/folds)")
    return save_figure(fig, results_dir / OUTPUT)
