"""``evaluate_experiment.py boxes``: the lesion metrics of detections given as boxes in a JSON file, no model (see
``engine.evaluate.boxes``)."""

from __future__ import annotations

from engine.evaluate.boxes import evaluate_boxes_json
from engine.evaluate.commands import EvaluationOutput
from engine.options.evaluate_options import BoxesOptions, lesion_options
from engine.tasks.lesion_metrics import LesionSettings
from utils.atomic import atomic_write_json


def run(options: BoxesOptions) -> EvaluationOutput:
    """Score the detections of --boxes_json; write --output_json."""
    settings = LesionSettings.of(lesion_options(options.lesions))
    out = options.output_json
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, evaluate_boxes_json(options.boxes_json, settings))
    return EvaluationOutput(out)
