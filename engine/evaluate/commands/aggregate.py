"""``evaluate_experiment.py aggregate``: a sweep's tables rebuilt from its job folders, in the sweep folder."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.evaluate.commands import EvaluationOutput
from engine.options.evaluate_options import AggregateOptions
from engine.results.reducer import reduce_results
from utils.schema import JOBS_DIR

log = logging.getLogger("volbench.evaluate")


def run(options: AggregateOptions) -> EvaluationOutput:
    """Reduce the job folders of --results_dir into its sweep tables (its charts are redrawn from them).

    A folder without ``jobs/`` (made before per-job results) is left as it is, with a warning, and nothing is drawn.
    """
    results_dir = Path(options.results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"--results_dir {results_dir} is not a folder")
    if not (results_dir / JOBS_DIR).is_dir():
        log.warning("%s has no %s/ folder (made before per-job results): its tables are left as they are",
                    results_dir, JOBS_DIR)
        return EvaluationOutput(results_dir)
    for path in reduce_results(results_dir):
        log.info("written: %s", path)
    return EvaluationOutput(results_dir, charts_dir=results_dir)
