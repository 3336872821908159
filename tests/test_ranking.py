"""metrics.ranking: rank-then-aggregate on a hand example (ties, NaN, a missing row), rank stability,
and the Pareto front."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from metrics.ranking import bootstrap_rank_stability, pareto_front, rank_then_aggregate


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _hand_frame() -> pd.DataFrame:
    rows = [
        # case c1: dice A .9 > B .8 = C .8 -> ranks 1, 2.5, 2.5 ; hd95 A 2 < B 3 < C 4 -> 1, 2, 3
        ("c1", "A", 0.9, 2.0), ("c1", "B", 0.8, 3.0), ("c1", "C", 0.8, 4.0),
        # case c2: dice C .9 > A .7, B NaN -> C 1, A 2, B 3 ; hd95 B 1 < C 5, A NaN -> B 1, C 2, A 3
        ("c2", "A", 0.7, np.nan), ("c2", "B", np.nan, 1.0), ("c2", "C", 0.9, 5.0),
        # case c3: C has no row; dice A .6 < B .7 -> B 1, A 2, C 3 ; hd95 A 1 = B 1 -> 1.5, 1.5, C 3
        ("c3", "A", 0.6, 1.0), ("c3", "B", 0.7, 1.0),
        # case c4: dice all NaN except A -> A 1, B and C share (2+3)/2 = 2.5 ; hd95 A inf < B NaN, C NaN
        ("c4", "A", 0.5, np.inf), ("c4", "B", np.nan, np.nan), ("c4", "C", np.nan, np.nan),
    ]
    return pd.DataFrame(rows, columns=["case_id", "model", "dice", "hd95"])


def test_rank_then_aggregate_hand_example() -> None:
    table = rank_then_aggregate(_hand_frame(), metrics={"dice": "max", "hd95": "min"}).set_index("model")
    expected_dice = {"A": (1 + 2 + 2 + 1) / 4, "B": (2.5 + 3 + 1 + 2.5) / 4, "C": (2.5 + 1 + 3 + 2.5) / 4}
    expected_hd = {"A": (1 + 3 + 1.5 + 1) / 4, "B": (2 + 1 + 1.5 + 2.5) / 4, "C": (3 + 2 + 3 + 2.5) / 4}
    for m in "ABC":
        assert table.loc[m, "rank_dice"] == pytest.approx(expected_dice[m])
        assert table.loc[m, "rank_hd95"] == pytest.approx(expected_hd[m])
        assert table.loc[m, "mean_rank"] == pytest.approx((expected_dice[m] + expected_hd[m]) / 2)
    # mean ranks: A 1.5625, B 1.9375, C 2.4375
    assert table["final_rank"].to_dict() == {"A": 1, "B": 2, "C": 3}
    assert (table["n_cases"] == 4).all()


def test_rank_then_aggregate_tied_models_share_min_final_rank() -> None:
    df = pd.DataFrame({"case_id": ["a", "a", "a", "b", "b", "b"], "model": list("XYZXYZ"),
                       "dice": [0.9, 0.8, 0.1, 0.8, 0.9, 0.1]})
    table = rank_then_aggregate(df, metrics={"dice": "max"})
    assert table["model"].tolist() == ["X", "Y", "Z"] and table["final_rank"].tolist() == [1, 1, 3]
    assert table["mean_rank"].tolist() == [1.5, 1.5, 3.0]


def test_rank_then_aggregate_averages_repeated_rows_and_checks_directions() -> None:
    df = pd.DataFrame({"case_id": ["a"] * 4, "model": ["X", "X", "Y", "Y"], "dice": [0.9, 0.5, 0.6, 0.6]})
    table = rank_then_aggregate(df, metrics={"dice": "max"})  # X mean 0.7 > Y 0.6
    assert table["model"].tolist() == ["X", "Y"]
    with pytest.raises(ValueError):
        rank_then_aggregate(df, metrics={"dice": "higher"})


def test_rank_stability_always_best_model() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for c in range(15):
        base = rng.uniform(0.3, 0.7)
        rows += [(f"c{c}", "best", base + 0.2), (f"c{c}", "mid", base + rng.uniform(-0.05, 0.05)),
                 (f"c{c}", "other", base + rng.uniform(-0.05, 0.05))]
    df = pd.DataFrame(rows, columns=["case_id", "model", "dice"])
    table = bootstrap_rank_stability(df, metrics={"dice": "max"}, n_resamples=200, seed=3).set_index("model")
    assert table.loc["best", "p_rank_1"] == 1.0 and table.loc["best", "p_keep_rank"] == 1.0
    assert table.loc["best", ["median_rank", "rank_ci_low", "rank_ci_high"]].tolist() == [1, 1, 1]
    probs = table[["p_rank_1", "p_rank_2", "p_rank_3"]]
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert table.loc["best", "full_rank"] == 1 and table.index[0] == "best"
    again = bootstrap_rank_stability(df, metrics={"dice": "max"}, n_resamples=200, seed=3).set_index("model")
    pd.testing.assert_frame_equal(table, again)


def test_rank_stability_matches_rerunning_the_ranking_on_a_resample() -> None:
    df = _hand_frame()
    metrics = {"dice": "max", "hd95": "min"}
    table = bootstrap_rank_stability(df, metrics=metrics, n_resamples=1, seed=11).set_index("model")
    cases = sorted(df["case_id"].unique())
    draw = np.random.default_rng(11).integers(0, len(cases), size=(1, len(cases)))[0]
    # relabel each drawn case so duplicates stay separate cases
    parts = [df[df.case_id == cases[i]].assign(case_id=f"d{k}") for k, i in enumerate(draw)]
    rerun = rank_then_aggregate(pd.concat(parts), metrics=metrics).set_index("model")["final_rank"]
    for m in "ABC":
        assert table.loc[m, f"p_rank_{rerun[m]}"] == 1.0


def test_pareto_front_dominated_tie_and_nan() -> None:
    df = pd.DataFrame({"dice": [0.90, 0.85, 0.80, 0.90, np.nan, 0.95, 0.80],
                       "params": [10.0, 5.0, 6.0, 10.0, 1.0, np.nan, 5.0]},
                      index=["big", "small", "dominated", "big_twin", "nan_acc", "nan_cost", "weak_small"])
    front = pareto_front(df, accuracy="dice", cost="params")
    assert front.to_dict() == {"big": True, "small": True, "dominated": False, "big_twin": True,
                               "nan_acc": False, "nan_cost": False, "weak_small": False}
    assert front.dtype == bool and front.index.equals(df.index)
