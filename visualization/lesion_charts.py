"""``lesion_metrics_chart.png``: lesion-level detection metrics per model, from the results CSV only.

Left: AP at IoU 0.1 / 0.3 / 0.5, mAP (IoU 0.1:0.5:0.05), mAR and the FROC CPM, mean +- std over runs.
Right: the FROC operating points (sensitivity at 1/8 ... 8 false positives per scan, log2 axis), one line
per model (mean over runs). Drawn only when the runs carry the lesion columns (the lesion track).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visualization._common import load_ok_results, model_colors, no_data, per_model_stats, save_figure
from visualization.comparison import _grouped_bars

logger = logging.getLogger(__name__)

OUTPUT = "lesion_metrics_chart.png"
SUMMARY_COLUMNS = ("ap_10", "ap_30", "ap_50", "map", "mar", "froc_cpm")
SUMMARY_LABELS = ("AP@0.1", "AP@0.3", "AP@0.5", "mAP", "mAR", "FROC CPM")
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
FROC_COLUMNS = tuple(f"froc_fp{r:g}" for r in FROC_RATES)


def lesion_figure(frame: pd.DataFrame) -> Figure:
    """The figure of ``lesion_metrics_chart.png`` from ok result rows (see the module docstring)."""
    summary = [c for c in SUMMARY_COLUMNS if c in frame.columns]
    means, stds = per_model_stats(frame, summary)
    froc = [c for c in FROC_COLUMNS if c in frame.columns]
    froc_means, _ = per_model_stats(frame, froc)
    n_models = len(means.index)
    fig = Figure(figsize=(float(np.clip(6 + n_models * 1.1, 11, 36)), 5.5), layout="constrained")
    ax_bars, ax_froc = fig.subplots(1, 2, width_ratios=(1.6, 1.0))
    labels = [SUMMARY_LABELS[SUMMARY_COLUMNS.index(c)] for c in summary]
    if not _grouped_bars(ax_bars, means, stds, summary, labels):
        no_data(ax_bars, "no lesion metrics")
    ax_bars.set_ylim(0, 1.05)
    ax_bars.set_ylabel("value")
    ax_bars.set_title("Lesion detection (mean +- std over seeds/folds)")
    colours = model_colors(list(froc_means.index))
    drawn = False
    for model, row in froc_means.iterrows():
        values = row[list(froc)].to_numpy(float)
        if np.isnan(values).all():
            continue
        rates = [FROC_RATES[FROC_COLUMNS.index(c)] for c in froc]
        ax_froc.plot(rates, values, marker="o", color=colours[model], label=str(model))
        drawn = True
    if drawn:
        ax_froc.set_xscale("log", base=2)
        ax_froc.set_xticks(FROC_RATES, [f"{r:g}" for r in FROC_RATES])
        ax_froc.legend(fontsize="small")
    else:
        no_data(ax_froc, "no FROC columns")
    ax_froc.set_ylim(0, 1.05)
    ax_froc.set_xlabel("false positives per scan")
    ax_froc.set_ylabel("sensitivity")
    ax_froc.set_title("FROC operating points (LUNA16 rules)")
    fig.suptitle(f"Lesion-level metrics ({n_models} models)")
    return fig


def draw_lesion_metrics(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``lesion_metrics_chart.png`` when the ok runs carry lesion columns; None otherwise."""
    results_dir = Path(results_dir)
    frame = load_ok_results(results_dir)
    if frame is None:
        return None
    if not any(c in frame.columns for c in SUMMARY_COLUMNS):
        logger.info("skipping %s: the runs have no lesion columns", OUTPUT)
        return None
    return save_figure(lesion_figure(frame), results_dir / OUTPUT)
