"""The comparison statistics (engine/results/comparison_stats.py) on hand-made tables whose answers are known: bootstrap
intervals, counts, out-of-fold pooling and variance shares in model_comparison.csv, the Pareto columns, the paired
tests against SciPy with Holm and the rank-biserial, the ranking with ties and NaN; the charts read back; the
statistics flags; then one tiny 2-model x 2-seed sweep: the files and columns after the sweep and after
--aggregate, its report.html in a real Chromium, and --compare of that sweep with a renamed copy (and its refusal
of other data or test cases)."""

from __future__ import annotations

import json
import shutil
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import evaluate_experiment
import integrated_experiment
from engine.results.comparison_stats import (EXTENDED_SUFFIXES, PARETO_AXES, TEST_COLUMNS, add_pareto, extend_comparison,
                                     is_extended_column, ranking_table, statistical_tests)
from engine.options.config import parse_config
from engine.results.job_results import JobFolder, job_folders
from engine.results.reducer import IncrementalReducer, build_comparison, metric_columns
from engine.options.stats_options import StatsOptions, stats_options_from_config
from metrics.statistics import bootstrap_ci, holm, paired_bootstrap_diff_ci, variance_shares
from browser_check import open_in_chromium
from sweep_helpers import tiny_flags
from utils.schema import (COMPARISON_CSV, CONFIG_JSON, JOBS_DIR, RANKING_CSV, SPLITS_JSON, STATISTICAL_TESTS_CSV,
                          TABLES)
from visualization import efficiency_plots, ranking_chart, significance
from visualization.report import CHART_CLASS

OPTIONS = StatsOptions(stats_seed=3, bootstrap_resamples=200)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _runs_and_cases() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """2 ok models x 2 seeds x 3 folds (plus one failed run with extreme values), 6 test cases per run, 2
    validation cases per run; ``hd95_wt`` has no validation column, ``ap_10`` no per-case column."""
    rng = np.random.default_rng(0)
    runs, cases, val = [], [], []
    for m, model in enumerate(("a", "b")):
        for seed in (1, 2):
            for fold in range(3):
                run = dict(model=model, seed=seed, fold=fold, status="ok", dice_wt=0.5 + 0.1 * m + 0.02 * seed
                           + 0.01 * fold + rng.normal(0, 0.005), hd95_wt=10.0 - m + rng.normal(0, 0.5),
                           ap_10=0.3 + 0.1 * m + rng.normal(0, 0.01), params=1e6 * (m + 1), latency_ms=5.0 + m)
                runs.append(run)
                for c in range(6):
                    dice = np.nan if (model, seed, fold, c) == ("a", 1, 0, 0) else run["dice_wt"] + 0.01 * c
                    cases.append(dict(model=model, seed=seed, fold=fold, case_id=f"t{c}", dice_wt=dice,
                                      hd95_wt=run["hd95_wt"]))
                for c in range(2):
                    val.append(dict(model=model, seed=seed, fold=fold, epoch=1, case_id=f"v{fold}{c}",
                                    dice_wt=0.4 + 0.1 * m + 0.01 * c))
    runs.append(dict(model="a", seed=3, fold=0, status="failed", dice_wt=99.0, hd95_wt=99.0, ap_10=99.0))
    cases.append(dict(model="a", seed=3, fold=0, case_id="t0", dice_wt=99.0, hd95_wt=99.0))
    val.append(dict(model="a", seed=3, fold=0, epoch=1, case_id="v00", dice_wt=99.0))
    frames = [pd.DataFrame(rows) for rows in (runs, cases, val)]
    for frame in frames:
        frame["fold"] = frame["fold"].astype("Int64")
    return frames[0], frames[1], frames[2]


