"""Options of the ``evaluate_experiment.py`` subcommands: one small dataclass each, holding its flags
(``add_arguments``), its construction from the parsed flags (``from_args``) and its checks (``check``: flag
combinations that make no sense raise ``ValueError`` naming the flag, before anything is loaded).

Fields are the flags of the same name; ``engine.evaluate.commands.<subcommand>.run(options)`` does the work (its
module, which imports torch and the models, is imported only after ``check``). A class docstring is its
subcommand's ``-h`` description. A new subcommand (e.g. ``export``) is a class here, a handler module there and
one line in ``evaluate_experiment.COMMANDS``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Sequence, TypeVar

from engine.options.config import add_data_arguments, add_ensemble_arguments, add_external_arguments
from engine.options.evaluate_flags import (add_boxes_json, add_case_arguments, add_checkpoint_outputs,
                                           add_checkpoint_sources, add_folder_arguments, add_inference_arguments,
                                           add_label_arguments, add_model_selection, add_output_csv, add_output_json,
                                           add_pred_dir, add_spacing_argument)
from engine.options.lesion_options import (MATCHING_FLAGS, LesionOptions, add_lesion_matching_arguments,
                                           lesion_options_for_evaluation)
from engine.options.stats_options import add_stats_arguments

CT_FLAGS = ("test_image_dir", "test_label_dir", "patient_regex", "manifest", "mask_dir", "hu_window", "target_spacing",
            "allow_pickle", "annotations", "nodule_hu_threshold", "use_subset_folds")  # and spacing (folders)
DATA_FLAGS = ("data_path", "dataset_version", "synthetic_cases", "synthetic_size", "synthetic_seed", "cache_dir",
              "max_samples", *CT_FLAGS)
FOLDER_LESION_FLAGS = ("min_lesion_size", "lesion_hit", "lesion_score_threshold")  # lesion-wise rules need a model
BOX_LESION_FLAGS = ("lesion_hit", "lesion_score_threshold")  # the boxes are given: no component size

Options = TypeVar("Options", bound="CommandOptions")


def given(args: Any, names: Sequence[str]) -> dict[str, Any]:
    """The flags ``names`` that ``args`` sets (not None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


@dataclass
class CommandOptions:
    """Base of the subcommands' options. ``summary``: the line of the subcommand in ``evaluate_experiment.py -h``."""

    summary: ClassVar[str] = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the subcommand's flags to its parser."""
        raise NotImplementedError

    @classmethod
    def from_args(cls: type[Options], args: Any) -> Options:
        """The options from parsed flags (a namespace with the fields' names; None: the field's default)."""
        return cls(**given(args, [f.name for f in fields(cls)]))

    def check(self) -> None:
        """Raise ``ValueError`` naming the flag for a combination that makes no sense (none by default)."""


def lesion_options(flags: dict[str, Any], recorded: dict[str, Any] | None = None) -> LesionOptions:
    """Lesion matching: each flag given in ``flags``, else the value ``recorded`` (a sweep's config.json or a
    checkpoint's meta), else volbench's default. Raises ``ValueError`` for a value out of range."""
    return lesion_options_for_evaluation(SimpleNamespace(**flags), recorded)


@dataclass
class PictureOptions:
    """``--visualize_cases`` (N or case ids) and Grad-CAM (``--gradcam_layer`` of ``--gradcam_model``'s run, class
    ``--gradcam_class``) of ``checkpoints``."""

    visualize_cases: list[str] | None = None
    gradcam_layer: str | None = None
    gradcam_model: str | None = None
    gradcam_class: int | None = None


@dataclass
class CheckpointsOptions(CommandOptions):
    """Evaluate the checkpoints of a finished sweep (--results_dir: every ok run, its test split or each run's own
    fold's val cases) or checkpoint files (--checkpoint: all cases, or --split of --splits_file).

    Data: the flags recorded by the sweep (config.json) or in the checkpoints, unless --data_path/--dataset_version
    name other data (then every case is used unless --split is given; --cache_dir, --max_samples and --synthetic_*
    override one by one), or --image_dir I [--label_dir L] with I/{case}_{t1,t1ce,t2,flair}.nii.gz and labels
    L/{case}[_seg].nii.gz. Writes per_case_results.csv, integrated_experiment_results.csv, model_comparison.csv,
    evaluation_summary.json, the charts, predictions/<run>/{case}.nii.gz and the pictures into --output_dir (default:
    DIR/evaluation_<split or data folder>[_tta] of --results_dir; the sweep's own tables are never touched).
    """

    summary: ClassVar[str] = "evaluate a finished sweep's checkpoints (--results_dir) or .pth files (--checkpoint)"

    results_dir: Path | None = None
    checkpoint: list[Path] | None = None
    models: list[str] | None = None
    split: str | None = None
    splits_file: Path | None = None
    image_dir: Path | None = None
    label_dir: Path | None = None
    label_convention: str = "brats2021"
    data: dict[str, Any] = field(default_factory=dict)  # the data flags given (the others: as recorded)
    lesions: dict[str, Any] = field(default_factory=dict)  # the lesion matching flags given (the others: as recorded)
    tta: bool = False
    device: str = "auto"
    no_amp: bool = False
    output_dir: Path | None = None
    save_predictions: bool = False
    save_probabilities: bool = False
    probability_format: str = "nifti"
    pictures: PictureOptions = field(default_factory=PictureOptions)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        sources = parser.add_argument_group("what to evaluate (exactly one)").add_mutually_exclusive_group(
            required=True)
        add_checkpoint_sources(sources)
        add_case_arguments(add_data_arguments(parser, recorded=True))
        add_model_selection(parser)
        add_inference_arguments(parser.add_argument_group("evaluation"))
        add_lesion_matching_arguments(parser.add_argument_group("lesions"), recorded=True)
        add_checkpoint_outputs(parser.add_argument_group("output"))

    @classmethod
    def from_args(cls, args: Any) -> "CheckpointsOptions":
        plain = [f.name for f in fields(cls) if f.name not in ("data", "lesions", "pictures")]
        pictures = PictureOptions(**given(args, [f.name for f in fields(PictureOptions)]))
        return cls(**given(args, plain), data=given(args, (*DATA_FLAGS, "spacing")),
                   lesions=given(args, MATCHING_FLAGS), pictures=pictures)

    @property
    def other_data(self) -> bool:
        """True when the data is not the sweep's own: --image_dir, or a dataset named by the data flags."""
        return self.image_dir is not None or any(k in self.data for k in ("data_path", "dataset_version", "manifest"))

    def output_path(self) -> Path:
        """--output_dir, else DIR/evaluation_<split or data folder>[_tta] of a sweep, else
        baseline_results/evaluation_YYYYMMDD_HHMMSS."""
        if self.output_dir is not None:
            return Path(self.output_dir)
        if self.results_dir is None:
            return Path("baseline_results") / f"evaluation_{datetime.now():%Y%m%d_%H%M%S}"
        if self.image_dir is not None or "data_path" in self.data:
            name = Path(self.image_dir if self.image_dir is not None else self.data["data_path"]).name
        elif "dataset_version" in self.data:  # other data: never the folder of the sweep's own split
            name = self.data["dataset_version"]
        else:
            name = self.split or "test"
        return Path(self.results_dir) / f"evaluation_{name}{'_tta' if self.tta else ''}"

    def check(self) -> None:
        if (self.results_dir is None) == (self.checkpoint is None):
            raise ValueError("give one of --results_dir (a finished sweep) or --checkpoint (files)")
        if self.label_dir is not None and self.image_dir is None:
            raise ValueError("--label_dir needs --image_dir (or, for prediction folders, --pred_dir: the folders "
                             "subcommand)")
        if self.image_dir is not None and self.split is not None:
            raise ValueError("--split does not apply with --image_dir (every case of the folder is used)")
        if self.splits_file is not None and (self.results_dir is not None or self.split is None):
            raise ValueError("--splits_file is used with --checkpoint and --split only (a --results_dir uses its own "
                             "splits.json; without --split every case would be evaluated)")
        if self.models and self.results_dir is None:
            raise ValueError("--models selects runs of --results_dir; it does not apply to --checkpoint")
        self._check_pictures()
        if (self.results_dir is not None and self.output_dir is not None
                and Path(self.output_dir).resolve() == Path(self.results_dir).resolve()):
            raise ValueError(f"--output_dir {self.output_dir} is the --results_dir: the evaluation would overwrite "
                             f"the sweep's own tables; choose another folder")

    def _check_pictures(self) -> None:
        pictures = self.pictures
        if pictures.gradcam_layer and not pictures.visualize_cases:
            raise ValueError("--gradcam_layer needs --visualize_cases (which cases to draw)")
        if not pictures.gradcam_layer and (pictures.gradcam_model is not None or pictures.gradcam_class is not None):
            raise ValueError("--gradcam_model/--gradcam_class need --gradcam_layer")


@dataclass
class FoldersOptions(CommandOptions):
    """Evaluate a folder of predicted label maps against a folder of labels, no model: writes --output_csv (one row
    per case) and OUT_summary.json beside it (means, NaN counts). With --task binary the lesion metrics are added
    (boxes from the predicted masks' components, scored by the --prob_dir probability maps when given, else 1.0):
    per-case lesion counts in the CSV, AP/mAP/mAR/FROC under "lesion_metrics" in the summary.
    """

    summary: ClassVar[str] = "evaluate prediction folders against labels, no model (--pred_dir, --label_dir)"

    pred_dir: Path
    label_dir: Path
    output_csv: Path
    task: str = "brats"
    label_convention: str = "brats2021"
    spacing: tuple[float, float, float] | None = None
    prob_dir: Path | None = None
    lesions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        what = parser.add_argument_group("what to evaluate")
        add_pred_dir(what, required=True)
        add_label_arguments(what, required=True)
        group = parser.add_argument_group("evaluation")
        add_folder_arguments(group)
        add_spacing_argument(group)
        add_lesion_matching_arguments(parser.add_argument_group("lesions (--task binary)"), names=FOLDER_LESION_FLAGS)
        add_output_csv(parser.add_argument_group("output"), required=True)

    @classmethod
    def from_args(cls, args: Any) -> "FoldersOptions":
        plain = [f.name for f in fields(cls) if f.name != "lesions"]
        return cls(**given(args, plain), lesions=given(args, FOLDER_LESION_FLAGS))

    def summary_path(self) -> Path:
        """``OUT.csv`` -> ``OUT_summary.json`` in the same folder."""
        return Path(self.output_csv).with_name(f"{Path(self.output_csv).stem}_summary.json")


@dataclass(frozen=True)
class LunaSubmission:
    """LUNA16's evaluation files: a submission CSV (``seriesuid,coordX,coordY,coordZ,probability``, world mm),
    the reference nodules, the excluded findings (optional) and the list of scans (``seriesuids.csv``)."""

    candidates: Path
    annotations: Path
    series: Path
    excluded: Path | None = None

    @classmethod
    def from_args(cls, args: Any) -> "LunaSubmission | None":
        """The files of the flags, None without --luna_candidates; ``ValueError`` naming a missing companion flag."""
        if getattr(args, "luna_candidates", None) is None:  # (the old flag-only form has none of these flags)
            extra = [f"--{k}" for k in ("annotations", "excluded", "series") if getattr(args, k, None) is not None]
            if extra:
                raise ValueError(f"boxes: {', '.join(extra)} go with --luna_candidates CSV")
            return None
        missing = [f"--{k}" for k in ("annotations", "series") if getattr(args, k) is None]
        if missing:
            raise ValueError(f"boxes --luna_candidates needs {' and '.join(missing)} (LUNA16's annotations.csv and "
                             "seriesuids.csv)")
        return cls(candidates=args.luna_candidates, annotations=args.annotations, series=args.series,
                   excluded=args.excluded)


def add_luna_submission_arguments(container: Any) -> None:
    """``--luna_candidates``, ``--annotations``, ``--excluded``, ``--series`` of ``boxes``."""
    container.add_argument("--luna_candidates", type=Path, default=None, metavar="CSV",
                           help="score a LUNA16 submission CSV (seriesuid,coordX,coordY,coordZ,probability, world mm) "
                                "by the challenge's FROC rules (default: none)")
    container.add_argument("--annotations", type=Path, default=None, metavar="CSV",
                           help="--luna_candidates: LUNA16's annotations.csv, the reference nodules (default: none, "
                                "required with --luna_candidates)")
    container.add_argument("--excluded", type=Path, default=None, metavar="CSV",
                           help="--luna_candidates: annotations_excluded.csv; marks on these findings are neither hits "
                                "nor false positives (default: none, no excluded findings)")
    container.add_argument("--series", type=Path, default=None, metavar="CSV",
                           help="--luna_candidates: seriesuids.csv, every scan of the evaluation (no header row); "
                                "false positives per scan divide by their number (default: none, required with "
                                "--luna_candidates)")


@dataclass
class BoxesOptions(CommandOptions):
    """Score the detections of another tool, given as boxes, no model: --boxes_json holds {case: {"pred_boxes":
    [[x1, y1, z1, x2, y2, z2], ...], "pred_scores": [...], "gt_boxes": [...]}} (voxels over array axes 0, 1, 2, max
    exclusive); --output_json gets ap_10 ... froc_cpm and the per-case counts.
    """

    summary: ClassVar[str] = ("score detections given as boxes in a JSON file (--boxes_json) or as a LUNA16 "
                              "submission CSV (--luna_candidates), no model")

    boxes_json: Path | None
    output_json: Path
    lesions: dict[str, Any] = field(default_factory=dict)
    luna: LunaSubmission | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        what = parser.add_argument_group("what to evaluate (--boxes_json, or --luna_candidates with its files)")
        add_boxes_json(what, required=False)
        add_luna_submission_arguments(what)
        add_lesion_matching_arguments(parser.add_argument_group("lesions (--boxes_json)"), names=BOX_LESION_FLAGS)
        add_output_json(parser.add_argument_group("output"), required=True)

    @classmethod
    def from_args(cls, args: Any) -> "BoxesOptions":
        luna = LunaSubmission.from_args(args)
        if (luna is None) == (args.boxes_json is None):
            raise ValueError("boxes: give --boxes_json FILE, or --luna_candidates CSV with --annotations CSV and "
                             "--series CSV (one of the two)")
        return cls(boxes_json=args.boxes_json, output_json=args.output_json, lesions=given(args, BOX_LESION_FLAGS),
                   luna=luna)


@dataclass
class AggregateOptions(CommandOptions):
    """Rebuild a sweep's tables and charts from its per-job folders (DIR/jobs/), written INTO DIR (the only
    subcommand that writes there; e.g. after a killed sweep, or while shards of a sweep still run). A folder made
    before per-job results (no jobs/) is left as it is, with a message.
    """

    summary: ClassVar[str] = "rebuild a sweep's tables and charts from its job folders, in place (--results_dir)"

    results_dir: Path
    external_predictions: list[str] | None = None
    external_label_map: list[str] | None = None
    ensemble: list[str] | None = None
    postprocess: bool = False

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("what to rebuild")
        group.add_argument(
            "--results_dir", type=Path, required=True, metavar="DIR",
            help="the sweep folder whose tables and charts are rebuilt from DIR/jobs/ (default: none, required)")
        add_external_arguments(group)
        add_ensemble_arguments(group)

    def check(self) -> None:
        if self.external_label_map and not self.external_predictions:
            raise ValueError("--external_label_map needs --external_predictions")


@dataclass
class CompareOptions(CommandOptions):
    """Several sweeps in one comparison: the union of their runs, with the same tables, statistics and charts,
    written into --output_dir. Folders whose recorded data flags or test cases differ are refused, and so is a run
    found in two folders. The statistics flags default to the first folder's recorded values.
    """

    summary: ClassVar[str] = "compare sweeps as one: their runs' tables, statistics and charts (DIR DIR ...)"

    folders: list[Path]
    output_dir: Path
    baseline: str | None = None
    stats_seed: int | None = None
    bootstrap_resamples: int | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        what = parser.add_argument_group("what to compare")
        what.add_argument("folders", type=Path, nargs="+", metavar="DIR",
                          help="sweep folders whose runs are compared as one (default: none, at least one)")
        what.add_argument("--output_dir", type=Path, required=True, metavar="OUT",
                          help="where the comparison's tables, statistics and charts are written (default: none, "
                               "required)")
        add_stats_arguments(parser, recorded=True)


EXPORT_FORMATS = ("nnunet", "datalist")


@dataclass
class ExportOptions(CommandOptions):
    """Write a sweep's cases and split for another tool: nnU-Net's raw layout (imagesTr/labelsTr/imagesTs/labelsTs,
    dataset.json with BraTS' regions, splits_final.json equal to the sweep's folds) or a MONAI datalist (the same
    files, datalist.json with each validation case's fold and the test cases), so that nnU-Net or Auto3DSeg train on
    exactly the sweep's split. Images keep their original voxels and space; labels are written as consecutive
    integers (BraTS as nnU-Net's conversion: 1 oedema, 2 necrotic / non-enhancing core, 3 enhancing). The data flags
    default to the sweep's recorded ones (config.json).
    """

    summary: ClassVar[str] = "write a sweep's cases and folds as an nnU-Net raw dataset or a MONAI datalist"

    results_dir: Path
    output_dir: Path
    format: str = "nnunet"
    data_path: str | None = None
    cache_dir: str | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        what = parser.add_argument_group("what to export")
        what.add_argument("--results_dir", type=Path, required=True, metavar="DIR",
                          help="the sweep whose split (DIR/splits.json) and data (DIR/config.json) are exported "
                               "(default: none, required)")
        what.add_argument("--format", choices=EXPORT_FORMATS, default="nnunet",
                          help="nnunet: nnU-Net v2 raw dataset; datalist: MONAI Auto3DSeg datalist (default: nnunet)")
        what.add_argument("--output_dir", type=Path, required=True, metavar="OUT",
                          help="the new dataset folder, e.g. nnUNet_raw/Dataset501_BraTS (must not exist or be "
                               "empty; default: none, required)")
        data = parser.add_argument_group("where the data is (default: as the sweep recorded it)")
        data.add_argument("--data_path", default=None, metavar="DIR",
                          help="the dataset's folder, when it moved since the sweep (default: the recorded one)")
        data.add_argument("--cache_dir", default=None, metavar="DIR",
                          help="the cache holding the synthetic phantoms (default: the recorded one)")
