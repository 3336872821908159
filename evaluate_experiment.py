"""volbench evaluation CLI: re-evaluate checkpoints, evaluate prediction folders, draw overlays and Grad-CAM.

Checkpoints of a finished sweep (every ok run; test split, or each run's own fold's val cases)::

    python evaluate_experiment.py --results_dir DIR [--models unet3d_*] [--split test|val] [--tta]
        [--save_predictions] [--save_probabilities [--probability_format nifti|npz]] [--output_dir OUT]

  The data flags of DIR/config.json are used unless --data_path/--dataset_version are given (then they
  define the dataset and every case is used unless --split is given; --cache_dir, --max_samples and
  --synthetic_* override one by one). Default output: DIR/evaluation_<split or data folder>[_tta]/
  (the sweep's own tables are never touched).

Rebuild a sweep's tables and charts from its per-job folders (DIR/jobs/), written INTO DIR (the only
mode that writes there; e.g. after a killed sweep, or while shards of a sweep still run)::

    python evaluate_experiment.py --results_dir DIR --aggregate

  A folder made before per-job results (no jobs/) is left as it is, with a message.

Several sweeps in one comparison (the union of their runs: the same tables, statistics and charts, written into
OUT; folders whose recorded data flags or test cases differ are refused, and so is a run found in two folders)::

    python evaluate_experiment.py --compare DIR1 DIR2 ... --output_dir OUT [--baseline NAME] [--stats_seed S]
        [--bootstrap_resamples N]

  The statistics flags default to the first folder's recorded values. See engine/evaluate/compare.py.

Single checkpoint files (data from the flags, else the data flags recorded in the checkpoint when it
was trained; all cases, or --split of --splits_file)::

    python evaluate_experiment.py --checkpoint A.pth [B.pth ...] [--split test --splits_file splits.json]

  Default output: baseline_results/evaluation_YYYYMMDD_HHMMSS/.

Other data as folders (with --results_dir or --checkpoint): ``--image_dir I [--label_dir L]`` with files
``I/{case}_{t1,t1ce,t2,flair}.nii.gz`` (or .nii) and labels ``L/{case}.nii.gz`` (or ``{case}_seg``,
``{case}-seg``; --label_convention, default brats2021). Without --label_dir only predictions are written.

Outputs: per_case_results.csv, integrated_experiment_results.csv (one row per evaluated run),
model_comparison.csv, evaluation_summary.json, the charts, predictions/<run>/{case}.nii.gz (original
space and label convention; see engine/tasks/prediction_io.py).

Prediction folders, no model::

    python evaluate_experiment.py --pred_dir P --label_dir L --task brats|binary
        --label_convention brats2021|brats2023|msd|internal --output_csv OUT.csv [--spacing X Y Z]

  writes OUT.csv (per case) and OUT_summary.json (means, NaN counts). See engine/evaluate/folders.py. With
  --task binary the lesion metrics are added (boxes from the predicted masks' components, scored by the
  --prob_dir probability maps when given, else 1.0): per-case lesion counts in OUT.csv, AP/mAP/mAR/FROC
  under "lesion_metrics" in OUT_summary.json.

Detections of another tool, as boxes, no model::

    python evaluate_experiment.py --boxes_json FILE --output_json OUT.json

  FILE holds {case: {"pred_boxes": [[x1, y1, z1, x2, y2, z2], ...], "pred_scores": [...], "gt_boxes": [...]}}
  (voxels over array axes 0, 1, 2, max exclusive); OUT.json holds ap_10 ... froc_cpm. See engine/evaluate/boxes.py.

Lesion-track checkpoints (RetinaNet, DetSeg3D, binary U-Nets) also write each case's predicted boxes with
their scores as predictions/<run>/{case}_boxes.json and .csv, in voxel and in world (mm) coordinates.

Pictures: ``--visualize_cases N`` (first N evaluated cases) or case ids -> overlays/overlay_{case}.png
(inputs and ground truth once, then one panel per run titled with its per-case Dice);
``--gradcam_layer NAME [--gradcam_model M] [--gradcam_class K]`` -> gradcam/{run}_{case}_{layer}_class{K}.png.
Predictions are kept only with --save_predictions (or --save_probabilities, or when no case has a label);
the cases drawn otherwise are predicted into a temporary folder, removed after drawing (see
engine/evaluate/pictures.py). Bad input exits with code 2 and a message naming the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dataio.conventions import CONVENTIONS
from engine.options.cli_parser import CliParser, add_list_models_argument
from engine.options.config import add_data_arguments
from engine.options.lesion_options import add_lesion_matching_arguments, lesion_options_for_evaluation
from engine.options.stats_options import STATS_FIELDS, add_stats_arguments

if TYPE_CHECKING:  # heavy imports (torch, models) happen only after the flags are checked
    from engine.options.data_options import DataOptions

log = logging.getLogger("volbench.evaluate")
CT_FLAGS = ("test_image_dir", "test_label_dir", "patient_regex", "manifest", "mask_dir", "hu_window", "target_spacing",
            "allow_pickle")  # and spacing, which --pred_dir uses too
DATA_FLAGS = ("data_path", "dataset_version", "synthetic_cases", "synthetic_size", "synthetic_seed", "cache_dir",
              "max_samples", *CT_FLAGS)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``evaluate_experiment.py``: flags grouped as source, data, models, evaluation and
    output; every help names its default (data flags: the recorded ones) and unit."""
    p = CliParser(prog="evaluate_experiment.py", description=__doc__.split("\n")[0], epilog=__doc__)
    src_group = p.add_argument_group("what to evaluate (exactly one)")
    src = src_group.add_mutually_exclusive_group(required=True)
    src.add_argument("--results_dir", type=Path, metavar="DIR",
                     help="finished sweep: evaluate the best checkpoint of every ok run (default: none)")
    src.add_argument("--checkpoint", type=Path, nargs="+", metavar="FILE",
                     help="checkpoint file(s) to evaluate (default: none)")
    src.add_argument("--pred_dir", type=Path, metavar="DIR",
                     help="prediction folder to compare with --label_dir, no model (default: none)")
    src.add_argument("--boxes_json", type=Path, metavar="FILE",
                     help="score detections given as boxes in this JSON file, no model (default: none)")
    src.add_argument("--compare", type=Path, nargs="+", metavar="DIR",
                     help="sweep folders to compare as one: their runs' tables, statistics and charts go to "
                          "--output_dir (default: none)")
    src_group.add_argument("--aggregate", action="store_true",
                           help="with --results_dir: rebuild the sweep's tables and charts in DIR from DIR/jobs/ "
                                "and exit (default: off)")
    _add_case_arguments(add_data_arguments(p, recorded=True))
    models = p.add_argument_group("models")
    models.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="with --results_dir: only the runs of these models, names or wildcards (default: "
                             "every ok run)")
    add_list_models_argument(models)
    _add_evaluation_arguments(p)
    add_lesion_matching_arguments(p.add_argument_group("lesions"), recorded=True)
    _add_output_arguments(p)
    add_stats_arguments(p, recorded=True)
    return p


