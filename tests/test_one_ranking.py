"""One ranking on the report page (issue 24, item 7): ``model_comparison.csv`` keeps ``rank`` (by mean Dice) and gains
``final_rank`` (ranking.csv's rank then aggregate); the report's comparison table shows ``final_rank`` under a header
that says so, in the Ranking section's order; the Pareto fronts include the parameter-count panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.options.stats_options import StatsOptions
from engine.results.comparison_stats import add_final_rank, add_pareto
from engine.results.reducer import write_tables
from utils.schema import CONFIG_JSON
from visualization.efficiency_plots import efficiency_figure, pareto_models
from visualization.report import draw_report
from visualization.report_figures import efficiency_chart
from visualization.report_tables import RANK_MEAN_DICE, RANK_THEN_AGGREGATE, comparison_view

# "spiky" wins by mean Dice thanks to one case; "steady" is better on every other case, so it wins rank then aggregate
DICE = {"spiky": [0.99, 0.50, 0.50, 0.50, 0.50, 0.50], "steady": [0.10, 0.52, 0.52, 0.52, 0.52, 0.52],
        "weak": [0.05, 0.30, 0.30, 0.30, 0.30, 0.30]}
PARAMS = {"spiky": 3e6, "steady": 1e6, "weak": 2e6}


def _tables() -> dict[str, pd.DataFrame]:
    runs, cases = [], []
    for model, values in DICE.items():
        for i, value in enumerate(values):
            cases.append(dict(model=model, seed=1, fold=pd.NA, case_id=f"c{i}", dice_ich=value))
        runs.append(dict(model=model, seed=1, fold=pd.NA, status="ok", error="", epochs=1, best_epoch=1,
                         dice_ich=float(np.mean(values)), dice_mean=float(np.mean(values)), params=PARAMS[model],
                         flops_torch=PARAMS[model] * 10, pam_train_mb=PARAMS[model] / 1e5, latency_ms=5.0))
    return {"runs": pd.DataFrame(runs), "per_case": pd.DataFrame(cases)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one_ranking")
    (out / CONFIG_JSON).write_text(json.dumps({"dataset_version": "synthetic_ich", "models": list(DICE)}))
    write_tables(out, _tables(), StatsOptions(bootstrap_resamples=100), list(DICE))
    return out


def test_mean_dice_rank_and_rank_then_aggregate_disagree_and_both_are_named(sweep: Path) -> None:
    comparison = pd.read_csv(sweep / "model_comparison.csv").set_index("model")
    ranking = pd.read_csv(sweep / "ranking.csv").set_index("model")
    assert comparison.at["spiky", "rank"] == 1 and comparison.at["steady", "rank"] == 2  # by mean Dice
    assert ranking.at["steady", "final_rank"] == 1 and ranking.at["spiky", "final_rank"] == 2
    for model in DICE:  # the comparison's final_rank is ranking.csv's
        assert comparison.at[model, "final_rank"] == ranking.at[model, "final_rank"]
    columns = list(pd.read_csv(sweep / "model_comparison.csv").columns)
    assert columns.index("final_rank") == columns.index("rank") + 1


def test_report_page_shows_one_consistent_ranking(sweep: Path) -> None:
    page = draw_report(sweep).read_text(encoding="utf-8")
    comparison = page[page.index('<section id="comparison">'):page.index('<section id="statistics">')]
    ranking = page[page.index('<section id="ranking">'):]
    assert RANK_THEN_AGGREGATE in comparison and RANK_MEAN_DICE not in page
    order = [m for m in re.findall(r"<td>(spiky|steady|weak)</td>", comparison)]
    assert order == ["steady", "spiky", "weak"]  # best first, by the rank the Ranking section shows
    assert [m for m in re.findall(r"<td>(spiky|steady|weak)</td>", ranking)][:3] == order


def test_comparison_table_names_the_mean_dice_rank_when_no_ranking_exists() -> None:
    frame = pd.DataFrame({"model": ["a", "b"], "rank": [2, 1], "n_ok": [1, 1], "n_runs": [1, 1],
                          "dice_mean_mean": [0.4, 0.6]})
    view = comparison_view(add_final_rank(frame, None), [])
    assert RANK_MEAN_DICE in view.columns and list(view["model"]) == ["b", "a"]


def test_pareto_fronts_include_the_parameter_panel(sweep: Path) -> None:
    comparison = pd.read_csv(sweep / "model_comparison.csv").set_index("model")
    # params: steady (1M) and spiky (3M, more accurate) are on the front, weak (2M, least accurate) is not
    assert comparison["pareto_params"].to_dict() == {"spiky": True, "steady": True, "weak": False}
    assert pareto_models(sweep)["params_m"] == {"spiky", "steady"}
    fig = efficiency_figure(_tables()["runs"], ["ich"], pareto_models(sweep))
    params_ax = fig.axes[0]
    assert "parameters" in params_ax.get_xlabel()
    assert any(line.get_label() == "Pareto front" for line in params_ax.get_lines())
    chart = efficiency_chart(comparison.reset_index())
    fronts = [t for t in chart.data if t.name == "Pareto front"]
    assert fronts[0].xaxis in ("x", None) and sorted(fronts[0].x) == [1.0, 3.0]  # parameters (M), first panel
    table = add_pareto(pd.DataFrame({"model": ["a"], "dice_mean_mean": [0.5]}))
    assert not table["pareto_params"].any()  # no params column: nobody on that front
