"""volbench evaluation CLI: re-evaluate checkpoints, evaluate prediction folders or boxes, rebuild and compare sweeps.

One subcommand per kind of work, each with its own help (``python evaluate_experiment.py checkpoints -h``).

Checkpoints of a finished sweep (every ok run; test split, or each run's own fold's val cases)::

    python evaluate_experiment.py checkpoints --results_dir DIR [--models unet3d_*] [--split test|val] [--tta]
        [--save_predictions] [--save_probabilities [--probability_format nifti|npz]] [--output_dir OUT]

  The data flags of DIR/config.json are used unless --data_path/--dataset_version are given (then they
  define the dataset and every case is used unless --split is given; --cache_dir, --max_samples and
  --synthetic_* override one by one). Default output: DIR/evaluation_<split or data folder>[_tta]/
  (the sweep's own tables are never touched).

Single checkpoint files (data from the flags, else the data flags recorded in the checkpoint when it
was trained; all cases, or --split of --splits_file)::

    python evaluate_experiment.py checkpoints --checkpoint A.pth [B.pth ...] [--split test --splits_file splits.json]

  Default output: baseline_results/evaluation_YYYYMMDD_HHMMSS/.

Other data as folders (either form): ``--image_dir I [--label_dir L]`` with files
``I/{case}_{t1,t1ce,t2,flair}.nii.gz`` (or .nii) and labels ``L/{case}.nii.gz`` (or ``{case}_seg``,
``{case}-seg``; --label_convention, default brats2021). Without --label_dir only predictions are written.

Outputs: per_case_results.csv, integrated_experiment_results.csv (one row per evaluated run),
model_comparison.csv, evaluation_summary.json, the charts, predictions/<run>/{case}.nii.gz (original
space and label convention; see engine/tasks/prediction_io.py). Lesion-track checkpoints (RetinaNet, DetSeg3D,
binary U-Nets) also write each case's predicted boxes with their scores as predictions/<run>/{case}_boxes.json
and .csv, in voxel and in world (mm) coordinates.

Pictures: ``--visualize_cases N`` (first N evaluated cases) or case ids -> overlays/overlay_{case}.png
(inputs and ground truth once, then one panel per run titled with its per-case Dice);
``--gradcam_layer NAME [--gradcam_model M] [--gradcam_class K]`` -> gradcam/{run}_{case}_{layer}_class{K}.png.
Predictions are kept only with --save_predictions (or --save_probabilities, or when no case has a label);
the cases drawn otherwise are predicted into a temporary folder, removed after drawing (see
engine/evaluate/pictures.py).

Prediction folders, no model::

    python evaluate_experiment.py folders --pred_dir P --label_dir L --output_csv OUT.csv [--task brats|binary]
        [--label_convention brats2021|brats2023|msd|internal] [--spacing X Y Z] [--prob_dir PROBS]

  writes OUT.csv (per case) and OUT_summary.json (means, NaN counts). See engine/evaluate/folders.py. With
  --task binary the lesion metrics are added (boxes from the predicted masks' components, scored by the
  --prob_dir probability maps when given, else 1.0): per-case lesion counts in OUT.csv, AP/mAP/mAR/FROC
  under "lesion_metrics" in OUT_summary.json.

Detections of another tool, as boxes, no model::

    python evaluate_experiment.py boxes --boxes_json FILE --output_json OUT.json

  FILE holds {case: {"pred_boxes": [[x1, y1, z1, x2, y2, z2], ...], "pred_scores": [...], "gt_boxes": [...]}}
  (voxels over array axes 0, 1, 2, max exclusive); OUT.json holds ap_10 ... froc_cpm. See engine/evaluate/boxes.py.

Rebuild a sweep's tables and charts from its per-job folders (DIR/jobs/), written INTO DIR (the only
subcommand that writes there; e.g. after a killed sweep, or while shards of a sweep still run)::

    python evaluate_experiment.py aggregate --results_dir DIR

  A folder made before per-job results (no jobs/) is left as it is, with a message.

Several sweeps in one comparison (the union of their runs: the same tables, statistics and charts, written into
OUT; folders whose recorded data flags or test cases differ are refused, and so is a run found in two folders)::

    python evaluate_experiment.py compare DIR1 DIR2 ... --output_dir OUT [--baseline NAME] [--stats_seed S]
        [--bootstrap_resamples N]

  The statistics flags default to the first folder's recorded values. See engine/evaluate/compare.py.

The flag-only forms of before still work and run the same subcommand: ``--results_dir DIR`` or
``--checkpoint A.pth`` (checkpoints), ``--pred_dir P`` (folders), ``--boxes_json FILE`` (boxes),
``--results_dir DIR --aggregate`` (aggregate), ``--compare DIR1 DIR2 --output_dir OUT`` (compare); see
engine/options/evaluate_legacy.py. Bad input exits with code 2 and a message naming the flag or the file.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from engine.options.cli_parser import CliParser
from engine.options.evaluate_legacy import build_legacy_parser, legacy_command
from engine.options.evaluate_options import (AggregateOptions, BoxesOptions, CheckpointsOptions, CommandOptions,
                                             CompareOptions, ExportOptions, FoldersOptions)

if TYPE_CHECKING:  # the handlers import torch and the models: only after the flags are checked
    from engine.evaluate.commands import EvaluationOutput
    from engine.evaluate.pictures import GradcamJob, OverlayCase

log = logging.getLogger("volbench.evaluate")


@dataclass(frozen=True)
class Command:
    """A subcommand: its options (flags, checks; the class docstring is its help) and the module whose
    ``run(options) -> EvaluationOutput`` does the work (see ``engine.evaluate.commands``)."""

    name: str
    options: type[CommandOptions]
    handler: str


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("checkpoints", CheckpointsOptions, "engine.evaluate.commands.checkpoints"),
    Command("folders", FoldersOptions, "engine.evaluate.commands.folders"),
    Command("boxes", BoxesOptions, "engine.evaluate.commands.boxes"),
    Command("aggregate", AggregateOptions, "engine.evaluate.commands.aggregate"),
    Command("compare", CompareOptions, "engine.evaluate.commands.compare"),
    Command("export", ExportOptions, "engine.evaluate.commands.export"),
)}
DESCRIPTION = __doc__.split("\n")[0]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``evaluate_experiment.py COMMAND ...``: one subparser per entry of :data:`COMMANDS`."""
    parser = CliParser(prog="evaluate_experiment.py", description=DESCRIPTION, epilog=__doc__)
    subparsers = parser.add_subparsers(dest="command", title="subcommands", metavar="COMMAND", parser_class=CliParser)
    for command in COMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.options.summary,
                                    description=inspect.getdoc(command.options))
        command.options.add_arguments(sub)
    return parser


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of :func:`build_parser`'s parser, by subcommand name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def build_flag_only_parser() -> argparse.ArgumentParser:
    """The flat parser of the flag-only forms (``engine.options.evaluate_legacy``)."""
    return build_legacy_parser(DESCRIPTION, __doc__)