def _add_case_arguments(g: argparse._ArgumentGroup) -> None:
    """Which cases, and the folders of other data."""
    g.add_argument("--split", choices=("test", "val"), default=None,
                   help="cases to use (default: test with --results_dir, every case with --checkpoint)")
    g.add_argument("--splits_file", type=Path, default=None, metavar="FILE",
                   help="splits.json naming the cases of --split with --checkpoint (default: none)")
    g.add_argument("--image_dir", type=Path, default=None, metavar="DIR",
                   help="evaluate on the files {case}_{t1,t1ce,t2,flair}.nii.gz of this folder (default: none, "
                        "the dataset of the data flags)")
    g.add_argument("--label_dir", type=Path, default=None, metavar="DIR",
                   help="labels {case}[_seg].nii.gz, or .npy for --pred_dir (default: none, predictions only)")
    g.add_argument("--label_convention", choices=CONVENTIONS, default="brats2021",
                   help="label values of --label_dir/--pred_dir files, e.g. brats2021: ET = 4 (default: "
                        "%(default)s)")


def _add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation: mean logits over 4 passes (default: off)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto, CUDA if present)")
    g.add_argument("--no_amp", action="store_true",
                   help="disable mixed precision (default: as the sweep recorded it; AMP is never used on the CPU)")
    g.add_argument("--task", choices=("brats", "binary"), default="brats",
                   help="--pred_dir: regions to evaluate (default: %(default)s, WT/TC/ET; binary adds the lesion "
                        "metrics)")
    g.add_argument("--prob_dir", type=Path, default=None, metavar="DIR",
                   help="--pred_dir --task binary: probability maps {case}[_probabilities] that score each predicted "
                        "component by its maximum (default: none, every component scores 1.0)")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", type=Path, default=None, metavar="DIR",
                   help="where to write (default: DIR/evaluation_<split>[_tta] for --results_dir, else "
                        "baseline_results/evaluation_YYYYMMDD_HHMMSS)")
    g.add_argument("--output_csv", type=Path, default=None, metavar="FILE",
                   help="--pred_dir: the per-case CSV, with FILE_summary.json beside it (default: none, required)")
    g.add_argument("--output_json", type=Path, default=None, metavar="FILE",
                   help="--boxes_json: the lesion metrics as JSON (default: none, required)")
    g.add_argument("--save_predictions", action="store_true",
                   help="keep every case's predicted labels as NIfTI under predictions/<run>/ (default: off; "
                        "only the cases drawn by --visualize_cases are kept, or all when no case has a label)")
    g.add_argument("--save_probabilities", action="store_true",
                   help="also write softmax probabilities of every case (default: off)")
    g.add_argument("--probability_format", choices=("nifti", "npz"), default="nifti",
                   help="file format of --save_probabilities (default: %(default)s)")
    g.add_argument("--visualize_cases", nargs="+", default=None, metavar="N_OR_CASE",
                   help="draw slice overlays of N (the first N evaluated cases) or of these case ids (default: "
                        "none)")
    g.add_argument("--gradcam_layer", default=None, metavar="MODULE",
                   help="Grad-CAM of this module, e.g. dec1, on the --visualize_cases cases (default: none)")
    g.add_argument("--gradcam_model", default=None, metavar="NAME",
                   help="model or run name for Grad-CAM (default: the first run)")
    g.add_argument("--gradcam_class", type=int, default=None, metavar="K",
                   help="internal class for Grad-CAM (default: the last class, ET for BraTS)")


