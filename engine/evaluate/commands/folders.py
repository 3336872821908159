"""``evaluate_experiment.py folders``: prediction folders against labels, no model (see
``engine.evaluate.folders``); writes the per-case CSV and its summary JSON."""

from __future__ import annotations

import pandas as pd

from engine.evaluate.commands import EvaluationOutput
from engine.evaluate.folders import evaluate_folder
from engine.options.evaluate_options import FoldersOptions, lesion_options
from engine.tasks.lesion_metrics import LesionSettings
from utils.atomic import atomic_write_csv, atomic_write_json


def run(options: FoldersOptions) -> EvaluationOutput:
    """Evaluate --pred_dir against --label_dir; write --output_csv and OUT_summary.json.

    Raises:
        ValueError: what ``evaluate_folder`` refuses (naming the file).
    """
    lesions = LesionSettings.of(lesion_options(options.lesions))
    rows, summary = evaluate_folder(options.pred_dir, options.label_dir, task=options.task,
                                    label_convention=options.label_convention, spacing=options.spacing,
                                    prob_dir=options.prob_dir, lesions=lesions)
    out = options.output_csv
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out, pd.DataFrame(rows))
    atomic_write_json(options.summary_path(), summary)
    return EvaluationOutput(out)
