"""Pairwise significance heat map (``significance_heatmap.png``) drawn from ``statistical_tests.csv`` only.

One panel per metric (the regions' Dice, then their HD95; at most :data:`MAX_PANELS`): a cell per pair of
models holds the Holm-adjusted p-value of the pairwise Wilcoxon signed-rank test (``p_holm``, corrected over the
pairwise comparisons of that metric), coloured by -log10 p; a star marks p < 0.05. Pairs with too few non-zero
case differences for p < 0.05 to be possible (``enough`` false) are grey and say so instead of a p-value.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from utils.schema import STATISTICAL_TESTS_CSV
from visualization._common import detect_regions, rotate_labels, save_figure

logger = logging.getLogger(__name__)

OUTPUT = "significance_heatmap.png"
MAX_PANELS = 6
MAX_LOG_P = 3.0  # colour scale of -log10 p: 0 (p = 1) .. 3 (p <= 0.001)


def heatmap_metrics(tests: pd.DataFrame, regions: list[str] | None = None) -> list[str]:
    """Metrics of the pairwise rows to draw: ``dice_<region>`` then ``hd95_<region>`` for the detected regions
    (``detect_regions``), else the metrics in table order; at most :data:`MAX_PANELS`."""
    pairwise = tests[tests["comparison"] == "pairwise"]
    metrics = list(dict.fromkeys(pairwise["metric"].astype(str)))
    found = detect_regions(metrics, regions)
    chosen = [m for prefix in ("dice_", "hd95_") for r in found if (m := f"{prefix}{r}") in metrics]
    return (chosen or metrics)[:MAX_PANELS]


def p_matrix(tests: pd.DataFrame, metric: str, models: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Models x models arrays of the pairwise rows of ``metric``: Holm p-values, ``enough`` and ``n`` (symmetric;
    NaN / False / 0 on the diagonal and for pairs without a row)."""
    size = len(models)
    p, enough, n = np.full((size, size), np.nan), np.zeros((size, size), bool), np.zeros((size, size), int)
    index = {m: i for i, m in enumerate(models)}
    rows = tests[(tests["comparison"] == "pairwise") & (tests["metric"] == metric)]
    for _, row in rows.iterrows():
        i, j = index[str(row["model_a"])], index[str(row["model_b"])]
        ok = str(row["enough"]).strip().lower() == "true"
        for a, b in ((i, j), (j, i)):
            p[a, b], enough[a, b], n[a, b] = float(row["p_holm"]), ok, int(row["n"])
    return p, enough, n


def _cell_text(p: float, enough: bool, n: int) -> str:
    if np.isnan(p):
        return "n/a"
    if not enough:
        return f"n={n}\ntoo few"
    return f"{p:.2g}{'*' if p < 0.05 else ''}"


def _panel(ax: object, tests: pd.DataFrame, metric: str, models: list[str]) -> object:
    """One metric's heat map; returns the image (for the colour bar)."""
    p, enough, n = p_matrix(tests, metric, models)
    shown = np.where(enough, np.clip(-np.log10(np.maximum(p, 1e-300)), 0.0, MAX_LOG_P), np.nan)
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=0.0, vmax=MAX_LOG_P)
    for i in range(len(models)):
        for j in range(len(models)):
            text = "\u2013" if i == j else _cell_text(p[i, j], enough[i, j], n[i, j])
            dark = enough[i, j] and shown[i, j] < MAX_LOG_P * 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize="x-small", color="white" if dark else "black")
    ax.set_xticks(range(len(models)), models)
    ax.set_yticks(range(len(models)), models)
    rotate_labels(ax, len(models))
    better = "higher" if str(_direction(tests, metric)).lower() == "true" else "lower"
    ax.set_title(f"{metric} ({better} is better)")
    return image


def _direction(tests: pd.DataFrame, metric: str) -> object:
    rows = tests[tests["metric"] == metric]
    return rows["higher_is_better"].iloc[0] if "higher_is_better" in rows and len(rows) else True


def significance_figure(tests: pd.DataFrame, regions: list[str] | None = None) -> Figure | None:
    """The figure of ``significance_heatmap.png`` (see the module docstring); None without pairwise rows."""
    if tests.empty or "comparison" not in tests or not (tests["comparison"] == "pairwise").any():
        return None
    metrics = heatmap_metrics(tests, regions)
    pairwise = tests[tests["comparison"] == "pairwise"]
    pairs = zip(pairwise["model_a"].astype(str), pairwise["model_b"].astype(str))
    models = list(dict.fromkeys(m for pair in pairs for m in pair))  # the tests' model order (pairs in that order)
    cols = min(3, len(metrics))
    rows = int(np.ceil(len(metrics) / cols))
    side = 1.2 + 0.55 * len(models)
    fig = Figure(figsize=(cols * side + 1.5, rows * side + 1.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    image = None
    for ax, metric in zip(axes, metrics):
        image = _panel(ax, tests, metric, models)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(metrics)]), label="-log10 Holm p (pairwise Wilcoxon)", shrink=0.8)
    baseline = str(tests["baseline"].iloc[0]) if "baseline" in tests and len(tests) else "?"
    fig.suptitle("Pairwise Wilcoxon signed-rank tests on the per-case test results (case = mean over a model's runs); "
                 "Holm-adjusted per metric, * p < 0.05;\ngrey: too few non-zero case differences for p < 0.05 "
                 f"(no evidence either way); baseline of the baseline tests: {baseline}", fontsize="small")
    return fig


def draw_significance_heatmap(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``significance_heatmap.png`` from ``statistical_tests.csv``; None (logged) without that file or without
    pairwise rows."""
    results_dir = Path(results_dir)
    if not (results_dir / STATISTICAL_TESTS_CSV).is_file():
        logger.info("skipping significance heat map: %s not found", results_dir / STATISTICAL_TESTS_CSV)
        return None
    try:
        tests = pd.read_csv(results_dir / STATISTICAL_TESTS_CSV)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as exc:
        logger.warning("skipping significance heat map: cannot read %s (%s)", results_dir / STATISTICAL_TESTS_CSV, exc)
        return None
    fig = significance_figure(tests, regions)
    if fig is None:
        logger.info("skipping significance heat map: no pairwise tests (fewer than two models with per-case results)")
        return None
    return save_figure(fig, results_dir / OUTPUT)
