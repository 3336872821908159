"""Flags of the comparison statistics: the baseline model, the bootstrap seed and the number of resamples.

They change the statistics only (``model_comparison.csv`` intervals, ``statistical_tests.csv``,
``ranking.csv``), which the reducer recomputes from the job folders, so a resumed sweep may change them
(``engine.options.resume_check.FREE_FLAGS``). The sweep records them in ``config.json``; the reducer and
``evaluate_experiment.py --compare`` read them back with :func:`stats_options_from_config` (the latest start's
value wins, defaults when a record has none).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

MIN_RESAMPLES = 100
_WILDCARDS = "*?[]"


@dataclass
class StatsOptions:
    """Settings of the comparison statistics.

    Attributes:
        baseline: model every other model is tested against (None: the first model of the sweep, in
            ``resolved_models`` order, else the first model of the runs table).
        stats_seed: seed of every bootstrap (``np.random.default_rng(stats_seed)``; the same seed for each
            interval, so each is reproducible on its own).
        bootstrap_resamples: resamples of every bootstrap (percentile intervals, ranking stability), >= 100.
    """

    baseline: str | None = None
    stats_seed: int = 0
    bootstrap_resamples: int = 1000

    def stats_errors(self) -> list[str]:
        """One message per statistics flag outside its range (empty when all are valid)."""
        errors = []
        if self.bootstrap_resamples < MIN_RESAMPLES:
            errors.append(f"--bootstrap_resamples must be >= {MIN_RESAMPLES}, got {self.bootstrap_resamples}")
        if self.stats_seed < 0:
            errors.append(f"--stats_seed must be >= 0, got {self.stats_seed}")
        if self.baseline is not None and (not self.baseline.strip() or any(c in self.baseline for c in _WILDCARDS)):
            errors.append(f"--baseline must be one model name without wildcards, got {self.baseline!r}")
        return errors

    def validate_stats(self) -> None:
        """Raise ``ValueError`` (naming the flag) for the first statistics flag outside its range."""
        for message in self.stats_errors():
            raise ValueError(message)


STATS_FIELDS = tuple(f.name for f in fields(StatsOptions))


def add_stats_arguments(parser: argparse.ArgumentParser, *, recorded: bool = False) -> argparse._ArgumentGroup:
    """The ``statistics`` argument group. ``recorded=True`` (``evaluate_experiment.py --compare``): every default is
    None, meaning the value recorded in the first folder's config.json, and the help says so."""
    g = parser.add_argument_group("statistics")
    then = "the first folder's recorded value, else " if recorded else ""
    g.add_argument("--baseline", default=None, metavar="NAME",
                   help="model the others are tested against in statistical_tests.csv (default: "
                        f"{then}none: the first model of the sweep)")
    g.add_argument("--stats_seed", type=int, default=0, metavar="SEED",
                   help=f"seed of the bootstrap confidence intervals and rank stability (default: {then}0)")
    g.add_argument("--bootstrap_resamples", type=int, default=1000, metavar="N",
                   help=f"bootstrap resamples of every interval and of the rank stability, >= {MIN_RESAMPLES} "
                        f"(default: {then}1000)")
    if recorded:
        parser.set_defaults(**{a.dest: None for a in g._group_actions})
    return g


def stats_options_from_config(config: dict[str, Any] | None, **overrides: Any) -> StatsOptions:
    """The statistics flags of a sweep's ``config.json`` record: the first start's values, then each later start's
    changes (``starts[i]["changed"]``, in order), then the non-None ``overrides``; defaults for what none records.

    Raises:
        ValueError: a resulting value is out of range (naming the flag).
    """
    values: dict[str, Any] = {}
    record = config or {}
    for key in STATS_FIELDS:
        if key in record:
            values[key] = record[key]
    for start in record.get("starts") or []:
        for key, value in (start.get("changed") or {}).items():
            if key in STATS_FIELDS:
                values[key] = value
    values.update({k: v for k, v in overrides.items() if k in STATS_FIELDS and v is not None})
    options = StatsOptions(**values)
    options.validate_stats()
    return options
