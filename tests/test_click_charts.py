"""``dice_vs_clicks.png`` and its report chart draw every target region (BraTS: WT, TC, ET), one panel each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils.schema import RUNS_CSV
from visualization import draw_all
from visualization.click_charts import click_columns, clicks_figure, draw_dice_vs_clicks
from visualization.report_figures import clicks_chart

REGIONS = ("wt", "tc", "et")
CLICKS = (1, 3, 5)


def _runs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for model, promptable in (("sam_med3d", True), ("unet3d_xs", False)):
        for seed in (1, 2):
            row = {"model": model, "seed": seed, "fold": np.nan, "status": "ok", "error": "",
                   "click_mode": "random" if promptable else "none"}
            for r in REGIONS:
                row[f"dice_{r}"] = rng.uniform(0.3, 0.8)
                for k in CLICKS:  # the region's own level, so each panel shows different values
                    row[f"dice_{r}_click{k}"] = (0.2 * REGIONS.index(r) + 0.05 * k) if promptable else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def test_every_region_gets_its_own_panel(tmp_path: Path) -> None:
    frame = _runs()
    found = click_columns(list(frame.columns))
    assert list(found) == list(REGIONS)
    fig = clicks_figure(frame, found)
    assert [ax.get_title() for ax in fig.axes] == list(REGIONS)
    for ax, region in zip(fig.axes, REGIONS):
        line = next(line for line in ax.get_lines() if "clicks" in str(line.get_label()))
        expected = [0.2 * REGIONS.index(region) + 0.05 * k for k in CLICKS]
        np.testing.assert_allclose(line.get_ydata(), expected)  # that region's own per-click means
    frame.to_csv(tmp_path / RUNS_CSV, index=False)
    path = draw_dice_vs_clicks(tmp_path, regions=list(REGIONS))
    assert path is not None and path.stat().st_size > 0
    path.unlink()
    assert path in draw_all(tmp_path)  # the sweep's own call draws it too


def test_report_chart_has_one_panel_per_region() -> None:
    fig = clicks_chart(_runs())
    assert [a["text"] for a in fig.layout.annotations] == list(REGIONS)
    axes = {trace.xaxis for trace in fig.data if trace.name == "sam_med3d (clicks)"}
    assert axes == {"x", "x2", "x3"}
    by_axis = {trace.xaxis: list(trace.y) for trace in fig.data if trace.name == "sam_med3d (clicks)"}
    np.testing.assert_allclose(by_axis["x3"], [0.4 + 0.05 * k for k in CLICKS])
    assert sum(trace.showlegend is not False for trace in fig.data) == len({t.name for t in fig.data})
