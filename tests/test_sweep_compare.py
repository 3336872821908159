"""evaluate_experiment.py --compare on hand-made sweep folders (job folders as the runner writes them): the union of
the runs, the statistics flags from the first folder or the command line, and every refusal (other data, other
test cases, a run in two folders, a folder given twice, the output folder among the inputs, flags that do not
apply)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import evaluate_experiment
from engine.evaluate.compare import compare_sweeps
from sweep_helpers import TEST_CASES, make_sweep
from utils.schema import (COMPARISON_CSV, CONFIG_JSON, PER_CASE_CSV, RANKING_CSV, RUNS_CSV, SPLITS_JSON,
                          STATISTICAL_TESTS_CSV)

def _main(*argv: object) -> int:
    return evaluate_experiment.main([str(a) for a in argv])


def test_compare_reduces_the_union_of_the_runs(tmp_path: Path) -> None:
    one = make_sweep(tmp_path / "one", {"a": 0.5, "b": 0.6}, bootstrap_resamples=150, stats_seed=4)
    two = make_sweep(tmp_path / "two", {"c": 0.8}, with_jobs=False)  # an older folder: its sweep tables are read
    out = tmp_path / "out"
    assert _main("--compare", one, two, "--output_dir", out) == 0
    runs = pd.read_csv(out / RUNS_CSV)
    assert runs["model"].tolist() == ["a", "a", "b", "b", "c", "c"]
    assert len(pd.read_csv(out / PER_CASE_CSV)) == 6 * len(TEST_CASES)
    comparison = pd.read_csv(out / COMPARISON_CSV)
    assert comparison["model"].tolist() == ["a", "b", "c"] and comparison["dice_wt_oof_mean"].tolist() == \
        pytest.approx([0.5, 0.6, 0.8])
    tests = pd.read_csv(out / STATISTICAL_TESTS_CSV)
    assert (tests["baseline"] == "a").all()  # the first model of the first folder
    pairwise = tests[(tests["comparison"] == "pairwise") & (tests["metric"] == "dice_wt")]
    assert list(zip(pairwise["model_a"], pairwise["model_b"])) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairwise["enough"].all() and (pairwise["p_holm"] < 0.05).all()  # 8 cases, clear differences
    ranking = pd.read_csv(out / RANKING_CSV)
    assert ranking["model"].tolist() == ["c", "b", "a"] and (ranking["n_resamples"] == 150).all()
    record = json.loads((out / CONFIG_JSON).read_text())
    assert (record["stats_seed"], record["bootstrap_resamples"]) == (4, 150)  # the first folder's
    assert [s["results_dir"] for s in record["compared_sweeps"]] == [str(one), str(two)]
    assert json.loads((out / SPLITS_JSON).read_text())["test"] == TEST_CASES
    assert (out / "significance_heatmap.png").is_file() and (out / "ranking_chart.png").is_file()
    assert _main("--compare", one, two, "--output_dir", out, "--baseline", "b", "--bootstrap_resamples", 100) == 0
    assert (pd.read_csv(out / STATISTICAL_TESTS_CSV)["baseline"] == "b").all()
    assert (pd.read_csv(out / RANKING_CSV)["n_resamples"] == 100).all()


def test_compare_refuses_folders_that_do_not_belong_together(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one = make_sweep(tmp_path / "one", {"a": 0.5})
    out = tmp_path / "out"
    cases = [
        (make_sweep(tmp_path / "size", {"b": 0.6}, synthetic_size=[32, 32, 32]), "--synthetic_size: [64, 64, 64] vs"),
        (make_sweep(tmp_path / "cases", {"b": 0.6}, test=TEST_CASES[:-1] + ["z"]), "different test cases"),
        (make_sweep(tmp_path / "same_run", {"a": 0.6}, seeds=(2, 3)), "seed 2 is in both"),
        (one, "is given twice"),
    ]
    for other, message in cases:
        caplog.clear()
        assert _main("--compare", one, other, "--output_dir", out) == 2, message
        assert message in caplog.text
    make_sweep(tmp_path / "cache", {"b": 0.6}, cache_dir=str(tmp_path / "elsewhere"))  # where the cache is: fine
    assert not out.exists()
    assert compare_sweeps([one, tmp_path / "cache"], out)
    for argv, message in (
        (["--compare", one, tmp_path / "cache", "--output_dir", one], "is one of the --compare folders"),
        (["--compare", one, tmp_path / "missing", "--output_dir", out], "is not a folder"),
        (["--compare", one, "--output_dir", tmp_path / "x", "--bootstrap_resamples", 10], "--bootstrap_resamples"),
        (["--compare", one], "--compare needs --output_dir"),
        (["--compare", one, "--output_dir", out, "--models", "a"], "do not apply to --compare"),
        (["--results_dir", one, "--aggregate", "--baseline", "a"], "apply to --compare only"),
    ):
        caplog.clear()
        assert _main(*argv) == 2, message
        assert message in caplog.text
    (tmp_path / "cache" / SPLITS_JSON).unlink()
    assert _main("--compare", one, tmp_path / "cache", "--output_dir", out) == 2
    assert f"has no {SPLITS_JSON}" in caplog.text
