"""Flag groups of ``evaluate_experiment.py``, each declared once: the subcommands' parsers
(``engine.options.evaluate_options``) and the parser of the flag-only forms (``engine.options.evaluate_legacy``)
are assembled from these functions. Every help names its default.

Nothing heavy is imported here; ``--task`` takes its choices from the task registry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dataio.conventions import CONVENTIONS
from engine.options.cli_parser import add_list_models_argument

Container = argparse._ActionsContainer


def add_checkpoint_sources(container: Container) -> None:
    """``--results_dir`` (a finished sweep) and ``--checkpoint`` (files): what ``checkpoints`` evaluates."""
    container.add_argument("--results_dir", type=Path, metavar="DIR",
                           help="finished sweep: evaluate the best checkpoint of every ok run (default: none)")
    container.add_argument("--checkpoint", type=Path, nargs="+", metavar="FILE",
                           help="checkpoint file(s) to evaluate (default: none)")


def add_case_arguments(group: Container) -> None:
    """Which cases, and the folders of other data (``checkpoints``)."""
    group.add_argument("--split", choices=("test", "val"), default=None,
                       help="cases to use (default: test with --results_dir, every case with --checkpoint)")
    group.add_argument("--splits_file", type=Path, default=None, metavar="FILE",
                       help="splits.json naming the cases of --split with --checkpoint (default: none)")
    group.add_argument("--image_dir", type=Path, default=None, metavar="DIR",
                       help="evaluate on the files {case}_{t1,t1ce,t2,flair}.nii.gz of this folder (default: none, "
                            "the dataset of the data flags)")
    add_label_arguments(group, required=False)


def add_label_arguments(group: Container, *, required: bool) -> None:
    """``--label_dir`` (required by ``folders``; optional with ``--image_dir``) and ``--label_convention``."""
    default = "none, required" if required else "none, predictions only"
    group.add_argument("--label_dir", type=Path, default=None, required=required, metavar="DIR",
                       help=f"labels {{case}}[_seg].nii.gz, or .npy for prediction folders (default: {default})")
    group.add_argument("--label_convention", choices=CONVENTIONS, default="brats2021",
                       help="label values of the label and prediction files, e.g. brats2021: ET = 4 (default: "
                            "%(default)s)")


def add_model_selection(parser: argparse.ArgumentParser) -> None:
    """The ``models`` group: ``--models`` (runs of a sweep) and ``--list_models``."""
    group = parser.add_argument_group("models")
    group.add_argument("--models", nargs="+", default=None, metavar="NAME",
                       help="with --results_dir: only the runs of these models, names or wildcards (default: "
                            "every ok run)")
    add_list_models_argument(group)


def add_inference_arguments(group: Container) -> None:
    """How the checkpoints predict: flip TTA, device, mixed precision."""
    group.add_argument("--tta", action="store_true",
                       help="flip test-time augmentation: mean logits over 4 passes (default: off)")
    group.add_argument("--device", default="auto",
                       help="auto | cpu | cuda | cuda:N (default: auto, CUDA if present)")
    group.add_argument("--no_amp", action="store_true",
                       help="disable mixed precision (default: as the sweep recorded it; AMP is never used on the "
                            "CPU)")


def add_checkpoint_outputs(group: Container) -> None:
    """Where ``checkpoints`` writes, which predictions it keeps, and its pictures."""
    group.add_argument("--output_dir", type=Path, default=None, metavar="DIR",
                       help="where to write (default: DIR/evaluation_<split>[_tta] for --results_dir, else "
                            "baseline_results/evaluation_YYYYMMDD_HHMMSS)")
    group.add_argument("--save_predictions", action="store_true",
                       help="keep every case's predicted labels as NIfTI under predictions/<run>/ (default: off; "
                            "only the cases drawn by --visualize_cases are kept, or all when no case has a label)")
    group.add_argument("--save_probabilities", action="store_true",
                       help="also write softmax probabilities of every case (default: off)")
    group.add_argument("--probability_format", choices=("nifti", "npz"), default="nifti",
                       help="file format of --save_probabilities (default: %(default)s)")
    group.add_argument("--visualize_cases", nargs="+", default=None, metavar="N_OR_CASE",
                       help="draw slice overlays of N (the first N evaluated cases) or of these case ids (default: "
                            "none)")
    group.add_argument("--gradcam_layer", default=None, metavar="MODULE",
                       help="Grad-CAM of this module, e.g. dec1, on the --visualize_cases cases (default: none)")
    group.add_argument("--gradcam_model", default=None, metavar="NAME",
                       help="model or run name for Grad-CAM (default: the first run)")
    group.add_argument("--gradcam_class", type=int, default=None, metavar="K",
                       help="internal class for Grad-CAM (default: the last class, ET for BraTS)")


def add_pred_dir(container: Container, *, required: bool) -> None:
    """``--pred_dir``: the prediction folder of ``folders``."""
    container.add_argument("--pred_dir", type=Path, required=required, metavar="DIR",
                           help="prediction folder to compare with --label_dir, no model (default: none"
                                f"{', required' if required else ''})")


def folder_task_choices() -> tuple[str, ...]:
    """The ``--task`` choices of prediction folders: the folder evaluations of the task registry."""
    from engine.tasks import folder_task_names  # the registry, imported when a parser with --task is built

    return tuple(folder_task_names())


def add_folder_arguments(group: Container) -> None:
    """``--task`` and ``--prob_dir`` of ``folders``."""
    group.add_argument("--task", choices=folder_task_choices(), default="brats",
                       help="folder task whose regions are evaluated, e.g. brats (WT/TC/ET) or binary (one region, "
                            "plus the lesion metrics) (default: %(default)s)")
    group.add_argument("--prob_dir", type=Path, default=None, metavar="DIR",
                       help="--task binary: probability maps {case}[_probabilities] that score each predicted "
                            "component by its maximum (default: none, every component scores 1.0)")


def add_spacing_argument(group: Container) -> None:
    """``--spacing`` of ``folders`` (the data group's ``--spacing`` plays this part in the flag-only form)."""
    group.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                       help="voxel spacing in mm of every file, overriding NIfTI headers (default: none: each "
                            "file's header, 1 mm for .npy)")


def add_output_csv(container: Container, *, required: bool) -> None:
    """``--output_csv`` of ``folders`` (its summary JSON is written beside it)."""
    container.add_argument("--output_csv", type=Path, default=None, required=required, metavar="FILE",
                           help="the per-case CSV of --pred_dir, with FILE_summary.json beside it (default: none, "
                                "required)")


def add_boxes_json(container: Container, *, required: bool) -> None:
    """``--boxes_json``: the detections of ``boxes``."""
    container.add_argument("--boxes_json", type=Path, required=required, metavar="FILE",
                           help="score detections given as boxes in this JSON file, no model (default: none"
                                f"{', required' if required else ''})")


def add_output_json(container: Container, *, required: bool) -> None:
    """``--output_json`` of ``boxes``."""
    container.add_argument("--output_json", type=Path, default=None, required=required, metavar="FILE",
                           help="--boxes_json: the lesion metrics as JSON (default: none, required)")
