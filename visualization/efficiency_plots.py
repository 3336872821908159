"""Parameter efficiency: test Dice (mean over the regions) against parameters, FLOPs, training activation memory and
latency, with the accuracy-efficiency Pareto front of ``model_comparison.csv`` (``pareto_params``, ``pareto_flops``,
``pareto_pam``, ``pareto_latency``) drawn on every panel."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from visualization._common import (
    COMPARISON_CSV,
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
# panel column -> the Pareto column of model_comparison.csv for that cost axis
FRONT_COLUMNS = {"params_m": "pareto_params", "gflops": "pareto_flops", "pam_train_mb": "pareto_pam",
                 "latency_ms": "pareto_latency"}


def efficiency_table(frame: pd.DataFrame, regions: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-model mean/std of dice_mean, params_m, gflops, pam_train_mb and latency_ms from ok result rows.

    GFLOPs come from ``flops_torch``, falling back to ``flops_thop`` where that is missing.
    """
    data = frame.copy()
    data["dice_mean"] = dice_mean_column(data, regions)
    data["params_m"] = _column(data, "params") / 1e6
    data["gflops"] = _column(data, "flops_torch").fillna(_column(data, "flops_thop")) / 1e9
    data["pam_train_mb"] = _column(data, "pam_train_mb")
    data["latency_ms"] = _column(data, "latency_ms")
    return per_model_stats(data, ["dice_mean", "params_m", "gflops", "pam_train_mb", "latency_ms"])


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """``frame[name]`` as floats, or all NaN when the column is missing."""
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce")


def use_log_axis(values: np.ndarray) -> bool:
    """Log x only when every value is positive and the values span at least a decade (max/min >= 10)."""
    values = np.asarray(values, dtype=float)
    return bool(values.size and (values > 0).all() and values.max() / values.min() >= 10.0)


def dodged_positions(values: np.ndarray, log: bool, spread: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """Plotted x of each point and its place in its group of equal x (-1 left of the middle, 0 alone, +1 right).

    Points with equal x (relative tolerance 1e-9, e.g. two models of the same size) are spread apart
    sideways by ``spread`` of the axis span each (of the decades on a log axis), centred on the true x.
    """
    x = np.asarray(values, dtype=float)
    scaled = np.log10(x) if log else x.copy()
    span = float(np.ptp(scaled)) or max(float(np.abs(scaled).max()) * 0.1, 1.0)
    out, side = scaled.copy(), np.zeros(len(x))
    done = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):
        if done[i]:
            continue
        group = np.flatnonzero(np.isclose(x, x[i], rtol=1e-9, atol=0.0) & ~done)
        done[group] = True
        if len(group) > 1:
            steps = np.arange(len(group)) - (len(group) - 1) / 2
            out[group] = scaled[group] + steps * spread * span
            side[group] = np.sign(steps)
    return (10 ** out if log else out), side


def _label(ax: object, model: str, x: float, y: float, side: float, right_half: bool) -> None:
    """Model name beside its point, on the side facing the inside of the frame (or away from its twin)."""
    left = side < 0 or (side == 0 and right_half)
    ax.annotate(model, (x, y), textcoords="offset points", xytext=(-5 if left else 5, 4),
                ha="right" if left else "left", va="bottom", fontsize="x-small")


def _draw_front(ax: object, points: list[tuple[float, float]]) -> None:
    """The Pareto front: a dashed line through its points (in x order) and a black ring around each."""
    if not points:
        return
    xs, ys = zip(*sorted(points))
    ax.plot(xs, ys, linestyle="--", color="black", linewidth=1.0, alpha=0.7, zorder=1, label="Pareto front")
    ax.plot(xs, ys, linestyle="none", marker="o", markersize=11, markerfacecolor="none", markeredgecolor="black",
            markeredgewidth=1.5, zorder=3)
    ax.legend(loc="lower right", fontsize="x-small")


