"""Ranking chart (``ranking_chart.png``) drawn from ``ranking.csv`` only.

One horizontal bar per model, best final rank on top: the bar is split into the shares of bootstrap resamples of
the test cases in which the model reached final rank 1, 2, ... (``p_rank_k``; rank-then-aggregate, ties "min", so
some ranks never occur); each label names the model, its final rank, its mean rank and its 95% rank interval.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from utils.schema import RANKING_CSV
from visualization._common import read_csv, save_figure

logger = logging.getLogger(__name__)

OUTPUT = "ranking_chart.png"
_P_RANK = re.compile(r"^p_rank_(\d+)$")


def rank_columns(ranking: pd.DataFrame) -> list[str]:
    """The ``p_rank_k`` columns in rank order."""
    found = [(int(m.group(1)), c) for c in ranking.columns if (m := _P_RANK.match(str(c)))]
    return [c for _, c in sorted(found)]


def _label(row: pd.Series) -> str:
    interval = ""
    if "rank_ci_low" in row and pd.notna(row["rank_ci_low"]):
        interval = f", 95% [{int(row['rank_ci_low'])}, {int(row['rank_ci_high'])}]"
    return f"{row['model']}\nrank {int(row['final_rank'])}, mean rank {float(row['mean_rank']):.2f}{interval}"


def ranking_figure(ranking: pd.DataFrame) -> Figure | None:
    """The figure of ``ranking_chart.png`` (see the module docstring); None without rank shares."""
    columns = rank_columns(ranking)
    if ranking.empty or not columns or "final_rank" not in ranking:
        return None
    table = ranking.sort_values(["final_rank", "model"], kind="stable").reset_index(drop=True)
    shares = table[columns].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy()
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(10, 1.6 + 0.75 * len(table)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(table))[::-1]  # best on top
    left = np.zeros(len(table))
    for k, column in enumerate(columns):
        color = cmap(k / max(len(columns) - 1, 1))
        ax.barh(y, shares[:, k], left=left, color=color, edgecolor="white", label=f"rank {k + 1}")
        for yi, start, width in zip(y, left, shares[:, k]):
            if width >= 0.08:
                ax.text(start + width / 2, yi, f"{width:.0%}", ha="center", va="center", fontsize="x-small",
                        color="white" if k < len(columns) / 2 else "black")
        left += shares[:, k]
    ax.set_yticks(y, [_label(row) for _, row in table.iterrows()], fontsize="small")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of bootstrap resamples of the test cases at each final rank")
    ax.legend(ncols=min(len(columns), 6), loc="upper center", bbox_to_anchor=(0.5, -0.1),
              fontsize="small", frameon=False)
    n_cases = int(table["n_cases"].iloc[0]) if "n_cases" in table else 0
    n_boot = int(table["n_resamples"].iloc[0]) if "n_resamples" in table else 0
    metrics = str(table["metrics"].iloc[0]) if "metrics" in table else ""
    ax.set_title(f"Rank then aggregate over {n_cases} test cases ({metrics}); rank stability over {n_boot} bootstrap "
                 "resamples of the cases", fontsize="small", wrap=True)
    return fig


def draw_ranking_chart(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Draw ``ranking_chart.png`` from ``ranking.csv`` (``regions`` is unused: the ranked columns are the CSV's);
    None (logged) without that file."""
    results_dir = Path(results_dir)
    if not (results_dir / RANKING_CSV).is_file():
        logger.info("skipping ranking chart: %s not found", results_dir / RANKING_CSV)
        return None
    ranking = read_csv(results_dir, RANKING_CSV)
    if ranking is None:
        return None
    fig = ranking_figure(ranking)
    if fig is None:
        logger.info("skipping ranking chart: %s has no rank shares", results_dir / RANKING_CSV)
        return None
    return save_figure(fig, results_dir / OUTPUT)
