"""The flag-only forms of ``evaluate_experiment.py`` (from before the subcommands), kept as aliases: one flat
parser with the flags, help and errors of before, whose source flag names the subcommand that runs::

    --results_dir DIR | --checkpoint FILE ...   -> checkpoints
    --results_dir DIR --aggregate               -> aggregate
    --pred_dir P --label_dir L --output_csv F   -> folders
    --boxes_json F --output_json O              -> boxes
    --compare DIR ... --output_dir OUT          -> compare (its DIR arguments)

The flat parser holds the flags of every form, so each form refuses those that do not apply to it, with the
messages of before (exit code 2); then the subcommand's own options and checks take over. Flags that a form
accepted and ignored before (e.g. ``--device`` with ``--pred_dir``) are still accepted and ignored.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from engine.options.cli_parser import CliParser
from engine.options.config import add_data_arguments
from engine.options.evaluate_flags import (add_boxes_json, add_case_arguments, add_checkpoint_outputs,
                                           add_checkpoint_sources, add_folder_arguments, add_inference_arguments,
                                           add_model_selection, add_output_csv, add_output_json, add_pred_dir)
from engine.options.evaluate_options import DATA_FLAGS
from engine.options.lesion_options import add_lesion_matching_arguments
from engine.options.stats_options import STATS_FIELDS, add_stats_arguments

MODEL_FREE = ("image_dir", "visualize_cases", "gradcam_layer", "gradcam_model", "gradcam_class", "models", "split",
              "splits_file", "tta", "save_predictions", "save_probabilities", "output_dir", *DATA_FLAGS)
BOX_REFUSED = (*MODEL_FREE, "label_dir", "output_csv", "prob_dir", "spacing", "lesionwise_dilation",
               "lesionwise_min_size")


def build_legacy_parser(description: str, epilog: str) -> argparse.ArgumentParser:
    """The flat parser of the flag-only forms: flags grouped as source, data, models, evaluation, lesions,
    output and statistics (data, lesion and statistics defaults: the recorded ones)."""
    p = CliParser(prog="evaluate_experiment.py", description=description, epilog=epilog)
    src_group = p.add_argument_group("what to evaluate (exactly one)")
    src = src_group.add_mutually_exclusive_group(required=True)
    add_checkpoint_sources(src)
    add_pred_dir(src, required=False)
    add_boxes_json(src, required=False)
    src.add_argument("--compare", type=Path, nargs="+", metavar="DIR",
                     help="sweep folders to compare as one: their runs' tables, statistics and charts go to "
                          "--output_dir (default: none)")
    src_group.add_argument("--aggregate", action="store_true",
                           help="with --results_dir: rebuild the sweep's tables and charts in DIR from DIR/jobs/ "
                                "and exit (default: off)")
    add_case_arguments(add_data_arguments(p, recorded=True))
    add_model_selection(p)
    evaluation = p.add_argument_group("evaluation")
    add_inference_arguments(evaluation)
    add_folder_arguments(evaluation)
    add_lesion_matching_arguments(p.add_argument_group("lesions"), recorded=True)
    output = p.add_argument_group("output")
    add_checkpoint_outputs(output)
    add_output_csv(output, required=False)
    add_output_json(output, required=False)
    add_stats_arguments(p, recorded=True)
    return p


def _changed(parser: argparse.ArgumentParser, args: argparse.Namespace, keep: Sequence[str]) -> list[str]:
    """The flags outside ``keep`` whose value is not the parser's default."""
    return [f"--{k}" for k, v in vars(args).items() if k not in keep and v != parser.get_default(k)]


def _set(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """The flags of ``names`` that are given (not None, not False)."""
    return [f"--{k}" for k in names if getattr(args, k) is not None and getattr(args, k) is not False]


def _refuse(used: list[str], message: str) -> None:
    if used:
        raise ValueError(f"{used} {message}")


def legacy_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, argparse.Namespace]:
    """The subcommand of a flag-only form and the namespace its options are read from.

    Raises:
        ValueError: a flag that does not apply to the form, or a flag the form needs is missing (naming it).
    """
    if args.compare is not None:
        if args.output_dir is None:
            raise ValueError("--compare needs --output_dir (where the comparison's tables and charts are written)")
        _refuse(_changed(parser, args, ("compare", "output_dir", *STATS_FIELDS)),
                "do not apply to --compare (it reduces the finished runs of the folders)")
        return "compare", argparse.Namespace(**vars(args), folders=args.compare)
    _refuse(_set(args, STATS_FIELDS), "apply to --compare only (a sweep's own statistics use the values recorded in "
                                      "its config.json, given to integrated_experiment.py)")
    if args.aggregate:
        if args.results_dir is None:
            raise ValueError("--aggregate needs --results_dir (the sweep folder whose tables are rebuilt)")
        _refuse(_changed(parser, args, ("results_dir", "aggregate")),
                "do not apply to --aggregate (it only rebuilds the tables of --results_dir)")
        return "aggregate", args
    if args.boxes_json is not None:
        if args.output_json is None:
            raise ValueError("--boxes_json needs --output_json (where the metrics are written)")
        _refuse(_set(args, BOX_REFUSED), "do not apply to --boxes_json (the file holds every box)")
        return "boxes", args
    return _model_or_folder_command(args), args


def _model_or_folder_command(args: argparse.Namespace) -> str:
    """``folders`` for ``--pred_dir``, else ``checkpoints``; the flags of the other refused."""
    if args.output_json is not None:
        raise ValueError("--output_json applies to --boxes_json only")
    if args.prob_dir is not None and args.pred_dir is None:
        raise ValueError("--prob_dir applies to --pred_dir with --task binary only")
    if args.pred_dir is not None:
        if args.label_dir is None or args.output_csv is None:
            raise ValueError("--pred_dir needs --label_dir and --output_csv")
        _refuse(_set(args, MODEL_FREE), "do not apply to --pred_dir (prediction folders are evaluated without a "
                                        "model)")
        return "folders"
    if args.output_csv is not None:
        raise ValueError("--output_csv applies to --pred_dir only (with a model the tables go to --output_dir)")
    return "checkpoints"
