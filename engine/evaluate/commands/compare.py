"""``evaluate_experiment.py compare``: several sweeps as one (see ``engine.evaluate.compare``)."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.evaluate.commands import EvaluationOutput
from engine.evaluate.compare import compare_sweeps
from engine.options.evaluate_options import CompareOptions

log = logging.getLogger("volbench.evaluate")


def run(options: CompareOptions) -> EvaluationOutput:
    """The tables and statistics of the union of the folders' runs, in --output_dir (its charts are drawn from
    them); the statistics flags not given are the first folder's recorded values."""
    written = compare_sweeps(options.folders, options.output_dir, baseline=options.baseline,
                             stats_seed=options.stats_seed, bootstrap_resamples=options.bootstrap_resamples)
    for path in written:
        log.info("written: %s", path)
    return EvaluationOutput(Path(options.output_dir), charts_dir=Path(options.output_dir))
