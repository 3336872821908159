"""``evaluate_experiment.py checkpoints``: the checkpoints of a finished sweep (``--results_dir``) or checkpoint files
(``--checkpoint``) evaluated on the sweep's split, the recorded data, other data or an image folder.

Writes the tables, the summary and the predictions that are kept (see ``engine.evaluate.checkpoints`` and
``engine.evaluate.pictures``); returns the overlays and the Grad-CAM job for the CLI to draw.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataio.types import CachedCase, CaseFiles
from engine.evaluate.checkpoints import (PredictionOutput, RunSpec, check_runs, dataset_case_files,
                                         evaluate_run, image_folder_cases, load_image_folder, load_model,
                                         plan_checkpoint_runs, plan_results_runs, read_json, select_cases,
                                         write_evaluation)
from engine.evaluate.commands import EvaluationOutput
from engine.evaluate.pictures import (GradcamImage, GradcamJob, PredictionPolicy, chosen_cases, gradcam_run,
                                      overlay_cases, prediction_policy, remove_folder)
from engine.options.data_options import DataOptions, data_options_from_config
from engine.options.evaluate_options import CT_FLAGS, CheckpointsOptions, lesion_options
from utils.device import resolve_device
from utils.schema import CONFIG_JSON

log = logging.getLogger("volbench.evaluate")


def run(options: CheckpointsOptions) -> EvaluationOutput:
    """Evaluate the checkpoints on their cases; write tables, summary and predictions; describe the pictures."""
    plan, config = plan_runs(options)
    if config is None and not options.other_data:
        config = recorded_data(plan)
    pictures = options.pictures
    gradcam = gradcam_run(plan, pictures.gradcam_model, pictures.gradcam_class) if pictures.gradcam_layer else None
    cases, files, data_context = load_data(options, config)
    output_dir = options.output_path()
    device = resolve_device(options.device)
    run_cases = {run.label: select_cases(cases, run.case_ids, str(run.checkpoint)) for run in plan}
    evaluated = list(dict.fromkeys(c.case_id for cs in run_cases.values() for c in cs))
    shown = chosen_cases(pictures.visualize_cases, evaluated)
    labelled = any(c.label is not None for cs in run_cases.values() for c in cs)
    policy = prediction_policy(output_dir, shown, labelled, save_predictions=options.save_predictions,
                               save_probabilities=options.save_probabilities)
    try:
        amp = not options.no_amp and bool((config or {}).get("amp", True))
        results = [evaluate_run(run, run_cases[run.label], device=device, tta=options.tta, amp=amp,
                                output=_prediction_output(options, policy, run),
                                lesions=lesion_options(options.lesions, _recorded_lesions(options, config, run)))
                   for run in plan]
        write_evaluation(output_dir, results, _context(options, data_context), results_dir=options.results_dir)
        output = EvaluationOutput(output_dir, charts_dir=output_dir, temporary=policy.temporary,
                                  overlays=overlay_cases(output_dir, plan, results, run_cases, files, shown))
        if gradcam is not None:
            output.gradcam = gradcam_job(options, gradcam, run_cases, shown, output_dir, device)
    except BaseException:
        remove_folder(policy.temporary)
        raise
    return output


def _prediction_output(options: CheckpointsOptions, policy: PredictionPolicy, run: RunSpec) -> PredictionOutput:
    return PredictionOutput(policy.root / run.label if policy.root else None, policy.save_ids,
                            options.save_probabilities, options.probability_format)


def _recorded_lesions(options: CheckpointsOptions, config: dict[str, Any] | None,
                      run: RunSpec) -> dict[str, Any] | None:
    """The lesion flags recorded by the sweep (config.json), or by each checkpoint file (its meta)."""
    return config if options.results_dir is not None else (run.meta or {}).get("lesion_flags")


def _context(options: CheckpointsOptions, data: dict[str, Any]) -> dict[str, Any]:
    """The context of ``evaluation_summary.json``: mode, split, TTA, the sweep folder and the data."""
    split = options.split or ("test" if options.results_dir is not None and not options.other_data else None)
    return dict(mode="results_dir" if options.results_dir else "checkpoint", split=split, tta=options.tta,
                results_dir=str(options.results_dir) if options.results_dir else None, data=data)


def plan_runs(options: CheckpointsOptions) -> tuple[list[RunSpec], dict[str, Any] | None]:
    """The runs to evaluate and the sweep's config.json (None for --checkpoint)."""
    if options.results_dir is not None:
        plan = plan_results_runs(options.results_dir, options.models, options.split or "test")
        config = read_json(Path(options.results_dir) / CONFIG_JSON, "sweep config")
    else:
        plan, config = plan_checkpoint_runs(list(options.checkpoint or []), options.split, options.splits_file), None
    check_runs(plan)
    if options.other_data and options.split is None:
        for run in plan:
            run.case_ids = None  # every case of the other data (the sweep's split names its own cases)
    return plan, config