def check_flags(args: argparse.Namespace) -> None:
    """Flag combinations that make no sense raise ``ValueError`` naming the flag."""
    if args.compare is not None:
        check_compare_flags(args)
        return
    stats = [f"--{k}" for k in STATS_FIELDS if getattr(args, k) is not None]
    if stats:
        raise ValueError(f"{stats} apply to --compare only (a sweep's own statistics use the values recorded in its "
                         "config.json, given to integrated_experiment.py)")
    if args.aggregate:
        if args.results_dir is None:
            raise ValueError("--aggregate needs --results_dir (the sweep folder whose tables are rebuilt)")
        defaults = vars(build_parser().parse_args(["--results_dir", "x", "--aggregate"]))
        used = [f"--{k}" for k, v in vars(args).items() if k not in ("results_dir", "aggregate") and v != defaults[k]]
        if used:
            raise ValueError(f"{used} do not apply to --aggregate (it only rebuilds the tables of --results_dir)")
        return
    model_free = ("image_dir", "visualize_cases", "gradcam_layer", "gradcam_model", "gradcam_class", "models", "split",
                  "splits_file", "tta", "save_predictions", "save_probabilities", "output_dir", *DATA_FLAGS)
    if args.boxes_json is not None:
        if args.output_json is None:
            raise ValueError("--boxes_json needs --output_json (where the metrics are written)")
        used = [f"--{k}" for k in (*model_free, "label_dir", "output_csv", "prob_dir", "spacing",
                                   "lesionwise_dilation", "lesionwise_min_size")
                if getattr(args, k) is not None and getattr(args, k) is not False]
        if used:
            raise ValueError(f"{used} do not apply to --boxes_json (the file holds every box)")
        return
    if args.output_json is not None:
        raise ValueError("--output_json applies to --boxes_json only")
    if args.prob_dir is not None and (args.pred_dir is None or args.task != "binary"):
        raise ValueError("--prob_dir applies to --pred_dir with --task binary only")
    if args.pred_dir is not None:
        if args.label_dir is None or args.output_csv is None:
            raise ValueError("--pred_dir needs --label_dir and --output_csv")
        used = [f"--{k}" for k in model_free if getattr(args, k) is not None and getattr(args, k) is not False]
        if used:
            raise ValueError(f"{used} do not apply to --pred_dir (prediction folders are evaluated without a model)")
        return
    if args.output_csv is not None:
        raise ValueError("--output_csv applies to --pred_dir only (with a model the tables go to --output_dir)")
    if args.label_dir is not None and args.image_dir is None:
        raise ValueError("--label_dir needs --image_dir (or --pred_dir)")
    if args.image_dir is not None and args.split is not None:
        raise ValueError("--split does not apply with --image_dir (every case of the folder is used)")
    if args.splits_file is not None and (args.results_dir is not None or args.split is None):
        raise ValueError("--splits_file is used with --checkpoint and --split only (a --results_dir uses its own "
                         "splits.json; without --split every case would be evaluated)")
    if args.models and args.results_dir is None:
        raise ValueError("--models selects runs of --results_dir; it does not apply to --checkpoint")
    if args.gradcam_layer and not args.visualize_cases:
        raise ValueError("--gradcam_layer needs --visualize_cases (which cases to draw)")
    if not args.gradcam_layer and (args.gradcam_model is not None or args.gradcam_class is not None):
        raise ValueError("--gradcam_model/--gradcam_class need --gradcam_layer")
    if (args.results_dir is not None and args.output_dir is not None
            and Path(args.output_dir).resolve() == Path(args.results_dir).resolve()):
        raise ValueError(f"--output_dir {args.output_dir} is the --results_dir: the evaluation would overwrite "
                         f"the sweep's own tables; choose another folder")


