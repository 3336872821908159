"""``dice_vs_clicks.png``: each promptable model's Dice against the number of simulated clicks, from the results CSV.

One panel per target region (the binary lesion; on BraTS WT, TC and ET, side by side in the columns' order), each with
one line per promptable model (the mean over its ok runs of ``dice_<region>_click<k>`` at each k, with the click
rule in the legend), its own prompt-free Dice (``dice_<region>``) as a dashed horizontal line of the same colour,
and every automatic model's Dice as a dotted grey line labelled at the right edge. Drawn only when some run has
per-click columns. Per-click values are interactive results: they are drawn apart, never mixed into the tables
that rank models.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visualization._common import load_ok_results, model_colors, save_figure

logger = logging.getLogger(__name__)

OUTPUT = "dice_vs_clicks.png"
_CLICK_COLUMN = re.compile(r"^dice_(?P<region>\w+?)_click(?P<k>\d+)$")


def click_columns(columns: list[str]) -> dict[str, dict[int, str]]:
    """Region -> {click count: column} of the per-click Dice columns."""
    out: dict[str, dict[int, str]] = {}
    for column in columns:
        match = _CLICK_COLUMN.match(str(column))
        if match:
            out.setdefault(match["region"], {})[int(match["k"])] = str(column)
    return out


def _mean(frame: pd.DataFrame, model: str, column: str) -> float:
    values = pd.to_numeric(frame.loc[frame["model"] == model, column], errors="coerce")
    return float(values.mean()) if values.notna().any() else float("nan")


def _draw_region(ax: Any, frame: pd.DataFrame, region: str, columns: dict[int, str],
                 colours: dict[str, Any]) -> None:
    """One region's panel (see the module docstring) on ``ax``."""
    counts = sorted(columns)
    promptable = [m for m in frame["model"].unique()
                  if pd.to_numeric(frame.loc[frame["model"] == m, columns[counts[0]]], errors="coerce").notna().any()]
    automatic = [m for m in frame["model"].unique() if m not in promptable]
    base = f"dice_{region}"
    for model in promptable:
        mode = frame.loc[frame["model"] == model, "click_mode"].iloc[0] if "click_mode" in frame else "?"
        ax.plot(counts, [_mean(frame, model, columns[k]) for k in counts], marker="o", color=colours[model],
                label=f"{model} ({mode} clicks)")
        if base in frame.columns and not np.isnan(_mean(frame, model, base)):
            ax.axhline(_mean(frame, model, base), color=colours[model], linestyle="--", linewidth=1,
                       label=f"{model} prompt-free")
    for model in automatic:
        if base in frame.columns and not np.isnan(_mean(frame, model, base)):
            value = _mean(frame, model, base)
            ax.axhline(value, color="0.5", linestyle=":", linewidth=1)
            ax.annotate(str(model), (counts[-1], value), fontsize="small", color="0.35", ha="right", va="bottom")
    ax.set_xticks(counts)
    ax.set_xlabel("clicks")
    ax.set_ylabel(f"Dice {region} (mean over runs)")
    ax.set_ylim(0, 1.05)
    ax.set_title(region)


def clicks_figure(frame: pd.DataFrame, found: dict[str, dict[int, str]]) -> Figure:
    """The figure of ``dice_vs_clicks.png``: one panel per region of ``found`` (region -> {k: column})."""
    colours = model_colors(list(frame["model"].unique()))
    fig = Figure(figsize=(5.5 * len(found) + 1, 5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(found), sharey=True, squeeze=False)[0])
    for ax, (region, columns) in zip(axes, found.items()):
        _draw_region(ax, frame, region, columns, colours)
    axes[0].legend(fontsize="small")
    fig.suptitle("Interactive Dice per click count, one panel per region; dotted: automatic models")
    return fig


def draw_dice_vs_clicks(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``dice_vs_clicks.png`` when ok runs have per-click Dice columns, one panel per region (``regions``: the
    dataset's regions in the order wanted, those with per-click columns drawn; None: every region found); None
    otherwise."""
    results_dir = Path(results_dir)
    frame = load_ok_results(results_dir)
    if frame is None:
        return None
    found = click_columns(list(frame.columns))
    if regions:
        found = {r: found[r] for r in regions if r in found} or found
    if not found:
        logger.info("skipping %s: no promptable model with per-click columns", OUTPUT)
        return None
    return save_figure(clicks_figure(frame, found), results_dir / OUTPUT)
