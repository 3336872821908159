"""``report.html``: one self-contained page of a sweep, readable offline and shareable as a single file.

It holds the configuration and environment, the comparison table (mean and 95% bootstrap interval over runs), the
paired statistics, the ranking, every run's status, and interactive plotly charts: learning curves, Dice per region
with intervals, accuracy against cost with the Pareto front, the 3D params-latency-Dice view, the rank
stability, pairwise significance, and on the lesion track the detection metrics and FROC curves. plotly.js is
inlined once (no CDN: it opens with no network). Built from the CSV/JSON files of the results folder only.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from utils.atomic import atomic_write_text
from utils.schema import CONFIG_JSON, ENVIRONMENT_JSON, RANKING_CSV, STATISTICAL_TESTS_CSV
from visualization import report_figures as charts
from visualization import report_tables as tables
from visualization._common import (COMPARISON_CSV, EPOCHS_CSV, RESULTS_CSV, detect_regions, keep_ok_runs,
                                   load_ok_results)
from visualization.interactive import interactive_3d_figure
from visualization.learning_curves import epoch_frame

logger = logging.getLogger(__name__)

OUTPUT = "report.html"
CHART_CLASS = "chart"  # every chart container; the browser test checks each holds a drawn plot

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;background:#f5f7fa}
header{background:#1f3b57;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:24px}
header p{margin:2px 0;opacity:.85}nav{padding:8px 32px;background:#e3e9f0;position:sticky;top:0;z-index:5}
nav a{margin-right:14px;color:#1f3b57;text-decoration:none;font-weight:600}main{padding:8px 32px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);margin:16px 0;padding:12px 20px}
h2{font-size:19px;margin:6px 0 10px}p.note{color:#56616d;font-size:13px;margin:4px 0 10px}
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 8px;border-bottom:1px solid #e5e9ee;text-align:left}
table.data th{background:#f0f3f7;position:sticky;top:0}.scroll{overflow:auto;max-height:560px}
.chart{min-height:420px;margin:10px 0}details summary{cursor:pointer;color:#1f3b57;margin:6px 0}
"""


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(path) if path.is_file() else None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as exc:
        logger.warning("report: cannot read %s (%s)", path, exc)
        return None
    return None if frame is None or frame.empty else frame


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        logger.warning("report: cannot read %s (%s)", path, exc)
        return {}
    return value if isinstance(value, dict) else {}


def _section(anchor: str, title: str, body: str, note: str = "") -> tuple[str, str, str]:
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return anchor, title, f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{note_html}{body}</section>'


def _table_section(anchor: str, title: str, frame: pd.DataFrame | None, note: str = "") -> tuple[str, str, str] | None:
    if frame is None or frame.empty:
        return None
    return _section(anchor, title, f'<div class="scroll">{tables.html_table(frame)}</div>', note)


def _chart_html(key: str, fig: Any) -> str:
    """One chart container holding the figure's div and its drawing script (plotly.js is loaded once)."""
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{key}",
                       config={"displaylogo": False, "responsive": True})
    return f'<div class="{CHART_CLASS}" data-chart="{key}">{body}</div>'


@dataclass
class ReportInputs:
    """The files of a results folder the report reads, each read once (None / {} when missing)."""

    comparison: pd.DataFrame | None
    tests: pd.DataFrame | None
    ranking: pd.DataFrame | None
    config: dict[str, Any]
    environment: dict[str, Any]

    @classmethod
    def read(cls, results_dir: Path) -> "ReportInputs":
        return cls(_read_csv(results_dir / COMPARISON_CSV), _read_csv(results_dir / STATISTICAL_TESTS_CSV),
                   _read_csv(results_dir / RANKING_CSV), _read_json(results_dir / CONFIG_JSON),
                   _read_json(results_dir / ENVIRONMENT_JSON))


def build_charts(results_dir: Path, regions: list[str], inputs: ReportInputs) -> list[tuple[str, str, Any]]:
    """(key, title, figure) of every chart whose inputs exist, in page order."""
    comparison, ranking, tests = inputs.comparison, inputs.ranking, inputs.tests
    epochs = epoch_frame(results_dir, regions or None) if (results_dir / EPOCHS_CSV).is_file() else None
    ok_runs = load_ok_results(results_dir)
    candidates = [
        ("learning_curves", "Learning curves", lambda: charts.learning_curves_chart(*epochs) if epochs else None),
        ("region_dice", "Dice per region", lambda: charts.region_dice_chart(comparison, regions)),
        ("efficiency", "Accuracy against cost", lambda: charts.efficiency_chart(comparison)),
        ("analysis_3d", "Params, latency and Dice in 3D",
         lambda: interactive_3d_figure(ok_runs, regions or None) if ok_runs is not None else None),
        ("lesion_metrics", "Lesion detection", lambda: charts.lesion_chart(comparison)),
        ("froc", "FROC", lambda: charts.froc_chart(comparison)),
        ("dice_vs_clicks", "Dice against clicks",
         lambda: charts.clicks_chart(ok_runs) if ok_runs is not None else None),
        ("ranking", "Rank stability", lambda: charts.ranking_chart(ranking) if ranking is not None else None),
        ("significance", "Pairwise significance",
         lambda: charts.significance_chart(tests, regions) if tests is not None else None),
    ]
    built = []
    for key, title, make in candidates:
        needs_comparison = key in ("region_dice", "efficiency", "lesion_metrics", "froc")
        if needs_comparison and comparison is None:
            continue
        try:
            fig = make()
        except Exception:  # one broken chart must not cost the report
            logger.exception("report chart %s failed", key)
            continue
        if fig is not None:
            built.append((key, title, fig))
    return built