def check_compare_flags(args: argparse.Namespace) -> None:
    """--compare takes --output_dir (required) and the statistics flags only."""
    if args.output_dir is None:
        raise ValueError("--compare needs --output_dir (where the comparison's tables and charts are written)")
    defaults = vars(build_parser().parse_args(["--compare", "x"]))
    allowed = ("compare", "output_dir", *STATS_FIELDS)
    used = [f"--{k}" for k, v in vars(args).items() if k not in allowed and v != defaults[k]]
    if used:
        raise ValueError(f"{used} do not apply to --compare (it reduces the finished runs of the folders)")


def run_compare(args: argparse.Namespace) -> Path:
    """Tables, statistics and charts of the union of the --compare folders' runs, in --output_dir."""
    from engine.evaluate.compare import compare_sweeps
    from visualization import draw_all

    overrides = {k: getattr(args, k) for k in STATS_FIELDS}
    for path in compare_sweeps(args.compare, args.output_dir, **overrides) + draw_all(args.output_dir):
        log.info("written: %s", path)
    return Path(args.output_dir)


def data_options(args: argparse.Namespace, config: dict[str, Any] | None) -> "DataOptions":
    """The sweep's data flags (config.json), overridden by the data flags given on the command line."""
    from engine.options.data_options import DataOptions, data_options_from_config

    opts = data_options_from_config(config) if config else DataOptions()
    if args.data_path is not None or args.dataset_version is not None:
        opts.data_path = args.data_path
        opts.dataset_version = args.dataset_version or ("synthetic" if args.data_path is None else "brats2018")
    for key in ("synthetic_cases", "synthetic_seed", "cache_dir", "max_samples", *CT_FLAGS, "spacing"):
        if getattr(args, key) is not None:
            value = getattr(args, key)
            setattr(opts, key, tuple(value) if isinstance(value, list) else value)
    if args.synthetic_size is not None:
        opts.synthetic_size = tuple(args.synthetic_size)
    opts.validate_data()  # e.g. CT flags with a BraTS dataset, --manifest without --mask_dir
    return opts


def run_aggregate(results_dir: Path) -> Path:
    """Reduce the job folders of ``results_dir`` into its sweep tables and redraw its charts."""
    from engine.results.reducer import reduce_results
    from utils.schema import JOBS_DIR
    from visualization import draw_all

    if not Path(results_dir).is_dir():
        raise ValueError(f"--results_dir {results_dir} is not a folder")
    if not (Path(results_dir) / JOBS_DIR).is_dir():
        log.warning("%s has no %s/ folder (made before per-job results): its tables are left as they are",
                    results_dir, JOBS_DIR)
        return Path(results_dir)
    for path in reduce_results(results_dir) + draw_all(results_dir):
        log.info("written: %s", path)
    return Path(results_dir)


def run_folder_mode(args: argparse.Namespace) -> Path:
    """Evaluate --pred_dir against --label_dir; write the CSV and its summary JSON."""
    import pandas as pd

    from engine.evaluate.folders import evaluate_folder
    from utils.atomic import atomic_write_csv, atomic_write_json

    from engine.tasks.lesion_metrics import LesionSettings

    rows, summary = evaluate_folder(args.pred_dir, args.label_dir, task=args.task,
                                    label_convention=args.label_convention, spacing=args.spacing,
                                    prob_dir=args.prob_dir,
                                    lesions=LesionSettings.of(lesion_options_for_evaluation(args, None)))
    out = Path(args.output_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out, pd.DataFrame(rows))
    atomic_write_json(summary_path(out), summary)
    return out


