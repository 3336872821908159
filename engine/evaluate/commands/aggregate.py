"""``evaluate_experiment.py aggregate``: a sweep's tables rebuilt from its job folders, in the sweep folder."""

from __future__ import annotations

import logging
from pathlib import Path

from dataio.splits import load_splits
from dataio.types import CachedCase
from engine.evaluate.checkpoints import read_json
from engine.evaluate.commands import EvaluationOutput
from engine.evaluate.ensemble import EnsembleInputs, add_ensemble_rows, check_ensembles
from engine.evaluate.external import add_external_rows, check_sources, parse_external
from engine.options.data_options import data_options_from_config
from engine.options.lesion_options import lesion_options_for_evaluation
from engine.options.evaluate_options import AggregateOptions
from engine.results.reducer import reduce_results
from engine.tasks import label_map_task
from utils.device import resolve_device
from utils.schema import CONFIG_JSON, JOBS_DIR, SPLITS_JSON

log = logging.getLogger("volbench.evaluate")


def run(options: AggregateOptions) -> EvaluationOutput:
    """Reduce the job folders of --results_dir into its sweep tables (its charts are redrawn from them), after
    scoring --external_predictions, --ensemble and --postprocess rows into job folders of their own.

    A folder without ``jobs/`` (made before per-job results) is left as it is, with a warning, and nothing is drawn.
    """
    results_dir = Path(options.results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"--results_dir {results_dir} is not a folder")
    if not (results_dir / JOBS_DIR).is_dir():
        log.warning("%s has no %s/ folder (made before per-job results): its tables are left as they are",
                    results_dir, JOBS_DIR)
        return EvaluationOutput(results_dir)
    if options.external_predictions:
        add_external(results_dir, options)
    if options.ensemble or options.postprocess:
        add_ensembles(results_dir, options)
    for path in reduce_results(results_dir):
        log.info("written: %s", path)
    return EvaluationOutput(results_dir, charts_dir=results_dir)


def add_external(results_dir: Path, options: AggregateOptions) -> None:
    """Score --external_predictions on the sweep's test cases (its recorded data and lesion flags) into job
    folders of --results_dir."""
    config = read_json(results_dir / CONFIG_JSON, "sweep config")
    sources = parse_external(options.external_predictions, options.external_label_map)
    test_ids = list(load_splits(results_dir / SPLITS_JSON)["test"])
    check_sources(sources, test_ids, list(config.get("resolved_models") or config.get("models") or []))
    data = data_options_from_config(config).load()
    by_id = {c.case_id: c for c in data.cases}
    missing = [c for c in test_ids if c not in by_id]
    if missing:
        raise ValueError(f"the test cases {missing[:10]} of {results_dir / SPLITS_JSON} are not in the recorded data")
    lesions = lesion_options_for_evaluation(options, config)
    add_external_rows(results_dir, sources, [by_id[c] for c in test_ids], label_map_task(data.info, lesions=lesions))


def add_ensembles(results_dir: Path, options: AggregateOptions) -> None:
    """Score --ensemble and --postprocess rows of the sweep's ok runs (its recorded data, split, lesion flags and
    AMP flag; the device: CUDA when there is one) into job folders of --results_dir."""
    config = read_json(results_dir / CONFIG_JSON, "sweep config")
    models = list(config.get("resolved_models") or config.get("models") or [])
    check_ensembles(options.ensemble, models)
    splits = load_splits(results_dir / SPLITS_JSON)
    data = data_options_from_config(config).load()
    by_id = {c.case_id: c for c in data.cases}

    def subset(ids: list[str]) -> list[CachedCase]:
        missing = [c for c in ids if c not in by_id]
        if missing:
            raise ValueError(f"the cases {missing[:10]} of {results_dir / SPLITS_JSON} are not in the recorded data")
        return [by_id[c] for c in ids]

    inputs = EnsembleInputs(subset(list(splits["test"])), subset, splits, results_dir / SPLITS_JSON,
                            resolve_device("auto"), amp=bool(config.get("amp", True)),
                            lesions=lesion_options_for_evaluation(options, config))
    add_ensemble_rows(results_dir, options.ensemble, options.postprocess, models, inputs)
