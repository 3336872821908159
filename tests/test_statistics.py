"""metrics.statistics: bootstrap CIs against scipy, variance shares on synthetic grids, Wilcoxon against
scipy plus the rank-biserial and the `enough` rule, Holm on a hand example, paired and per-scan bootstraps."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from metrics.statistics import (
    bootstrap_ci, bootstrap_scans_ci, holm, min_exact_wilcoxon_p, paired_bootstrap_diff_ci,
    paired_wilcoxon, rank_biserial, summarise_runs, variance_shares,
)


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_bootstrap_ci_equals_scipy_percentile_with_the_same_rng() -> None:
    x = np.random.default_rng(3).normal(0.8, 0.05, size=12)
    got = bootstrap_ci(np.append(x, np.nan), n_resamples=500, confidence=0.9, seed=7)
    ref = stats.bootstrap((x,), np.mean, n_resamples=500, confidence_level=0.9, method="percentile",
                          rng=np.random.default_rng(7)).confidence_interval
    assert got == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert got[0] < x.mean() < got[1]


def test_bootstrap_ci_small_and_constant_inputs() -> None:
    assert np.isnan(bootstrap_ci([0.5, np.nan])).all()
    assert np.isnan(bootstrap_ci([])).all()
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)


def test_summarise_runs() -> None:
    s = summarise_runs([1.0, 2.0, 3.0, np.nan])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)  # ddof=1
    assert s["ci_low"] <= 2.0 <= s["ci_high"]
    one = summarise_runs([0.7])
    assert one["n"] == 1 and one["mean"] == 0.7 and np.isnan([one["std"], one["ci_low"], one["ci_high"]]).all()
    assert summarise_runs([np.nan])["n"] == 0


def _grid(seed_sd: float, fold_sd: float, noise_sd: float, *, n_seeds=5, n_folds=5, rs=0) -> pd.DataFrame:
    rng = np.random.default_rng(rs)
    s = rng.normal(0, seed_sd, n_seeds)
    f = rng.normal(0, fold_sd, n_folds)
    rows = [{"seed": i, "fold": j, "dice": 0.8 + s[i] + f[j] + rng.normal(0, noise_sd)}
            for i in range(n_seeds) for j in range(n_folds)]
    return pd.DataFrame(rows)


def test_variance_shares_seed_dominates_and_fold_dominates() -> None:
    seed_dom = variance_shares(_grid(0.1, 0.005, 0.005), "dice")
    assert seed_dom["seed"] > 0.8 and seed_dom["fold"] < 0.1
    fold_dom = variance_shares(_grid(0.005, 0.1, 0.005), "dice")
    assert fold_dom["fold"] > 0.8 and fold_dom["seed"] < 0.1
    for sh in (seed_dom, fold_dom):
        assert 0 <= sh["seed"] <= 1 and 0 <= sh["fold"] <= 1
        assert sh["seed"] + sh["fold"] + sh["residual"] == pytest.approx(1.0)
        assert (sh["n_seeds"], sh["n_folds"]) == (5, 5)


def test_variance_shares_estimator_by_hand() -> None:
    # y = seed effect [0, 2] + fold effect [0, 1, 2], no residual: MS_seed = 3*2 = 6, MS_fold = 2*1 = 2,
    # MS_res = 0 -> sigma2_seed = 6/3 = 2, sigma2_fold = 2/2 = 1 -> shares 2/3, 1/3, 0.
    df = pd.DataFrame([{"seed": s, "fold": f, "v": 2 * s + f} for s in (0, 1) for f in (0, 1, 2)])
    sh = variance_shares(df, "v")
    assert (sh["seed"], sh["fold"], sh["residual"]) == pytest.approx((2 / 3, 1 / 3, 0.0))


def test_variance_shares_constant_single_axis_and_holdout() -> None:
    const = pd.DataFrame([{"seed": s, "fold": f, "v": 0.5} for s in range(3) for f in range(3)])
    assert [variance_shares(const, "v")[k] for k in ("seed", "fold", "residual")] == [0.0, 0.0, 0.0]
    holdout = pd.DataFrame({"seed": [1, 2, 3], "fold": [np.nan] * 3, "v": [0.7, 0.8, 0.75]})
    sh = variance_shares(holdout, "v")
    assert sh["seed"] == 1.0 and np.isnan(sh["fold"]) and np.isnan(sh["residual"]) and sh["n_folds"] == 1
    one_seed = pd.DataFrame({"seed": [1, 1, 1], "fold": [0, 1, 2], "v": [0.7, 0.8, 0.75]})
    sh = variance_shares(one_seed, "v")
    assert sh["fold"] == 1.0 and np.isnan(sh["seed"])
    assert np.isnan([variance_shares(holdout.iloc[:1], "v")[k] for k in ("seed", "fold")]).all()


def test_variance_shares_incomplete_grid_drops_the_emptiest_line() -> None:
    df = _grid(0.1, 0.005, 0.005, n_seeds=4, n_folds=3)
    df.loc[(df.seed == 3) & (df.fold < 2), "dice"] = np.nan  # seed 3 lost two of its three folds
    sh = variance_shares(df, "dice")
    assert (sh["n_seeds"], sh["n_folds"]) == (3, 3) and sh["seed"] > 0.8


def test_wilcoxon_matches_scipy_and_rank_biserial_by_hand() -> None:
    a = np.array([1.0, 2.0, -3.0, 4.0, 5.0, 6.0, np.nan])
    b = np.zeros(7)
    res = paired_wilcoxon(a, b)
    ref = stats.wilcoxon(a[:6], zero_method="wilcox")
    assert res["p"] == pytest.approx(ref.pvalue) and res["statistic"] == pytest.approx(ref.statistic)
    assert res["n"] == 6 and res["enough"] and res["note"] == ""
    assert res["rank_biserial"] == pytest.approx((18 - 3) / 21)  # ranks 1..6: R+ = 18, R- = 3
    assert rank_biserial([1, 2, -3, 4, 5]) == pytest.approx((12 - 3) / 15)
    assert rank_biserial([1, -1, 0, 2]) == pytest.approx((1.5 + 3 - 1.5) / 6)  # tie -> average ranks, zero dropped


def test_wilcoxon_enough_rule_and_all_zero() -> None:
    assert min_exact_wilcoxon_p(5) == pytest.approx(0.0625) and min_exact_wilcoxon_p(6) == pytest.approx(0.03125)
    five = paired_wilcoxon([1.0, 2, 3, 4, 5], [0.0] * 5)
    assert five["n"] == 5 and not five["enough"] and five["note"] == "too few cases to reach p < 0.05"
    assert paired_wilcoxon([1.0, 2, 3, 4, 5, 6], [0.0] * 6)["enough"]
    with_zero = paired_wilcoxon([0.0, 1, 2, 3, 4, 5], [0.0] * 6)  # the zero is dropped: 5 effective pairs
    assert with_zero["n"] == 6 and with_zero["n_nonzero"] == 5 and not with_zero["enough"]
    zeros = paired_wilcoxon([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert zeros["p"] == 1.0 and zeros["statistic"] == 0.0 and zeros["rank_biserial"] == 0.0
    empty = paired_wilcoxon([np.nan], [1.0])
    assert empty["n"] == 0 and np.isnan(empty["p"]) and not empty["enough"]
    with pytest.raises(ValueError):
        paired_wilcoxon([1.0, 2.0], [1.0])


def test_holm_hand_example_and_nans() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.01, np.nan, 0.04, 0.03, 0.005, 0.9])
    # m = 5: sorted 0.005*5, 0.01*4, 0.03*3, 0.04*2 -> max 0.09, 0.9*1 -> 0.9
    assert np.isnan(got[1])
    assert got[[0, 2, 3, 4, 5]] == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]).size == 0


def test_holm_against_statsmodels_if_installed() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(1).uniform(0, 0.2, 9)
    assert holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1])


def test_paired_bootstrap_contains_the_true_difference() -> None:
    rng = np.random.default_rng(5)
    b = rng.normal(0.7, 0.1, 40)
    a = b + 0.05 + rng.normal(0, 0.01, 40)
    mean, low, high = paired_bootstrap_diff_ci(a, b, seed=1)
    assert low < 0.05 < high and low < mean < high and high - low < 0.02
    d = a - b
    ref = stats.bootstrap((d,), np.mean, n_resamples=1000, method="percentile",
                          rng=np.random.default_rng(1)).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))


def test_bootstrap_scans_ci_resamples_scans_and_drops_nan() -> None:
    items = [{"hit": h} for h in (1, 0, 1, 1, 0, 1, 1, 1)]
    low, high = bootstrap_scans_ci(items, lambda xs: float(np.mean([x["hit"] for x in xs])), n_resamples=300)
    assert 0 <= low < 0.75 < high <= 1
    same = bootstrap_scans_ci(items, lambda xs: float(np.mean([x["hit"] for x in xs])), n_resamples=300)
    assert same == (low, high)  # seeded
    # a metric undefined when the resample holds no positive scan -> NaN resamples are dropped
    sparse = [1] + [0] * 5
    low, high = bootstrap_scans_ci(sparse, lambda xs: float(sum(xs)) if sum(xs) else float("nan"))
    assert low >= 1.0 and np.isfinite(high)
    assert np.isnan(bootstrap_scans_ci([1], lambda xs: 1.0)).all()