def run_boxes_mode(args: argparse.Namespace) -> Path:
    """Score the detections of --boxes_json; write --output_json."""
    from engine.evaluate.boxes import evaluate_boxes_json
    from engine.tasks.lesion_metrics import LesionSettings
    from utils.atomic import atomic_write_json

    settings = LesionSettings.of(lesion_options_for_evaluation(args, None))
    out = Path(args.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, evaluate_boxes_json(args.boxes_json, settings))
    return out


def summary_path(output_csv: Path) -> Path:
    """``OUT.csv`` -> ``OUT_summary.json`` in the same folder."""
    return output_csv.with_name(f"{output_csv.stem}_summary.json")


def default_output_dir(args: argparse.Namespace) -> Path:
    """DIR/evaluation_<split or image folder>[_tta] for a sweep; baseline_results/evaluation_<time> else."""
    if args.output_dir is not None:
        return Path(args.output_dir)
    if args.results_dir is None:
        return Path("baseline_results") / f"evaluation_{datetime.now():%Y%m%d_%H%M%S}"
    if args.image_dir is not None or args.data_path is not None:
        name = Path(args.image_dir if args.image_dir is not None else args.data_path).name
    elif args.dataset_version is not None:  # other data: never the folder of the sweep's own split
        name = args.dataset_version
    else:
        name = args.split or "test"
    return Path(args.results_dir) / f"evaluation_{name}{'_tta' if args.tta else ''}"


def plan_runs(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any] | None]:
    """The runs to evaluate and the sweep's config.json (None for --checkpoint)."""
    from engine.evaluate.checkpoints import check_runs, plan_checkpoint_runs, plan_results_runs, read_json
    from utils.schema import CONFIG_JSON

    if args.results_dir is not None:
        split = args.split or "test"
        plan = plan_results_runs(args.results_dir, args.models, split)
        config = read_json(Path(args.results_dir) / CONFIG_JSON, "sweep config")
    else:
        plan, config = plan_checkpoint_runs(list(args.checkpoint), args.split, args.splits_file), None
    check_runs(plan)
    if other_data(args) and args.split is None:
        for run in plan:
            run.case_ids = None  # every case of the other data (the sweep's split names its own cases)
    return plan, config


def other_data(args: argparse.Namespace) -> bool:
    """True when the data is not the sweep's own: --image_dir, or a dataset named by the data flags."""
    return (args.image_dir is not None or args.data_path is not None or args.dataset_version is not None
            or args.manifest is not None)


def recorded_data(plan: list[Any]) -> dict[str, Any] | None:
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


def load_data(args: argparse.Namespace, config: dict[str, Any] | None) -> tuple[list[Any], dict[str, Any], Any]:
    """Cached (or folder) cases, their original files by case id (for overlays), and the data context."""
    from engine.evaluate.checkpoints import dataset_case_files, image_folder_cases, load_image_folder

    if args.image_dir is not None:
        files = image_folder_cases(args.image_dir, args.label_dir, args.label_convention)
        context = dict(image_dir=str(args.image_dir), label_dir=str(args.label_dir) if args.label_dir else None,
                       label_convention=args.label_convention)
        return load_image_folder(files), {f.case_id: f for f in files}, context
    opts = data_options(args, config)
    cases = opts.load_cases(require_labels=False, progress=False)  # unlabelled cases are predicted, not scored
    files = dataset_case_files(opts) if args.visualize_cases else {}
    return cases, files, dict(vars(opts), synthetic_size=list(opts.synthetic_size))


