"""The interactive plotly charts of ``report.html``, built from the sweep tables only.

Every builder takes frames read from a results directory and returns a ``plotly.graph_objects.Figure``, or
None (logged) when its inputs are missing. Means and intervals come from ``model_comparison.csv``
(``<metric>_mean`` and the 95% bootstrap interval ``<metric>_ci_low``/``_ci_high`` over runs; the std over runs
where the interval is missing), learning curves from ``all_epochs_results.csv`` (mean over ok runs per epoch).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from visualization._common import model_colors, plotly_color
from visualization.learning_curves import epoch_stats
from visualization.lesion_charts import FROC_COLUMNS, FROC_RATES, SUMMARY_COLUMNS, SUMMARY_LABELS
from visualization.ranking_chart import rank_columns
from visualization.significance import heatmap_metrics, p_matrix

logger = logging.getLogger(__name__)

# efficiency axis of the comparison table -> (axis title, Pareto column, scale to the plotted unit)
EFFICIENCY_AXES = {
    "params": ("parameters (M)", "pareto_params", 1e-6),
    "flops_torch": ("forward GFLOPs (batch 1)", "pareto_flops", 1e-9),
    "pam_train_mb": ("PAM train (MB)", "pareto_pam", 1.0),
    "latency_ms": ("latency (ms, batch 1)", "pareto_latency", 1.0),
}


def _layout(fig: go.Figure, title: str, **extra: Any) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "y": -0.2}, **extra)
    return fig


def _colors(models: list[str]) -> dict[str, str]:
    """One CSS colour per model, assigned in sorted order as in the PNG charts and the 3D view."""
    return {m: plotly_color(c) for m, c in model_colors(sorted(models)).items()}


def _values(table: pd.DataFrame, column: str) -> np.ndarray:
    if column not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[column], errors="coerce").to_numpy(float)


def interval(table: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Mean, lower and upper error lengths of ``metric`` per comparison row, and what the bars are: the 95%
    bootstrap interval where ``<metric>_ci_low``/``_ci_high`` exist, else +-1 std over runs (0 when missing)."""
    mean = _values(table, f"{metric}_mean")
    low, high = _values(table, f"{metric}_ci_low"), _values(table, f"{metric}_ci_high")
    if np.isfinite(low).any():
        return mean, np.nan_to_num(mean - low), np.nan_to_num(high - mean), "95% bootstrap CI over runs"
    std = np.nan_to_num(_values(table, f"{metric}_std"))
    return mean, std, std, "+-1 std over runs"