def parse(argv: Sequence[str]) -> tuple[Command, CommandOptions]:
    """The subcommand of ``argv`` and its checked options. ``argv`` names a subcommand first, or is a flag-only
    form (its first token is a flag), which is translated into its subcommand.

    Raises:
        SystemExit: argparse errors (code 2, one line) and ``--help`` (code 0).
        ValueError: a flag combination that makes no sense, naming the flag.
    """
    if not argv:
        build_parser().error(f"name a subcommand ({', '.join(COMMANDS)}) or give a flag-only form such as "
                             "--results_dir DIR")
    if argv[0] in COMMANDS or argv[0] in ("-h", "--help"):
        args = build_parser().parse_args(argv)
        name = args.command
    else:
        flat = build_flag_only_parser()
        name, args = legacy_command(flat, flat.parse_args(argv))
    command = COMMANDS[name]
    options = command.options.from_args(args)
    options.check()
    return command, options


def draw(output: EvaluationOutput) -> None:
    """Draw what a subcommand wrote: charts of its tables, slice overlays, Grad-CAM; then remove its temporary
    predictions (also when drawing fails). ``visualization`` is imported here: the engine never draws."""
    try:
        if output.charts_dir is not None:
            from visualization import draw_all

            for path in draw_all(output.charts_dir):
                log.info("written: %s", path)
        for case in output.overlays:
            draw_overlay(case)
        if output.gradcam is not None:
            draw_gradcam(output.gradcam)
    finally:
        output.discard_temporary()


def draw_overlay(case: OverlayCase) -> None:
    """overlays/overlay_{case}.png: the case's inputs once, then each run's prediction titled with its Dice."""
    from visualization import overlays

    scores = {run: overlays.dice_text(row) for run, row in case.rows.items()}
    overlays.draw_case_overlay(case.case_id, case.images, case.predictions, case.out_path, label=case.label,
                               convention=case.convention, scores=scores)


def draw_gradcam(job: GradcamJob) -> None:
    """gradcam/{run}_{case}_{layer}_class{K}.png of every shown case of the job's run."""
    from visualization.gradcam import make_gradcam, save_gradcam_overlay

    cam = make_gradcam(job.model, job.layer)
    for image in job.images:
        save_gradcam_overlay(job.model, image.image, image.out_path, layer=job.layer, class_idx=job.class_idx,
                             roi_size=job.roi_size, focus=image.focus, background_channel=job.background_channel,
                             title=image.title, cam=cam)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run the subcommand and draw its pictures; return the exit code (2 on bad input, with the
    message). The last line on stdout is ``results: PATH``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        command, options = parse(list(sys.argv[1:] if argv is None else argv))
        output = importlib.import_module(command.handler).run(options)
        draw(output)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    print(f"results: {output.path}")  # the CLI's result (stdout), as integrated_experiment.py prints its folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