def recorded_data(plan: list[RunSpec]) -> dict[str, Any] | None:
    """--checkpoint without data flags: the data flags the checkpoints were trained with (their meta).

    Raises ``ValueError`` naming the files when the checkpoints disagree, or when an older checkpoint
    without recorded flags was trained on a real dataset (the phantoms are used only for synthetic ones).
    """
    recorded: dict[str, Any] | None = None
    for run in plan:
        meta = run.meta or {}  # read once by check_runs
        data = meta.get("data")
        if data is None and meta.get("dataset_version", "synthetic") != "synthetic":
            raise ValueError(f"checkpoint {run.checkpoint} was trained on {meta['dataset_version']} and records no "
                             f"data path: name the data (--data_path DIR --dataset_version ..., or --image_dir)")
        if recorded is not None and data != recorded:
            raise ValueError(f"checkpoints {plan[0].checkpoint} and {run.checkpoint} were trained on different data; "
                             f"name the data to evaluate on with the data flags")
        recorded = data
    return recorded


def data_options(options: CheckpointsOptions, config: dict[str, Any] | None) -> DataOptions:
    """The recorded data flags (a sweep's config.json, a checkpoint's meta), overridden by the data flags given."""
    opts = data_options_from_config(config) if config else DataOptions()
    given = options.data
    if "data_path" in given or "dataset_version" in given:
        opts.data_path = given.get("data_path")
        opts.dataset_version = given.get("dataset_version") or ("synthetic" if opts.data_path is None else "brats2018")
    for key in ("synthetic_cases", "synthetic_seed", "cache_dir", "max_samples", *CT_FLAGS, "spacing"):
        if key in given:
            value = given[key]
            setattr(opts, key, tuple(value) if isinstance(value, list) else value)
    if "synthetic_size" in given:
        opts.synthetic_size = tuple(given["synthetic_size"])
    opts.validate_data()  # e.g. CT flags with a BraTS dataset, --manifest without --mask_dir
    return opts


def load_data(options: CheckpointsOptions, config: dict[str, Any] | None
              ) -> tuple[list[CachedCase], dict[str, CaseFiles], dict[str, Any]]:
    """Cached (or folder) cases, their original files by case id (for overlays), and the data context."""
    if options.image_dir is not None:
        files = image_folder_cases(options.image_dir, options.label_dir, options.label_convention)
        context = dict(image_dir=str(options.image_dir),
                       label_dir=str(options.label_dir) if options.label_dir else None,
                       label_convention=options.label_convention)
        return load_image_folder(files), {f.case_id: f for f in files}, context
    opts = data_options(options, config)
    cases = opts.load_cases(require_labels=False, progress=False)  # unlabelled cases are predicted, not scored
    files = dataset_case_files(opts) if options.pictures.visualize_cases else {}
    return cases, files, dict(vars(opts), synthetic_size=list(opts.synthetic_size))


def gradcam_job(options: CheckpointsOptions, chosen: tuple[RunSpec, int], run_cases: dict[str, list[CachedCase]],
                shown: list[str], output_dir: Path, device: torch.device) -> GradcamJob:
    """Grad-CAM of the chosen run and class (``gradcam_run``) on its shown cases: its model, rebuilt once more."""
    run, class_idx = chosen
    layer = str(options.pictures.gradcam_layer)
    model, payload = load_model(run.checkpoint, device)
    meta = payload["meta"]
    modalities = list(meta["modalities"])
    job = GradcamJob(model, layer, class_idx, tuple(meta["patch_size"]),
                     background_channel=modalities.index("flair") if "flair" in modalities else -1)
    for case in (c for c in run_cases[run.label] if c.case_id in shown):
        job.images.append(GradcamImage(
            case.case_id, np.asarray(case.channels(modalities)),
            focus=np.asarray(case.label) == class_idx if case.label is not None else None,
            out_path=output_dir / "gradcam" / f"{run.label}_{case.case_id}_{layer}_class{class_idx}.png",
            title=f"{run.label} {case.case_id}: Grad-CAM of class {class_idx} at {layer}"))
    return job
