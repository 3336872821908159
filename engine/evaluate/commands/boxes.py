"""``evaluate_experiment.py boxes``: the lesion metrics of detections given as boxes in a JSON file, no model (see
``engine.evaluate.boxes``), or LUNA16's FROC of a submission CSV (``metrics.luna_submission``)."""

from __future__ import annotations

from engine.evaluate.boxes import evaluate_boxes_json
from engine.evaluate.commands import EvaluationOutput
from engine.options.evaluate_options import BoxesOptions, lesion_options
from engine.tasks.lesion_metrics import LesionSettings
from metrics.luna_submission import luna_froc
from utils.atomic import atomic_write_json


def run(options: BoxesOptions) -> EvaluationOutput:
    """Score the detections of --boxes_json, or the LUNA16 submission of --luna_candidates; write --output_json."""
    out = options.output_json
    out.parent.mkdir(parents=True, exist_ok=True)
    if options.luna is not None:
        luna = options.luna
        result = luna_froc(luna.candidates, luna.annotations, luna.excluded, luna.series)
    else:
        settings = LesionSettings.of(lesion_options(options.lesions))
        result = evaluate_boxes_json(options.boxes_json, settings)
    atomic_write_json(out, result)
    return EvaluationOutput(out)