def test_extended_comparison_columns_equal_the_statistics_library(no_warnings: None) -> None:
    runs, cases, val = _runs_and_cases()
    metrics = metric_columns(runs)
    basic = build_comparison(runs)
    table = extend_comparison(basic, runs, metrics, cases, val, OPTIONS)
    pd.testing.assert_frame_equal(table[basic.columns], basic)  # today's columns and values unchanged
    columns = list(table.columns)
    for metric in metrics:
        at = columns.index(f"{metric}_std")
        assert columns[at + 1:at + 1 + len(EXTENDED_SUFFIXES)] == [metric + s for s in EXTENDED_SUFFIXES]
    assert columns[-len(PARETO_AXES):] == list(PARETO_AXES)
    ok = runs[runs["status"] == "ok"]
    for model, row in table.set_index("model").iterrows():
        own = ok[ok["model"] == model]
        for metric in metrics:
            low, high = bootstrap_ci(own[metric], n_resamples=200, seed=3)
            assert (row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]) == pytest.approx((low, high))
            assert row[f"{metric}_n_runs"] == 6
            shares = variance_shares(own, metric)
            assert row[f"{metric}_seed_share"] == pytest.approx(shares["seed"], nan_ok=True)
            assert row[f"{metric}_fold_share"] == pytest.approx(shares["fold"], nan_ok=True)
        assert row["dice_wt_n_cases"] == 36 - (model == "a")  # one NaN case of a; the failed run left out
        assert row["hd95_wt_n_cases"] == 36 and np.isnan(row["ap_10_n_cases"])  # AP: no per-case column
        pooled = val[(val["model"] == model) & (val["seed"] != 3)]["dice_wt"].mean()
        assert row["dice_wt_oof_mean"] == pytest.approx(pooled)
        assert np.isnan(row["hd95_wt_oof_mean"])  # validation computes no HD95
    shares = table[["dice_wt_seed_share", "dice_wt_fold_share"]]
    assert shares.notna().all().all() and ((shares >= 0) & (shares <= 1)).all().all()


def test_pareto_columns_mark_the_front_per_cost_axis() -> None:
    table = pd.DataFrame(dict(model=list("abcde"), dice_mean_mean=[0.8, 0.7, 0.9, 0.6, np.nan],
                              pam_train_mb=[100, 50, 300, 50, 10], latency_ms=[5, 9, 4, np.nan, 1],
                              flops_torch=[1e9, 1e9, 1e9, 1e9, 1e9]))
    out = add_pareto(table)
    assert out["pareto_pam"].tolist() == [True, True, True, False, False]  # d: as cheap as b, less accurate
    assert out["pareto_latency"].tolist() == [False, False, True, False, False]  # c: fastest and most accurate
    assert out["pareto_flops"].tolist() == [False, False, True, False, False]
    assert add_pareto(table.drop(columns=["latency_ms"]))["pareto_latency"].tolist() == [False] * 5
    assert add_pareto(table.drop(columns=["dice_mean_mean"]))["pareto_pam"].tolist() == [False] * 5


def _paired_cases() -> tuple[pd.DataFrame, pd.DataFrame]:
    """3 models x 2 seeds x 10 cases with known differences; model c has only 4 cases."""
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.5, 0.9, size=10)
    rows = []
    for model, shift in (("a", 0.0), ("b", 0.05), ("c", -0.02)):
        for seed in (1, 2):
            for c in range(10 if model != "c" else 4):
                value = truth[c] + shift + rng.normal(0, 0.03)
                rows.append(dict(model=model, seed=seed, fold=np.nan, case_id=f"k{c}", dice_wt=value,
                                 hd95_wt=20 * (1 - value), precision_wt=value))
    cases = pd.DataFrame(rows)
    runs = cases.groupby(["model", "seed"], as_index=False).first()[["model", "seed", "fold"]].assign(status="ok")
    return runs, cases


