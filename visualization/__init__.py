"""Result charts drawn from the CSV files of a results directory only (never the runner or torch).

``draw_all(results_dir)`` draws every chart whose inputs exist, then ``report.html`` (one self-contained page); each ``draw_*`` function returns the
file it wrote, or None (with a logged reason) when its input is missing or has no ok rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from visualization.boxplots import draw_dice_boxplots
from visualization.click_charts import draw_dice_vs_clicks
from visualization.comparison import draw_model_comparison
from visualization.efficiency_plots import draw_parameter_efficiency
from visualization.interactive import draw_interactive_3d
from visualization.learning_curves import draw_learning_curves
from visualization.lesion_charts import draw_lesion_metrics
from visualization.modality import draw_modality_contribution
from visualization.ranking_chart import draw_ranking_chart
from visualization.report import draw_report
from visualization.significance import draw_significance_heatmap

logger = logging.getLogger(__name__)

DrawFn = Callable[..., "Path | None"]

CHARTS: tuple[DrawFn, ...] = (
    draw_learning_curves,
    draw_model_comparison,
    draw_parameter_efficiency,
    draw_interactive_3d,
    draw_modality_contribution,
    draw_dice_boxplots,
    draw_lesion_metrics,
    draw_dice_vs_clicks,
    draw_significance_heatmap,
    draw_ranking_chart,
    draw_report,  # last: the one page that gathers the tables and the interactive charts
)


def draw_all(results_dir: Path, regions: list[str] | None = None) -> list[Path]:
    """Draw every chart whose inputs exist; a failing chart is logged and skipped, never raised."""
    written: list[Path] = []
    for draw in CHARTS:
        try:
            path = draw(Path(results_dir), regions=regions)
        except Exception:  # one broken chart must not stop the others
            logger.exception("chart %s failed", draw.__name__)
            continue
        if path is not None:
            written.append(path)
    return written


__all__ = [
    "CHARTS",
    "draw_all",
    "draw_dice_boxplots",
    "draw_dice_vs_clicks",
    "draw_interactive_3d",
    "draw_learning_curves",
    "draw_lesion_metrics",
    "draw_model_comparison",
    "draw_modality_contribution",
    "draw_parameter_efficiency",
    "draw_ranking_chart",
    "draw_report",
    "draw_significance_heatmap",
]