def _summary_line(runs: pd.DataFrame, config: dict[str, Any], environment: dict[str, Any]) -> str:
    status = runs["status"].astype(str).value_counts().to_dict() if "status" in runs else {}
    parts = [f"{runs['model'].nunique()} models", f"{len(runs)} runs ({', '.join(f'{v} {k}' for k, v in status.items())})",
             f"data: {config.get('dataset_version', '?')}", f"created {environment.get('date_utc', '?')}"]
    return " · ".join(html.escape(str(p)) for p in parts)


def build_sections(results_dir: Path, runs: pd.DataFrame, regions: list[str],
                   inputs: ReportInputs) -> list[tuple[str, str, str]]:
    """(anchor, title, HTML) of every section, in page order."""
    config, environment = inputs.config, inputs.environment
    comparison, tests, ranking = inputs.comparison, inputs.tests, inputs.ranking
    sections = [
        _table_section("comparison", "Model comparison",
                       tables.comparison_view(comparison, regions) if comparison is not None else None,
                       "Test metrics: mean over runs (seeds x folds) [95% bootstrap CI over runs]; HD95 in mm, "
                       "lower is better. Efficiency at batch 1. Rank: the Ranking section's rank then aggregate "
                       "(final_rank; before the statistics exist, the rank by mean Dice, so named). Full columns "
                       "in model_comparison.csv."),
        _table_section("statistics", "Paired statistics",
                       tables.tests_view(tests) if tests is not None else None,
                       "Wilcoxon signed-rank on per-case values (a case's value: its mean over the model's seeds), "
                       "Holm-corrected per metric and comparison family; rank-biserial effect size; paired "
                       "bootstrap CI of the difference. A note marks tests with too few cases to reach p < 0.05."),
        _table_section("ranking", "Ranking",
                       tables.ranking_view(ranking) if ranking is not None else None,
                       "Rank then aggregate: ranks per case, region and metric (ties: mean rank; NaN ranks last), "
                       "averaged; stability under bootstrap resampling of the cases."),
    ]
    sections += [_section(f"chart-{key}", title, _chart_html(key, fig)) for key, title, fig in
                 build_charts(results_dir, regions, inputs)]
    sections.append(_table_section("runs", "Runs", tables.runs_view(runs), "Every run, failed ones included."))
    settings = "".join(f"<details><summary>{html.escape(name)}</summary>{tables.key_value_table(value)}</details>"
                       for name, value in (("Configuration (config.json)", config),
                                           ("Environment (environment.json)", environment)) if value)
    if settings:
        sections.append(_section("setup", "Configuration and environment", settings))
    return [s for s in sections if s is not None]


def render_page(title: str, summary: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole HTML document: header, navigation, sections, with plotly.js inlined in the head."""
    from plotly.offline import get_plotlyjs  # the library itself, inlined: the page needs no network

    nav = "".join(f'<a href="#{anchor}">{html.escape(name)}</a>' for anchor, name, _ in sections)
    body = "\n".join(part for _, _, part in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style>'
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f'<header><h1>{html.escape(title)}</h1><p>{summary}</p></header><nav>{nav}</nav>'
            f'<main>{body}</main></body></html>\n')


def draw_report(results_dir: Path, regions: list[str] | None = None) -> Path | None:
    """Write ``report.html`` into ``results_dir`` from its tables; None (logged) without a results CSV."""
    results_dir = Path(results_dir)
    runs = _read_csv(results_dir / RESULTS_CSV)
    if runs is None or "model" not in runs.columns:
        logger.info("skipping report: no %s in %s", RESULTS_CSV, results_dir)
        return None
    ok = keep_ok_runs(results_dir, runs)
    found = detect_regions((ok if not ok.empty else runs).columns, regions)
    inputs = ReportInputs.read(results_dir)
    page = render_page(f"volbench report: {results_dir.name}", _summary_line(runs, inputs.config, inputs.environment),
                       build_sections(results_dir, runs, found, inputs))
    path = results_dir / OUTPUT
    atomic_write_text(path, page)
    logger.info("wrote %s", path)
    return path
