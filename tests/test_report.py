"""report.html (visualization/report.py): built from hand-made sweep tables written by the reducer (BraTS regions,
lesion metrics, efficiency, one failed run), then checked as a file (self-contained, escaped, every section) and
in a real headless Chromium (no console errors, no network, every chart container holds a drawn plot, a
screenshot). The report of a real tiny sweep is opened in the browser by tests/test_comparison_stats.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from browser_check import open_in_chromium
from engine.results.reducer import write_tables
from engine.options.stats_options import StatsOptions
from utils.schema import CONFIG_JSON, ENVIRONMENT_JSON
from visualization.lesion_charts import FROC_COLUMNS
from visualization.report import CHART_CLASS, OUTPUT, draw_report

MODELS = ("unet3d_xs", "unet3d_stride_xs", "dualbranch_01_unet_xs")
EVIL_ERROR = "RuntimeError: <script>alert('x')</script> & more"
ALL_CHARTS = {"learning_curves", "region_dice", "efficiency", "analysis_3d", "lesion_metrics", "froc", "ranking",
              "significance"}


def _tables() -> dict[str, pd.DataFrame]:
    """3 models x 2 seeds, 8 test cases per run, 3 epochs; BraTS regions, lesion metrics and efficiency columns;
    plus one failed run whose error holds HTML."""
    rng = np.random.default_rng(0)
    runs, cases, epochs = [], [], []
    for m, model in enumerate(MODELS):
        for seed in (1, 2):
            base = 0.6 + 0.1 * m
            run = dict(model=model, seed=seed, fold=pd.NA, status="ok", error="", epochs=3, best_epoch=3,
                       params=1e5 * (m + 1), flops_torch=1e9 * (3 - m), pam_train_mb=10.0 * (m + 1),
                       pam_infer_mb=3.0 * (m + 1), latency_ms=20.0 + 5 * m, latency_ms_std=1.0,
                       map=0.2 + 0.1 * m, mar=0.3 + 0.1 * m, ap_10=0.4 + 0.1 * m, ap_30=0.3, ap_50=0.2,
                       froc_cpm=0.25 + 0.1 * m, **{c: min(1.0, 0.1 * (i + 1) + 0.1 * m) for i, c in
                                                   enumerate(FROC_COLUMNS)})
            for c in range(8):
                values = {f"dice_{r}": float(np.clip(base - 0.05 * k + rng.normal(0, 0.03), 0, 1))
                          for k, r in enumerate(("wt", "tc", "et"))}
                values.update({f"hd95_{r}": float(abs(10 - 2 * m + rng.normal(0, 1))) for r in ("wt", "tc", "et")})
                cases.append(dict(model=model, seed=seed, fold=pd.NA, case_id=f"case{c}", **values))
            run.update({k: float(np.mean([c[k] for c in cases[-8:]])) for k in cases[-1] if k[:4] in ("dice", "hd95")})
            run["dice_mean"] = float(np.mean([run[f"dice_{r}"] for r in ("wt", "tc", "et")]))
            runs.append(run)
            for epoch in (1, 2, 3):
                epochs.append(dict(model=model, seed=seed, fold=pd.NA, epoch=epoch, train_loss=1.0 / epoch + m * 0.1,
                                   val_loss=1.1 / epoch, val_dice_wt=base * epoch / 3, val_dice_tc=base * epoch / 4,
                                   val_dice_et=base * epoch / 5, val_map=0.1 * epoch, lr=1e-3))
    runs.append(dict(model=MODELS[0], seed=3, fold=pd.NA, status="failed", error=EVIL_ERROR))
    return {"runs": pd.DataFrame(runs), "per_case": pd.DataFrame(cases), "epochs": pd.DataFrame(epochs)}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    (out / CONFIG_JSON).write_text(json.dumps({"dataset_version": "synthetic", "epochs": 3, "models": list(MODELS)}))
    (out / ENVIRONMENT_JSON).write_text(json.dumps({"date_utc": "2026-12-02T00:00:00+00:00",
                                                    "packages": {"torch": "2.14.1"}}))
    write_tables(out, _tables(), StatsOptions(bootstrap_resamples=100), list(MODELS))
    path = draw_report(out)
    assert path == out / OUTPUT
    return path


def test_report_is_one_self_contained_escaped_page(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing loaded: no CDN, no file beside it
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js itself is inlined
    keys = set(re.findall(rf'<div class="{CHART_CLASS}" data-chart="([a-z_0-9]+)"', page))
    assert keys == ALL_CHARTS
    for section in ("Model comparison", "Paired statistics", "Ranking", "Runs", "Configuration (config.json)",
                    "Environment (environment.json)"):
        assert f">{section}<" in page, section
    assert EVIL_ERROR not in page and "RuntimeError: &lt;script&gt;alert('x')&lt;/script&gt; &amp; more" in page
    assert all(model in page for model in MODELS)


def test_report_cells_hold_the_comparison_numbers(report: Path) -> None:
    comparison = pd.read_csv(report.parent / "model_comparison.csv").set_index("model")
    page = report.read_text(encoding="utf-8")
    row = comparison.loc["unet3d_xs"]
    cell = f"{row['dice_wt_mean']:.4g} [{row['dice_wt_ci_low']:.4g}, {row['dice_wt_ci_high']:.4g}]"
    assert f"<td>{cell}</td>" in page


def test_no_report_without_a_results_table(tmp_path: Path) -> None:
    assert draw_report(tmp_path) is None and not (tmp_path / OUTPUT).exists()


def test_report_draws_every_chart_in_chromium(report: Path, tmp_path: Path) -> None:
    seen = open_in_chromium(report, tmp_path / "report.png", CHART_CLASS)
    assert seen.errors == [] and seen.requests == []
    assert {c["key"] for c in seen.charts} == ALL_CHARTS
    for chart in seen.charts:
        assert chart["laid_out"] and chart["traces"] > 0 and chart["svg_layers"] > 0 and chart["height"] > 100, chart
    assert (tmp_path / "report.png").stat().st_size > 50_000