def run_model_mode(args: argparse.Namespace) -> Path:
    """Evaluate checkpoints on cases; write tables, summary, predictions, charts and pictures."""
    from engine.evaluate.checkpoints import evaluate_run, select_cases, write_evaluation
    from engine.evaluate.pictures import chosen_cases, discard_temporary, prediction_policy
    from utils.device import resolve_device

    plan, config = plan_runs(args)
    if config is None and not other_data(args):
        config = recorded_data(plan)
    cases, files, data_context = load_data(args, config)
    output_dir = default_output_dir(args)
    device = resolve_device(args.device)
    amp = not args.no_amp and bool((config or {}).get("amp", True))
    run_cases = {run.label: select_cases(cases, run.case_ids, str(run.checkpoint)) for run in plan}
    evaluated = list(dict.fromkeys(c.case_id for cs in run_cases.values() for c in cs))
    shown = chosen_cases(args.visualize_cases, evaluated)
    labelled = any(c.label is not None for cs in run_cases.values() for c in cs)
    policy = prediction_policy(args, output_dir, shown, labelled)
    try:
        results = []
        for run in plan:
            lesions = lesion_options_for_evaluation(args, config if args.results_dir else (run.meta or {}).get(
                "lesion_flags"))
            results.append(evaluate_run(run, run_cases[run.label], device=device, tta=args.tta, amp=amp,
                                        prediction_dir=policy.root / run.label if policy.root else None,
                                        save_ids=policy.save_ids, save_probabilities=args.save_probabilities,
                                        probability_format=args.probability_format, lesions=lesions))
        split = args.split or ("test" if args.results_dir is not None and not other_data(args) else None)
        context = dict(mode="results_dir" if args.results_dir else "checkpoint", split=split, tta=args.tta,
                       results_dir=str(args.results_dir) if args.results_dir else None, data=data_context)
        write_evaluation(output_dir, results, context, results_dir=args.results_dir)
        _draw(output_dir, args, plan, results, run_cases, files, shown, device)
    finally:
        discard_temporary(policy)
    return output_dir


def _draw(output_dir: Path, args: argparse.Namespace, plan: list[Any], results: list[Any],
          run_cases: dict[str, list[Any]], files: dict[str, Any], shown: list[str], device: Any) -> None:
    """Charts from the written tables, overlays of the shown cases, Grad-CAM of one run."""
    from engine.evaluate.pictures import draw_overlays
    from visualization import draw_all

    draw_all(output_dir)
    draw_overlays(output_dir, plan, results, run_cases, files, shown)
    if args.gradcam_layer:
        _gradcam(output_dir, args, plan, run_cases, shown, device)


def _gradcam(output_dir: Path, args: argparse.Namespace, plan: list[Any], run_cases: dict[str, list[Any]],
             shown: list[str], device: Any) -> None:
    import numpy as np

    from engine.evaluate.checkpoints import load_model
    from visualization.gradcam import make_gradcam, save_gradcam_overlay

    wanted = args.gradcam_model
    run = next((r for r in plan if wanted in (None, r.model, r.label)), None)
    if run is None:
        raise ValueError(f"--gradcam_model {wanted!r} is none of the evaluated runs {[r.label for r in plan]}")
    model, payload = load_model(run.checkpoint, device)
    meta = payload["meta"]
    if int(meta.get("spatial_dims", 3)) != 3:
        raise ValueError(f"--gradcam_layer: Grad-CAM 3D needs a 3D model; {run.checkpoint} is 2D")
    modalities = list(meta["modalities"])
    class_idx = args.gradcam_class if args.gradcam_class is not None else int(meta.get("n_classes", 4)) - 1
    if not 0 <= class_idx < int(meta.get("n_classes", 4)):
        raise ValueError(f"--gradcam_class {class_idx} is not a class of {run.checkpoint} "
                         f"(0..{int(meta.get('n_classes', 4)) - 1})")
    cam = make_gradcam(model, args.gradcam_layer)
    for case in (c for c in run_cases[run.label] if c.case_id in shown):
        focus = np.asarray(case.label) == class_idx if case.label is not None else None
        out = output_dir / "gradcam" / f"{run.label}_{case.case_id}_{args.gradcam_layer}_class{class_idx}.png"
        save_gradcam_overlay(model, np.asarray(case.channels(modalities)), out, layer=args.gradcam_layer,
                             class_idx=class_idx, roi_size=meta["patch_size"], focus=focus,
                             background_channel=modalities.index("flair") if "flair" in modalities else -1,
                             title=f"{run.label} {case.case_id}: Grad-CAM of class {class_idx} at {args.gradcam_layer}",
                             cam=cam)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run the chosen mode, return the exit code (2 on bad input, with the message)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        if args.aggregate:
            out = run_aggregate(args.results_dir)
        elif args.compare is not None:
            out = run_compare(args)
        elif args.pred_dir is not None:
            out = run_folder_mode(args)
        elif args.boxes_json is not None:
            out = run_boxes_mode(args)
        else:
            out = run_model_mode(args)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