def test_paired_tests_equal_scipy_with_holm_per_family_and_metric(no_warnings: None) -> None:
    runs, cases = _paired_cases()
    table = statistical_tests(cases, runs, OPTIONS, models=["a", "b", "c"])
    assert list(table.columns) == TEST_COLUMNS
    assert set(table["metric"]) == {"dice_wt", "hd95_wt"}  # precision is not tested
    assert (table["baseline"] == "a").all()
    means = cases.groupby(["case_id", "model"])["dice_wt"].mean().unstack("model")
    dice = table[table["metric"] == "dice_wt"]
    expected_pairs = [("baseline", "b", "a"), ("baseline", "c", "a"), *(("pairwise", x, y) for x, y in
                                                                        combinations("abc", 2))]
    assert list(zip(dice["comparison"], dice["model_a"], dice["model_b"])) == expected_pairs
    for _, row in dice.iterrows():
        both = means[[row["model_a"], row["model_b"]]].dropna()
        d = both[row["model_a"]] - both[row["model_b"]]
        assert row["n"] == len(d) and row["mean_diff"] == pytest.approx(d.mean())
        assert row["mean_a"] == pytest.approx(both[row["model_a"]].mean())
        ref = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        assert row["p_value"] == pytest.approx(ref.pvalue) and row["statistic"] == pytest.approx(ref.statistic)
        ranks = stats.rankdata(np.abs(d))
        assert row["rank_biserial"] == pytest.approx((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())
        mean, low, high = paired_bootstrap_diff_ci(means[row["model_a"]], means[row["model_b"]], n_resamples=200,
                                                   seed=3)
        assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((low, high))
        assert row["enough"] == (len(d) >= 6)
        assert (row["note"] == "") == row["enough"]
    for (family, metric), group in table.groupby(["comparison", "metric"]):
        np.testing.assert_allclose(group["p_holm"], holm(group["p_value"].to_numpy()))
    assert not table.loc[table["model_a"].eq("c") | table["model_b"].eq("c"), "enough"].any()  # 4 cases only
    hd95 = table[table["metric"] == "hd95_wt"]
    assert not hd95["higher_is_better"].any() and dice["higher_is_better"].all()


def test_unknown_baseline_falls_back_to_the_first_model_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    runs, cases = _paired_cases()
    table = statistical_tests(cases, runs, StatsOptions(baseline="nope", bootstrap_resamples=100), models=["b", "a"])
    assert (table["baseline"] == "b").all() and "--baseline nope" in caplog.text and "b, a, c" in caplog.text
    only_one = statistical_tests(cases[cases["model"] == "a"], runs, OPTIONS)
    assert only_one.empty and list(only_one.columns) == TEST_COLUMNS


def test_ranking_ranks_ties_by_mean_and_nan_last(no_warnings: None) -> None:
    rows = [dict(model="a", seed=1, case_id="x", dice_wt=0.9, hd95_wt=2.0),
            dict(model="b", seed=1, case_id="x", dice_wt=0.9, hd95_wt=3.0),
            dict(model="c", seed=1, case_id="x", dice_wt=np.nan, hd95_wt=1.0),
            dict(model="a", seed=1, case_id="y", dice_wt=0.1, hd95_wt=np.nan),
            dict(model="b", seed=1, case_id="y", dice_wt=0.5, hd95_wt=4.0),
            dict(model="c", seed=1, case_id="y", dice_wt=0.25, hd95_wt=4.0),
            dict(model="c", seed=2, case_id="y", dice_wt=0.75, hd95_wt=4.0)]  # c's two runs average to 0.5
    cases = pd.DataFrame(rows).assign(fold=np.nan, precision_wt=0.1)
    runs = cases[["model", "seed", "fold"]].drop_duplicates().assign(status="ok")
    table = ranking_table(cases, runs, OPTIONS).set_index("model")
    # dice: x a,b tie (1.5, 1.5), c NaN last (3); y b,c tie at 0.5 (1.5), a 3. hd95: x c 1, a 2, b 3; y b,c tie
    # (1.5), a NaN last (3)
    assert table["rank_dice_wt"].to_dict() == {"a": 2.25, "b": 1.5, "c": 2.25}
    assert table["rank_hd95_wt"].to_dict() == {"a": 2.5, "b": 2.25, "c": 1.25}
    assert table["mean_rank"].to_dict() == pytest.approx({"a": 2.375, "b": 1.875, "c": 1.75})
    assert table["final_rank"].to_dict() == {"c": 1, "b": 2, "a": 3}
    p = table[[c for c in table.columns if c.startswith("p_rank_")]]
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (table["n_resamples"] == 200).all() and (table["n_cases"] == 2).all()
    assert "precision" not in " ".join(table.columns)


def test_charts_read_the_tables_back(tmp_path: Path, no_warnings: None) -> None:
    runs, cases = _paired_cases()
    statistical_tests(cases, runs, OPTIONS).to_csv(tmp_path / STATISTICAL_TESTS_CSV, index=False)
    ranking_table(cases, runs, OPTIONS).to_csv(tmp_path / RANKING_CSV, index=False)
    tests = pd.read_csv(tmp_path / STATISTICAL_TESTS_CSV)
    fig = significance.significance_figure(tests)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["dice_wt (higher is better)",
                                                                     "hd95_wt (lower is better)"]
    row = tests[(tests["comparison"] == "pairwise") & (tests["metric"] == "dice_wt")].iloc[0]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"{row['p_holm']:.2g}" in " ".join(texts) and "n=4\ntoo few" in texts
    fig = ranking_chart.ranking_figure(pd.read_csv(tmp_path / RANKING_CSV))
    widths = [bar.get_width() for bar in fig.axes[0].patches]
    assert sum(widths) == pytest.approx(3.0)  # every model's shares add up to 1
    assert significance.draw_significance_heatmap(tmp_path).name == "significance_heatmap.png"
    assert ranking_chart.draw_ranking_chart(tmp_path).name == "ranking_chart.png"


def test_efficiency_chart_rings_the_front_models(no_warnings: None) -> None:
    rows = [dict(model=m, seed=s, status="ok", dice_mean=d, params=1e6, flops_torch=f, pam_train_mb=p, latency_ms=1.0)
            for m, d, f, p in (("a", 0.8, 1e9, 100), ("b", 0.7, 2e9, 50), ("c", 0.6, 3e9, 300)) for s in (1, 2)]
    fig = efficiency_plots.efficiency_figure(pd.DataFrame(rows), fronts={"gflops": {"a"}, "pam_train_mb": {"a", "b"}})
    by_label = {ax.get_xlabel(): ax for ax in fig.axes}

    def ringed(ax: object) -> list[tuple[float, float]]:
        return [xy for line in ax.lines if line.get_markerfacecolor() == "none" for xy in line.get_xydata().tolist()]

    assert ringed(by_label["forward GFLOPs (batch 1)"]) == [[1.0, 0.8]]
    assert sorted(ringed(by_label["PAM train (MB)"])) == [[50.0, 0.7], [100.0, 0.8]]
    assert ringed(by_label["parameters (M)"]) == []


def test_stats_flags_are_recorded_validated_and_read_back() -> None:
    config = parse_config(["--baseline", "unet3d_xs", "--stats_seed", "5", "--bootstrap_resamples", "300"])
    assert (config.baseline, config.stats_seed, config.bootstrap_resamples) == ("unet3d_xs", 5, 300)
    record = config.to_dict()
    record["starts"] = [{"changed": {}}, {"changed": {"stats_seed": 9}}]  # a resume changed the seed
    assert stats_options_from_config(record) == StatsOptions("unet3d_xs", 9, 300)
    assert stats_options_from_config(None, baseline="x") == StatsOptions("x", 0, 1000)
    for bad in (["--bootstrap_resamples", "50"], ["--baseline", "unet3d_*"], ["--stats_seed", "-1"]):
        with pytest.raises(SystemExit):
            parse_config(bad)
    assert is_extended_column("dice_wt_oof_mean") and is_extended_column("pareto_pam")
    assert not is_extended_column("dice_wt_mean") and not is_extended_column("n_runs")


def test_incremental_reducer_writes_the_basic_comparison(tmp_path: Path) -> None:
    runs, _, _ = _runs_and_cases()
    ok = runs[runs["status"] == "ok"]
    extended = extend_comparison(build_comparison(ok[ok["model"] == "b"]), ok[ok["model"] == "b"], ["dice_wt"])
    extended.to_csv(tmp_path / COMPARISON_CSV, index=False)  # an earlier full reduce
    folder = JobFolder.of(tmp_path / JOBS_DIR, "a", 1, 0)
    folder.write_job(dict(model="a", seed=1, fold=0, index=0))
    folder.write_table("runs", [dict(model="a", seed=1, fold=0, status="ok", dice_wt=0.5)])
    IncrementalReducer(tmp_path).add_job(folder, [folder])
    comparison = pd.read_csv(tmp_path / COMPARISON_CSV)
    assert set(comparison["model"]) == {"a", "b"}
    assert not [c for c in comparison.columns if is_extended_column(c)]


# --- one tiny sweep -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stats") / "sweep"
    flags = tiny_flags(out, tmp_path_factory.mktemp("cache"), "--models", "unet3d_xs", "unet3d_stride_xs",
                       "--seeds", "1", "2", "--epochs", "1", "--bootstrap_resamples", "200")
    assert integrated_experiment.main(flags) == 0
    return out


def _check_files(out: Path, models: set[str]) -> None:
    comparison = pd.read_csv(out / COMPARISON_CSV)
    assert set(comparison["model"]) == models and "rank" in comparison
    for metric in ("dice_wt", "dice_mean", "hd95_et"):
        assert {metric + s for s in ("_mean", "_std", *EXTENDED_SUFFIXES)} <= set(comparison.columns)
    assert set(PARETO_AXES) <= set(comparison.columns)
    tests = pd.read_csv(out / STATISTICAL_TESTS_CSV)
    assert set(TEST_COLUMNS) <= set(tests.columns) and {"dice_wt", "hd95_wt"} <= set(tests["metric"])
    assert set(tests["comparison"]) == {"baseline", "pairwise"}
    ranking = pd.read_csv(out / RANKING_CSV)
    assert set(ranking["model"]) == models and {"final_rank", "mean_rank", "p_rank_1", "p_keep_rank"} <= set(
        ranking.columns)
    for chart in ("significance_heatmap.png", "ranking_chart.png", "parameter_efficiency.png", "report.html"):
        assert (out / chart).is_file(), chart


def test_sweep_writes_the_statistics_and_aggregate_rebuilds_them(sweep: Path) -> None:
    models = {"unet3d_xs", "unet3d_stride_xs"}
    _check_files(sweep, models)
    assert json.loads((sweep / CONFIG_JSON).read_text())["bootstrap_resamples"] == 200
    before = {n: (sweep / n).read_text() for n in (COMPARISON_CSV, STATISTICAL_TESTS_CSV, RANKING_CSV)}
    for name in before:
        (sweep / name).unlink()
    assert evaluate_experiment.main(["--results_dir", str(sweep), "--aggregate"]) == 0
    _check_files(sweep, models)
    assert {n: (sweep / n).read_text() for n in before} == before  # the same seed gives the same numbers


def test_sweep_report_draws_its_charts_in_chromium(sweep: Path, tmp_path: Path) -> None:
    seen = open_in_chromium(sweep / "report.html", tmp_path / "sweep_report.png", CHART_CLASS)
    assert seen.errors == [] and seen.requests == []
    # --skip_efficiency: no cost axis, so neither the efficiency scatter nor the 3D view; the rest are drawn
    assert {c["key"] for c in seen.charts} == {"learning_curves", "region_dice", "ranking", "significance"}
    assert all(c["laid_out"] and c["traces"] > 0 and c["svg_layers"] > 0 for c in seen.charts), seen.charts


def _renamed_copy(sweep: Path, target: Path, suffix: str) -> Path:
    """The sweep's job folders and records with every model renamed ``<model><suffix>`` (no checkpoints)."""
    shutil.copytree(sweep, target, ignore=shutil.ignore_patterns("*.pth", "*.png", "*.html"))
    for folder in job_folders(target / JOBS_DIR):
        for table in TABLES:
            frame = folder.read_table(table)
            if frame is not None:
                folder.write_table(table, frame.assign(model=frame["model"] + suffix).to_dict("records"))
    config = json.loads((target / CONFIG_JSON).read_text())
    config["resolved_models"] = [m + suffix for m in config["resolved_models"]]
    (target / CONFIG_JSON).write_text(json.dumps(config))
    return target


def test_compare_two_sweeps_and_refuse_other_data(sweep: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    copy = _renamed_copy(sweep, tmp_path / "copy", "_b")
    out = tmp_path / "out"
    argv = ["--compare", str(sweep), str(copy), "--output_dir", str(out), "--baseline", "unet3d_stride_xs_b"]
    assert evaluate_experiment.main(argv) == 0
    models = {"unet3d_xs", "unet3d_stride_xs", "unet3d_xs_b", "unet3d_stride_xs_b"}
    _check_files(out, models)
    tests = pd.read_csv(out / STATISTICAL_TESTS_CSV)
    assert (tests["baseline"] == "unet3d_stride_xs_b").all()
    assert len(tests[(tests["comparison"] == "pairwise") & (tests["metric"] == "dice_wt")]) == 6
    assert json.loads((out / CONFIG_JSON).read_text())["bootstrap_resamples"] == 200  # the first folder's
    other = _renamed_copy(sweep, tmp_path / "other", "_c")
    config = json.loads((other / CONFIG_JSON).read_text())
    (other / CONFIG_JSON).write_text(json.dumps(dict(config, synthetic_seed=7)))
    assert evaluate_experiment.main(["--compare", str(sweep), str(other), "--output_dir", str(tmp_path / "x")]) == 2
    assert "different data" in caplog.text and "--synthetic_seed: 0 vs 7" in caplog.text
    (other / CONFIG_JSON).write_text(json.dumps(config))
    splits = json.loads((other / SPLITS_JSON).read_text())
    (other / SPLITS_JSON).write_text(json.dumps(dict(splits, test=["BraTS2021_00099"])))
    assert evaluate_experiment.main(["--compare", str(sweep), str(other), "--output_dir", str(tmp_path / "x")]) == 2
    assert "different test cases" in caplog.text and not (tmp_path / "x").exists()
