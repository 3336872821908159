"""Statistics for comparing runs and models: bootstrap CIs, variance shares, paired tests, Holm.

Conventions shared by every function here (each docstring repeats the ones it uses):

- NaN: NaN values are dropped before any computation (paired inputs: a pair with a NaN on either side
  is dropped); every result reports ``n``, the count of values (or pairs) actually used.
- Bootstrap: percentile bootstrap (the CI is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
  quantiles of the resampled statistic, ``np.percentile`` method "linear", as scipy computes it);
  resampling with replacement from a ``np.random.default_rng(seed)`` Generator, never the global RNG;
  fewer than 2 values -> ``(nan, nan)``.
- Standard deviations use ``ddof=1`` (NaN for a single value).
- Nothing here prints; notes go to ``logging`` or into the returned dict.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

logger = logging.getLogger(__name__)

_NOT_ENOUGH_NOTE = "too few cases to reach p < 0.05"


def _finite_1d(values: Any) -> np.ndarray:
    """``values`` as a float 1-D array with NaNs dropped (infinities are kept)."""
    arr = np.asarray(values, dtype=float).ravel()
    return arr[~np.isnan(arr)]


def bootstrap_ci(
    values: Any, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    - NaNs are dropped first; fewer than 2 remaining values -> ``(nan, nan)``.
    - Computed by ``scipy.stats.bootstrap(method="percentile")`` with ``rng=np.random.default_rng(seed)``,
      ``n_resamples`` resamples with replacement, two-sided at ``confidence``; so it equals scipy's result
      on the same data and seed exactly. Constant data -> ``(c, c)``.
    """
    x = _finite_1d(values)
    if x.size < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):  # scipy's answer too, without its degenerate-data path
        return float(x[0]), float(x[0])
    res = stats.bootstrap(
        (x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        vectorized=True, rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise_runs(
    values: Any, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean, std, bootstrap CI and count of run values (e.g. one metric over seeds x folds).

    - NaNs dropped; ``n`` = number of non-NaN values; no values -> every statistic NaN, ``n`` 0.
    - ``std`` uses ``ddof=1``; NaN for a single value.
    - ``ci_low``/``ci_high``: ``bootstrap_ci`` (percentile bootstrap of the mean, seeded); NaN below 2 values.
    """
    x = _finite_1d(values)
    mean = float(np.mean(x)) if x.size else float("nan")
    std = float(np.std(x, ddof=1)) if x.size >= 2 else float("nan")
    low, high = bootstrap_ci(x, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {"mean": mean, "std": std, "ci_low": low, "ci_high": high, "n": int(x.size)}


def _complete_grid(grid: pd.DataFrame) -> pd.DataFrame:
    """Drop seeds (rows) or folds (columns) until no cell is missing: each step drops the line with the
    largest share of missing cells (ties: a seed first). Logs what it dropped."""
    while grid.size and grid.isna().to_numpy().any():
        row_share = grid.isna().mean(axis=1)
        col_share = grid.isna().mean(axis=0)
        if row_share.max() >= col_share.max():
            drop = row_share.idxmax()
            logger.warning("variance_shares: seed %r has missing runs; left out of the grid", drop)
            grid = grid.drop(index=drop)
        else:
            drop = col_share.idxmax()
            logger.warning("variance_shares: fold %r has missing runs; left out of the grid", drop)
            grid = grid.drop(columns=drop)
    return grid


def _anova_components(y: np.ndarray) -> tuple[float, float, float]:
    """ANOVA (method-of-moments) variance components of a complete I seeds x J folds grid, I, J >= 2.

    Model ``y_ij = mu + s_i + f_j + e_ij`` (one run per cell, so the seed x fold interaction is in e):
    MS_seed = J * sum_i (ybar_i. - ybar..)^2 / (I - 1), MS_fold = I * sum_j (ybar_.j - ybar..)^2 / (J - 1),
    MS_res = SS_res / ((I - 1)(J - 1)); sigma2_seed = max(0, (MS_seed - MS_res) / J),
    sigma2_fold = max(0, (MS_fold - MS_res) / I), sigma2_res = MS_res.
    """
    n_seeds, n_folds = y.shape
    grand = y.mean()
    seed_means = y.mean(axis=1)
    fold_means = y.mean(axis=0)
    ms_seed = n_folds * np.sum((seed_means - grand) ** 2) / (n_seeds - 1)
    ms_fold = n_seeds * np.sum((fold_means - grand) ** 2) / (n_folds - 1)
    resid = y - seed_means[:, None] - fold_means[None, :] + grand
    ms_res = np.sum(resid**2) / ((n_seeds - 1) * (n_folds - 1))
    return max(0.0, (ms_seed - ms_res) / n_folds), max(0.0, (ms_fold - ms_res) / n_seeds), float(ms_res)


def variance_shares(
    frame: pd.DataFrame, value: str, seed_col: str = "seed", fold_col: str = "fold"
) -> dict[str, float]:
    """Share of the variance of one model's run values due to seeds, to folds, and left over.

    - Grid: rows with NaN ``value`` are dropped; runs with NaN ``fold`` (holdout) are one fold; several runs
      in one seed x fold cell are averaged; an incomplete grid is cut down to a complete one by dropping the
      seed or fold with the largest share of missing cells (logged).
    - Estimator (seeds >= 2 and folds >= 2): two-way random-effects ANOVA without interaction, one value per
      cell, method of moments (see ``_anova_components``), negative components clipped to 0. Shares =
      component / (sigma2_seed + sigma2_fold + sigma2_res), so each lies in [0, 1] and seed + fold <= 1.
    - One fold (e.g. holdout only), >= 2 seeds: ``fold`` and ``residual`` NaN (not estimable), ``seed`` 1.0
      (all observed variance is between seeds; it includes the seed x fold interaction). One seed, >= 2
      folds: symmetric (``seed`` and ``residual`` NaN, ``fold`` 1.0). One run: all NaN.
    - Zero total variance (constant values): every estimable share 0.0 (nothing to explain).
    - Returns ``seed``, ``fold``, ``residual`` (shares), ``n_seeds``, ``n_folds`` (grid actually used).
    """
    data = frame[[seed_col, fold_col, value]].copy()
    data = data[data[value].notna()]
    data[fold_col] = data[fold_col].astype(object).where(data[fold_col].notna(), "holdout")
    grid = _complete_grid(data.pivot_table(index=seed_col, columns=fold_col, values=value, aggfunc="mean"))
    n_seeds, n_folds = grid.shape
    nan = float("nan")
    out = {"seed": nan, "fold": nan, "residual": nan, "n_seeds": float(n_seeds), "n_folds": float(n_folds)}
    y = grid.to_numpy(dtype=float)
    if n_seeds >= 2 and n_folds >= 2:
        comps = _anova_components(y)
        total = sum(comps)
        shares = [c / total if total > 0 else 0.0 for c in comps]
        out.update(seed=shares[0], fold=shares[1], residual=shares[2])
    elif n_seeds >= 2 or n_folds >= 2:
        share = 1.0 if np.var(y) > 0 else 0.0
        out["seed" if n_seeds >= 2 else "fold"] = share
    return out


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of the pairs with no NaN on either side."""
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired inputs differ in length: {x.size} vs {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def min_exact_wilcoxon_p(n: int) -> float:
    """Smallest two-sided exact Wilcoxon signed-rank p-value with ``n`` non-zero differences: all signs
    alike is 1 of the 2**n equally likely sign patterns, doubled for two sides, i.e. ``min(1, 2**(1-n))``."""
    return 1.0 if n <= 0 else min(1.0, 2.0 ** (1 - n))


def rank_biserial(d: Any) -> float:
    """Matched-pairs rank-biserial correlation (Kerby's simple difference formula) of differences ``d``.

    ``(R+ - R-) / (R+ + R-)`` with ranks of ``|d|`` (``scipy.stats.rankdata`` "average" for ties) over the
    non-zero differences (zeros dropped, as the "wilcox" zero method does); NaNs dropped; no non-zero
    difference -> 0.0 when there was at least one difference (no pair favours either side), NaN when none.
    """
    x = _finite_1d(d)
    nz = x[x != 0]
    if nz.size == 0:
        return 0.0 if x.size else float("nan")
    ranks = stats.rankdata(np.abs(nz), method="average")
    return float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum())


def paired_wilcoxon(a: Any, b: Any) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired values of the same cases (differences ``a - b``).

    - Pairs with a NaN on either side dropped; ``n`` = pairs used, ``n_nonzero`` = pairs with d != 0.
    - ``scipy.stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")``: zero
      differences are discarded; ``statistic`` is scipy's (min(R+, R-) for two-sided), ``p`` its p-value.
    - All differences zero (or none non-zero): ``p`` 1.0, ``statistic`` 0.0, ``rank_biserial`` 0.0 (scipy
      would warn there). No pairs at all: ``p``, ``statistic`` and ``rank_biserial`` NaN.
    - ``rank_biserial``: see ``rank_biserial`` (positive: ``a`` tends to exceed ``b``).
    - ``enough``: whether the smallest possible two-sided exact p-value with ``n_nonzero`` differences,
      ``2**(1 - n_nonzero)``, is below 0.05 (true from 6 non-zero pairs). When False, ``note`` says
      "too few cases to reach p < 0.05" and callers must not report ``p`` as evidence; otherwise ``note`` "".
    """
    x, y = _paired(a, b)
    d = x - y
    n_nonzero = int(np.count_nonzero(d))
    enough = bool(min_exact_wilcoxon_p(n_nonzero) < 0.05)
    out: dict[str, Any] = {
        "n": int(d.size), "n_nonzero": n_nonzero, "enough": enough,
        "note": "" if enough else _NOT_ENOUGH_NOTE, "rank_biserial": rank_biserial(d),
    }
    if d.size == 0:
        out.update(p=float("nan"), statistic=float("nan"))
    elif n_nonzero == 0:
        out.update(p=1.0, statistic=0.0)
    else:
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
        out.update(p=float(res.pvalue), statistic=float(res.statistic))
    return out


def holm(p_values: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Step-down: with the m non-NaN p-values sorted ascending p_(1) <= ... <= p_(m),
    adj_(k) = max_{j <= k} min(1, (m - j + 1) * p_(j)) (monotone, capped at 1). NaN entries stay NaN and
    do not count in m. Hand-written because SciPy has no Holm (``false_discovery_control`` is BH/BY);
    matches ``statsmodels.stats.multitest.multipletests(method="holm")``.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(stepped)
    return out


def paired_bootstrap_diff_ci(
    a: Any, b: Any, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean difference ``mean(a - b)`` over paired cases and its percentile bootstrap CI.

    - Pairs with a NaN on either side dropped; no pairs -> all NaN; fewer than 2 pairs -> CI ``(nan, nan)``.
    - Cases (pairs) are resampled with replacement; since the mean of resampled ``a`` minus the mean of
      resampled ``b`` is the mean of the resampled differences, this is ``bootstrap_ci`` of ``a - b``
      (``scipy.stats.bootstrap``, method "percentile", ``rng=np.random.default_rng(seed)``).
    - Returns ``(mean_diff, ci_low, ci_high)``.
    """
    x, y = _paired(a, b)
    d = x - y
    mean = float(np.mean(d)) if d.size else float("nan")
    low, high = bootstrap_ci(d, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return mean, low, high


def bootstrap_scans_ci(
    per_scan_items: Sequence[Any],
    metric_fn: Callable[[list[Any]], float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of a dataset-level metric (e.g. AP or FROC computed over scans).

    - Each resample draws ``len(per_scan_items)`` scans with replacement (``np.random.default_rng(seed)``;
      a scan drawn twice appears twice) and recomputes ``metric_fn(list_of_items)``.
    - Resamples whose metric is NaN (e.g. no lesion drawn) are dropped (count logged); the CI is the
      percentile interval (``np.percentile`` "linear", as scipy) of the rest; fewer than 2 scans or fewer
      than 2 finite resamples -> ``(nan, nan)``.
    - Hand-rolled because ``scipy.stats.bootstrap`` needs numeric samples and keeps NaN resamples.
    """
    items = list(per_scan_items)
    n = len(items)
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    values = np.array([metric_fn([items[i] for i in row]) for row in draws], dtype=float)
    finite = values[~np.isnan(values)]
    if finite.size < n_resamples:
        logger.info("bootstrap_scans_ci: %d of %d resamples gave NaN and were dropped",
                    n_resamples - finite.size, n_resamples)
    if finite.size < 2:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)
