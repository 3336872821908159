"""``evaluate_experiment.py export``: a sweep's cases and split written as an nnU-Net raw dataset or a MONAI
datalist (``dataio.dataset_export``), for the round trip through other tools on exactly the sweep's split."""

from __future__ import annotations

import logging
from pathlib import Path

from dataio.dataset_export import export_dataset
from dataio.splits import load_splits
from engine.evaluate.checkpoints import read_json
from engine.evaluate.commands import EvaluationOutput
from engine.options.data_options import data_options_from_config
from engine.options.evaluate_options import ExportOptions
from utils.progress import progress
from utils.schema import CONFIG_JSON, SPLITS_JSON

log = logging.getLogger("volbench.evaluate")


def run(options: ExportOptions) -> EvaluationOutput:
    """Read --results_dir's recorded data flags and split, and write every case of the split to --output_dir."""
    results_dir = Path(options.results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"--results_dir {results_dir} is not a folder")
    config = read_json(results_dir / CONFIG_JSON, "sweep config")
    data = data_options_from_config(config)
    for name in ("data_path", "cache_dir"):
        if getattr(options, name) is not None:
            setattr(data, name, getattr(options, name))
    splits = load_splits(results_dir / SPLITS_JSON)
    data.load_cases(progress=False)  # writes the synthetic phantoms' files if the cache was cleared
    cases = {c.case_id: c for c in data.case_files(require_labels=True)}
    written = export_dataset(cases, data.dataset_info(), splits, Path(options.output_dir), fmt=options.format,
                             ct=data.ct_options(), progress=lambda ids: progress(ids, desc="export", unit="case"))
    for path in written:
        log.info("written: %s", path)
    return EvaluationOutput(Path(options.output_dir))
