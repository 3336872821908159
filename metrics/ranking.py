"""Ranking models over cases: rank-then-aggregate (as the BraTS challenges rank), its bootstrap stability,
and the accuracy/cost Pareto front.

Conventions:
- Per case and metric, models are ranked 1 = best (``metrics`` says "max" or "min" is better); ties get
  their mean rank (``scipy.stats.rankdata`` "average").
- A model with no row, or a NaN value, for a case ranks last; several such models share the mean of the
  last ranks (k finite values among M models: each NaN gets (k + 1 + M) / 2). Infinite values (an HD95 of
  inf) are real values and rank among the finite ones, ahead of NaN.
- Several rows of one model for one case (e.g. seeds or folds) are averaged (nanmean) before ranking.
- Mean ranks are averaged over cases and metrics; final ranks rank the mean ranks (1 = best, ties "min";
  mean ranks equal to 10 decimals count as tied, so floating-point noise never splits a tie).
- Resampling uses ``np.random.default_rng(seed)``, never the global RNG.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import stats

logger = logging.getLogger(__name__)

_TIE_DECIMALS = 10


def _check_directions(metrics: dict[str, str]) -> None:
    if not metrics:
        raise ValueError("metrics must name at least one column")
    bad = {k: v for k, v in metrics.items() if v not in ("max", "min")}
    if bad:
        raise ValueError(f"metric directions must be 'max' or 'min', got {bad}")


def _case_ranks(
    frame: pd.DataFrame, *, case_col: str, model_col: str, metrics: dict[str, str]
) -> tuple[list, list, np.ndarray]:
    """Per-case ranks: returns (models, cases, ranks) with ``ranks[metric, case, model]`` (1 = best)."""
    _check_directions(metrics)
    models = sorted(frame[model_col].unique().tolist(), key=str)
    cases = sorted(frame[case_col].unique().tolist(), key=str)
    n_models = len(models)
    out = np.empty((len(metrics), len(cases), n_models))
    for i, (col, direction) in enumerate(metrics.items()):
        grid = frame.pivot_table(index=case_col, columns=model_col, values=col, aggfunc="mean", dropna=False)
        vals = grid.reindex(index=cases, columns=models).to_numpy(dtype=float)
        oriented = -vals if direction == "max" else vals  # lower is better from here on
        ranks = stats.rankdata(oriented, method="average", axis=1, nan_policy="omit")
        n_finite = np.sum(~np.isnan(vals), axis=1, keepdims=True)
        last = (n_finite + 1 + n_models) / 2.0  # mean of the ranks k+1 .. M
        out[i] = np.where(np.isnan(vals), np.broadcast_to(last, vals.shape), ranks)
    return models, cases, out


def _final_ranks(mean_ranks: np.ndarray) -> np.ndarray:
    """Rank mean ranks along the last axis, 1 = best, ties "min" (after rounding to 10 decimals)."""
    return stats.rankdata(np.round(mean_ranks, _TIE_DECIMALS), method="min", axis=-1).astype(int)


def rank_then_aggregate(
    frame: pd.DataFrame, *, case_col: str = "case_id", model_col: str = "model", metrics: dict[str, str]
) -> pd.DataFrame:
    """Rank models per case and metric, then average the ranks ("rank then aggregate", BraTS style).

    - ``metrics`` maps column -> "max" (higher is better, e.g. Dice) or "min" (lower is better, e.g. HD95).
    - Per case and metric: rank 1 = best, ties "average"; a missing or NaN value ranks last, several share
      the mean of the last ranks; several rows per (case, model) are averaged first.
    - ``rank_<metric>``: a model's mean rank over cases for that metric; ``mean_rank``: mean over cases and
      metrics (every case has every metric, so it is the mean of the ``rank_<metric>``).
    - ``final_rank``: rank of ``mean_rank``, 1 = best, ties "min" (equal to 10 decimals = tied).
    - Returns one row per model (columns ``model_col``, ``mean_rank``, ``rank_<metric>``..., ``final_rank``,
      ``n_cases``), sorted by ``final_rank`` then model name.
    """
    models, cases, ranks = _case_ranks(frame, case_col=case_col, model_col=model_col, metrics=metrics)
    per_metric = ranks.mean(axis=1)  # (metric, model)
    mean_rank = ranks.mean(axis=(0, 1))
    table = pd.DataFrame({model_col: models, "mean_rank": mean_rank})
    for i, col in enumerate(metrics):
        table[f"rank_{col}"] = per_metric[i]
    table["final_rank"] = _final_ranks(mean_rank)
    table["n_cases"] = len(cases)
    return table.sort_values(["final_rank", model_col], kind="stable").reset_index(drop=True)


def bootstrap_rank_stability(
    frame: pd.DataFrame,
    *,
    metrics: dict[str, str],
    case_col: str = "case_id",
    model_col: str = "model",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """How stable ``rank_then_aggregate``'s final ranks are when the cases are resampled.

    - Each resample draws as many cases as there are, with replacement (``np.random.default_rng(seed)``),
      and recomputes the final ranks. Per-case ranks depend only on that case, so they are computed once
      and resampled (identical to rerunning ``rank_then_aggregate`` on the resampled frame).
    - Per model: ``p_rank_1`` ... ``p_rank_M`` = share of resamples at each final rank (ties "min", so some
      ranks may never occur); ``median_rank``, ``rank_ci_low``, ``rank_ci_high`` = empirical quantiles
      0.5, (1 - confidence) / 2, (1 + confidence) / 2 of its final rank with ``np.quantile`` method
      "inverted_cdf" (always a rank that occurred); ``full_rank`` = final rank on all cases; ``p_keep_rank``
      = share of resamples where the final rank equals ``full_rank``.
    - Returns one row per model, in ``rank_then_aggregate``'s order.
    """
    models, cases, ranks = _case_ranks(frame, case_col=case_col, model_col=model_col, metrics=metrics)
    per_case = ranks.mean(axis=0)  # (case, model): mean over metrics
    full = _final_ranks(per_case.mean(axis=0))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(cases), size=(n_resamples, len(cases)))
    boot = _final_ranks(per_case[draws].mean(axis=1))  # (resample, model)
    n_models = len(models)
    table = pd.DataFrame({model_col: models, "full_rank": full})
    for r in range(1, n_models + 1):
        table[f"p_rank_{r}"] = (boot == r).mean(axis=0)
    alpha = (1.0 - confidence) / 2.0
    q = np.quantile(boot, [0.5, alpha, 1.0 - alpha], axis=0, method="inverted_cdf")
    table["median_rank"], table["rank_ci_low"], table["rank_ci_high"] = q[0], q[1], q[2]
    table["p_keep_rank"] = (boot == full[None, :]).mean(axis=0)
    return table.sort_values(["full_rank", model_col], kind="stable").reset_index(drop=True)


def pareto_front(frame: pd.DataFrame, *, accuracy: str, cost: str) -> pd.Series:
    """``pd.Series[bool]`` (index of ``frame``): True for rows no other row dominates.

    Row j dominates row i when accuracy_j >= accuracy_i and cost_j <= cost_i with at least one strict
    (higher accuracy is better, lower cost is better). Rows equal in both are both on the front. A row with
    NaN accuracy or cost is never on the front and dominates nothing. O(n^2), meant for tens of models.
    """
    acc = frame[accuracy].to_numpy(dtype=float)
    cst = frame[cost].to_numpy(dtype=float)
    valid = ~(np.isnan(acc) | np.isnan(cst))
    ge = acc[:, None] >= acc[None, :]  # [j, i]: j at least as accurate as i
    le = cst[:, None] <= cst[None, :]
    strict = (acc[:, None] > acc[None, :]) | (cst[:, None] < cst[None, :])
    dominates = ge & le & strict & valid[:, None]
    dominated = dominates.any(axis=0)
    return pd.Series(valid & ~dominated, index=frame.index, name="pareto")