def learning_curves_chart(epochs: pd.DataFrame, regions: list[str]) -> go.Figure | None:
    """Train/val loss, validation Dice (mean over ``regions``) and, on the lesion track, validation mAP per epoch:
    one line per model (mean over its ok runs), the band +-1 std over runs."""
    panels = [("train_loss", "train loss"), ("val_loss", "val loss"), ("val_dice_mean", "val Dice")]
    if "val_map" in epochs.columns and epochs["val_map"].notna().any():
        panels.append(("val_map", "val mAP"))
    panels = [(c, t) for c, t in panels if c in epochs.columns and epochs[c].notna().any()]
    if not panels:
        return None
    models = sorted(epochs["model"].unique())
    colors = _colors(models)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels])
    for col, (column, _) in enumerate(panels, start=1):
        for model in models:
            stats = epoch_stats(epochs[epochs["model"] == model], column)
            fig.add_trace(go.Scatter(
                x=stats["epoch"], y=stats["mean"], mode="lines+markers", name=model, legendgroup=model,
                showlegend=col == 1, line={"color": colors[model]},
                error_y={"type": "data", "array": stats["std"], "visible": True, "thickness": 1}),
                row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    names = ", ".join(r.upper() for r in regions) or "the regions"
    return _layout(fig, f"Learning curves (mean +-1 std over seeds/folds; val Dice = mean of {names})")


def region_dice_chart(comparison: pd.DataFrame, regions: list[str]) -> go.Figure | None:
    """Test Dice per region (and their mean) per model, with the interval of :func:`interval` as error bars."""
    metrics = [f"dice_{r}" for r in regions if f"dice_{r}_mean" in comparison.columns]
    if "dice_mean_mean" in comparison.columns:
        metrics.append("dice_mean")
    if not metrics:
        return None
    fig, what = go.Figure(), ""
    for metric in metrics:
        mean, minus, plus, what = interval(comparison, metric)
        fig.add_trace(go.Bar(x=comparison["model"], y=mean, name=metric.removeprefix("dice_").upper(),
                             error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": True}))
    fig.update_yaxes(title_text="test Dice", range=[0, 1.05])
    return _layout(fig, f"Test Dice per region (bars: mean over runs; whiskers: {what})", barmode="group")


def efficiency_chart(comparison: pd.DataFrame) -> go.Figure | None:
    """Mean test Dice against each efficiency axis (:data:`EFFICIENCY_AXES`) with the accuracy-efficiency
    Pareto front of that axis (the ``pareto_*`` column of the comparison) joined by a dashed line."""
    if "dice_mean_mean" not in comparison.columns:
        return None
    axes = [a for a in EFFICIENCY_AXES if np.isfinite(_values(comparison, a)).any()]
    if not axes:
        return None
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True,
                        subplot_titles=[EFFICIENCY_AXES[a][0] for a in axes])
    colors = _colors(list(comparison["model"]))
    dice = _values(comparison, "dice_mean_mean")
    for col, axis in enumerate(axes, start=1):
        title, front_column, scale = EFFICIENCY_AXES[axis]
        cost = _values(comparison, axis) * scale
        for i, model in enumerate(comparison["model"]):
            fig.add_trace(go.Scatter(x=[cost[i]], y=[dice[i]], mode="markers", name=model, legendgroup=model,
                                     showlegend=col == 1, marker={"size": 11, "color": colors[model]},
                                     hovertemplate=f"{model}<br>{title}: %{{x:.4g}}<br>Dice: %{{y:.4f}}"),
                          row=1, col=col)
        if front_column in comparison.columns:
            front = (comparison[front_column].astype(str).str.lower() == "true").to_numpy()
            order = np.argsort(cost[front])
            fig.add_trace(go.Scatter(x=cost[front][order], y=dice[front][order], mode="lines+markers", name="Pareto front",
                                     legendgroup="front", showlegend=col == len(axes), hoverinfo="skip",
                                     line={"dash": "dash", "color": "black"},
                                     marker={"symbol": "circle-open", "size": 20, "color": "black"}), row=1, col=col)
        fig.update_xaxes(title_text=title, row=1, col=col)
    fig.update_yaxes(title_text="test Dice (mean of regions)", row=1, col=1)
    return _layout(fig, "Accuracy against cost (model means; dashed: Pareto front on that axis)")


def lesion_chart(comparison: pd.DataFrame) -> go.Figure | None:
    """AP at IoU 0.1/0.3/0.5, mAP, mAR and FROC CPM per model with the interval of :func:`interval`."""
    metrics = [m for m in SUMMARY_COLUMNS if np.isfinite(_values(comparison, f"{m}_mean")).any()]
    if not metrics:
        return None
    fig, what = go.Figure(), ""
    for metric in metrics:
        mean, minus, plus, what = interval(comparison, metric)
        fig.add_trace(go.Bar(x=comparison["model"], y=mean, name=SUMMARY_LABELS[SUMMARY_COLUMNS.index(metric)],
                             error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": True}))
    fig.update_yaxes(title_text="value", range=[0, 1.05])
    return _layout(fig, f"Lesion detection (bars: mean over runs; whiskers: {what})", barmode="group")


def froc_chart(comparison: pd.DataFrame) -> go.Figure | None:
    """FROC curves: mean sensitivity at 1/8 ... 8 false positives per scan (LUNA16 operating points), log2 x."""
    present = [(r, c) for r, c in zip(FROC_RATES, FROC_COLUMNS) if np.isfinite(_values(comparison, f"{c}_mean")).any()]
    if not present:
        return None
    colors = _colors(list(comparison["model"]))
    fig = go.Figure()
    for i, model in enumerate(comparison["model"]):
        values = [_values(comparison, f"{c}_mean")[i] for _, c in present]
        fig.add_trace(go.Scatter(x=[r for r, _ in present], y=values, mode="lines+markers", name=model,
                                 line={"color": colors[model]}))
    fig.update_xaxes(title_text="false positives per scan", type="log", tickvals=list(FROC_RATES),
                     ticktext=[f"{r:g}" for r in FROC_RATES])
    fig.update_yaxes(title_text="sensitivity", range=[0, 1.05])
    return _layout(fig, "FROC (mean over runs)")


def ranking_chart(ranking: pd.DataFrame) -> go.Figure | None:
    """Share of bootstrap resamples of the cases in which each model reached final rank 1, 2, ... (stacked)."""
    columns = rank_columns(ranking)
    if not columns or "final_rank" not in ranking.columns:
        return None
    table = ranking.sort_values("final_rank", ascending=False)
    fig = go.Figure()
    for column in columns:
        fig.add_trace(go.Bar(y=table["model"], x=_values(table, column), orientation="h",
                             name=f"rank {column.removeprefix('p_rank_')}"))
    fig.update_xaxes(title_text="share of bootstrap resamples", range=[0, 1])
    return _layout(fig, "Rank stability (rank then aggregate; bootstrap over cases)", barmode="stack")


def significance_chart(tests: pd.DataFrame, regions: list[str]) -> go.Figure | None:
    """Holm-adjusted pairwise Wilcoxon p-values as heat maps, one per metric of :func:`heatmap_metrics`; a pair
    with too few non-zero case differences for p < 0.05 to be possible says so in its cell."""
    if tests.empty or "comparison" not in tests.columns:
        return None
    metrics = heatmap_metrics(tests, regions or None)
    pairwise = tests[tests["comparison"] == "pairwise"]
    models = sorted(set(pairwise["model_a"].astype(str)) | set(pairwise["model_b"].astype(str)))
    if not metrics or len(models) < 2:
        return None
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, horizontal_spacing=0.08)
    for col, metric in enumerate(metrics, start=1):
        p, enough, n = p_matrix(tests, metric, models)
        text = [["" if np.isnan(p[i, j]) else f"{p[i, j]:.2g}" if enough[i, j] else f"{p[i, j]:.2g}<br>too few (n={n[i, j]})"
                 for j in range(len(models))] for i in range(len(models))]
        fig.add_trace(go.Heatmap(z=p, x=models, y=models, text=text, texttemplate="%{text}", hoverinfo="text",
                                 zmin=0, zmax=1, colorscale="Viridis", reversescale=True,
                                 showscale=col == len(metrics), colorbar={"title": "p (Holm)"}), row=1, col=col)
    fig.update_yaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=True, row=1, col=1)
    return _layout(fig, "Pairwise Wilcoxon signed-rank tests (Holm-adjusted p per metric)")


def clicks_chart(runs: pd.DataFrame) -> go.Figure | None:
    """Promptable models' mean Dice after each click count (``dice_<region>_click<k>``), their own prompt-free Dice
    (dashed) and the automatic models' Dice (dotted) as reference lines, one panel per region (BraTS: WT, TC, ET);
    None without per-click columns."""
    from visualization.click_charts import click_columns  # the column parsing of dice_vs_clicks.png

    found = click_columns(list(runs.columns))
    if not found:
        return None
    means = runs.groupby("model").mean(numeric_only=True)
    colors = _colors(list(means.index))
    fig = make_subplots(rows=1, cols=len(found), subplot_titles=list(found), shared_yaxes=True)
    for col, (region, columns) in enumerate(found.items(), start=1):
        for trace in _click_traces(means, region, columns, colors, first=col == 1):
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title_text="clicks", tickvals=sorted(columns), row=1, col=col)
    fig.update_yaxes(title_text="Dice", range=[0, 1.05], row=1, col=1)
    return _layout(fig, "Dice against the number of clicks, per region (interactive; not ranked)")


def _click_traces(means: pd.DataFrame, region: str, columns: dict[int, str], colors: dict[str, str],
                  first: bool) -> list[go.Scatter]:
    """One region's traces of :func:`clicks_chart` (legend entries on the first panel only, grouped by model)."""
    counts, base = sorted(columns), f"dice_{region}"
    traces = []
    for model, row in means.iterrows():
        prompt_free = float(row.get(base, np.nan))
        common = dict(legendgroup=str(model), showlegend=first)
        if np.isfinite(row.get(columns[counts[0]], np.nan)):
            traces.append(go.Scatter(x=counts, y=[row[columns[k]] for k in counts], mode="lines+markers",
                                     name=f"{model} (clicks)", line={"color": colors[model]}, **common))
            dash = "dash"
        else:
            dash = "dot"
        if np.isfinite(prompt_free):
            traces.append(go.Scatter(x=[counts[0], counts[-1]], y=[prompt_free, prompt_free], mode="lines",
                                     name=f"{model} ({'prompt-free' if dash == 'dash' else 'automatic'})",
                                     line={"color": colors[model], "dash": dash}, **common))
    return traces