def _scatter(ax: object, means: pd.DataFrame, stds: pd.DataFrame, x_col: str, colors: dict,
             front: set[str] | None = None) -> tuple[bool, bool]:
    """Mean Dice against ``x_col``, y error bars, one labelled point per model; the models of ``front`` (the
    Pareto front of this axis) ringed and joined by a dashed line.

    Returns (any point drawn, any points spread apart because their x was equal).
    """
    points = means[[x_col, "dice_mean"]].replace([np.inf, -np.inf], np.nan).dropna()
    if points.empty:
        return False, False
    log = use_log_axis(points[x_col].to_numpy())
    xs, sides = dodged_positions(points[x_col].to_numpy(), log)
    lo, hi = float(np.min(xs)), float(np.max(xs))
    middle = np.sqrt(lo * hi) if log else (lo + hi) / 2
    on_front = []
    for (model, row), x, side in zip(points.iterrows(), xs, sides):
        err = stds.at[model, "dice_mean"]
        ax.errorbar(x, row["dice_mean"], yerr=0.0 if pd.isna(err) else err,
                    fmt="o", color=colors[model], capsize=3, markersize=6)
        _label(ax, model, x, row["dice_mean"], side, x > middle)
        if front and model in front:
            on_front.append((float(x), float(row["dice_mean"])))
    _draw_front(ax, on_front)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.margins(x=0.25, y=0.15)  # room for the labels inside the frame
    ax.grid(alpha=0.3, which="both")
    return True, bool(np.any(sides))


def _region_text(regions: list[str]) -> str:
    return ", ".join(r.upper() for r in regions) if regions else "the regions"


def efficiency_figure(frame: pd.DataFrame, regions: list[str] | None = None,
                      fronts: dict[str, set[str]] | None = None) -> Figure | None:
    """The figure of ``parameter_efficiency.png``: test Dice (the mean over the dataset's regions, per run;
    points = mean over ok runs, error bars = std over runs) against parameters (millions), forward GFLOPs,
    training PAM (MB) and batch-1 latency (ms). Log x only when a panel's values span a decade; points of equal
    x are spread apart sideways (the caption says so). ``fronts``: panel column (``params_m``, ``gflops``,
    ``pam_train_mb``, ``latency_ms``) -> the models on that axis's Pareto front (:func:`pareto_models`), ringed and joined by a
    dashed line. None when no model has a Dice value.
    """
    found = detect_regions(frame.columns, regions)
    means, stds = efficiency_table(frame, found)
    if means["dice_mean"].isna().all():
        return None
    colors = model_colors(list(means.index))
    fig = Figure(figsize=(14, 10.5), layout="constrained")
    panels = (("params_m", "parameters (M)"), ("gflops", "forward GFLOPs (batch 1)"),
              ("pam_train_mb", "PAM train (MB)"), ("latency_ms", "latency (ms, batch 1)"))
    dodged = False
    for ax, (column, label) in zip(fig.subplots(2, 2).ravel(), panels):
        drew, spread = _scatter(ax, means, stds, column, colors, (fronts or {}).get(column))
        dodged |= spread
        if not drew:
            no_data(ax, f"no {column} values")
        ax.set_xlabel(f"{label}, log scale" if ax.get_xscale() == "log" else label)
        ax.set_ylabel(f"test Dice, mean of {_region_text(found)}")
    fig.suptitle("Parameter efficiency: test Dice per run averaged over "
                 f"{_region_text(found)}; point = mean over ok runs (seeds/folds), bar = std over runs\n"
                 "Pareto front (ringed, dashed): no other model is at least as accurate and cheaper on that axis")
    if dodged:
        fig.supxlabel("models of equal x are drawn side by side around their true value", fontsize="small")
    return fig


def pareto_models(results_dir: Path) -> dict[str, set[str]]:
    """Panel column -> models whose Pareto column (:data:`FRONT_COLUMNS`) is true in ``model_comparison.csv``;
    empty when the file or the columns are missing (a comparison written before the statistics)."""
    path = Path(results_dir) / COMPARISON_CSV
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as exc:
        logger.warning("no Pareto front drawn: cannot read %s (%s)", path, exc)
        return {}
    fronts = {}
    for panel, column in FRONT_COLUMNS.items():
        if column in table and "model" in table:
            flags = table[column].astype(str).str.strip().str.lower() == "true"
            fronts[panel] = set(table.loc[flags, "model"].astype(str))
    return fronts


def draw_parameter_efficiency(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``parameter_efficiency.png`` (:func:`efficiency_figure`) from the ok rows of the results CSV and the
    Pareto columns of ``model_comparison.csv``.

    Returns the written path, or None when there are no ok rows or no Dice values.
    """
    results_dir = Path(results_dir)
    frame = load_ok_results(results_dir)
    if frame is None:
        return None
    fig = efficiency_figure(frame, regions, pareto_models(results_dir))
    if fig is None:
        logger.info("skipping parameter efficiency: no Dice values in ok rows")
        return None
    return save_figure(fig, results_dir / OUTPUT)
