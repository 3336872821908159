"""Interactive 3D analysis: params x latency x mean Dice per model, as a self-contained plotly HTML."""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from utils.atomic import atomic_write_text
from visualization._common import (
    detect_regions,
    dice_mean_column,
    load_ok_results,
    model_colors,
    per_model_stats,
    plotly_color,
)

logger = logging.getLogger(__name__)

OUTPUT = "interactive_3d_analysis.html"
DIV_ID = "interactive-3d"  # fixed: plotly's default is a random uuid, and the same tables give the same page
_HOVER_EXTRA = ("pam_train_mb", "pam_infer_mb", "flops_torch", "train_time_s", "epochs")


def _hover_text(model: str, row: pd.Series, n_runs: int) -> str:
    """Hover lines: the model name, its run count and every finite mean metric."""
    lines = [f"<b>{html.escape(model)}</b>", f"ok runs: {n_runs}"]
    for name, value in row.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            lines.append(f"{html.escape(str(name))}: {value:.4g}")
    return "<br>".join(lines)


def _model_table(frame: pd.DataFrame, regions: list[str]) -> pd.DataFrame:
    """Per-model means of params (M), latency, dice_mean and the metrics shown on hover."""
    data = frame.copy()
    data["dice_mean"] = dice_mean_column(data, regions)
    data["params_m"] = pd.to_numeric(data.get("params", np.nan), errors="coerce") / 1e6
    metric_cols = [c for c in data.columns if c.startswith(("dice_", "hd95_"))]
    columns = ["params_m", "latency_ms", "dice_mean", *metric_cols, *_HOVER_EXTRA]
    means, _ = per_model_stats(data, list(dict.fromkeys(columns)))
    means["n_runs"] = data.groupby("model").size()
    return means


def interactive_3d_figure(frame: pd.DataFrame, regions: list[str] | None = None) -> "go.Figure | None":
    """The plotly figure of ``interactive_3d_analysis.html`` from ok result rows: x = params (M),
    y = latency (ms), z = mean Dice, one point per model (means over its ok runs) with its mean metrics on
    hover. None when no model has all three coordinates."""
    regions = detect_regions(frame.columns, regions)
    table = _model_table(frame, regions)
    axes = ["params_m", "latency_ms", "dice_mean"]
    if any(col not in table.columns for col in axes):
        logger.info("skipping interactive 3D: missing one of params, latency_ms, dice")
        return None
    complete = table.dropna(subset=axes)
    dropped = sorted(set(table.index) - set(complete.index))
    if dropped:
        logger.info("interactive 3D: no params/latency/Dice for %s", dropped)
    if complete.empty:
        logger.info("skipping interactive 3D: no model has params, latency and Dice")
        return None
    import plotly.graph_objects as go  # lazy: only needed for the interactive charts

    colors = model_colors(list(complete.index))
    fig = go.Figure()
    for model, row in complete.iterrows():
        fig.add_trace(go.Scatter3d(
            x=[row["params_m"]], y=[row["latency_ms"]], z=[row["dice_mean"]],
            mode="markers+text", text=[model], name=model, marker={"size": 7, "color": plotly_color(colors[model])},
            hovertext=[_hover_text(model, row.drop("n_runs"), int(row["n_runs"]))],
            hoverinfo="text",
        ))
    fig.update_layout(
        title="Params vs latency vs mean Dice (means over ok runs)",
        scene={"xaxis_title": "params (M)", "yaxis_title": "latency (ms)",
               "zaxis_title": f"test Dice, mean of {', '.join(r.upper() for r in regions) or 'regions'}"},
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
    )
    return fig


def draw_interactive_3d(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Write ``interactive_3d_analysis.html`` (:func:`interactive_3d_figure`), with the plotly library embedded
    (the machines are offline). Returns the path, or None when there are no ok rows or no model has params,
    latency and Dice."""
    results_dir = Path(results_dir)
    frame = load_ok_results(results_dir)
    if frame is None:
        return None
    fig = interactive_3d_figure(frame, regions)
    if fig is None:
        return None
    path = results_dir / OUTPUT
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True, div_id=DIV_ID))
    logger.info("wrote %s", path)
    return path
