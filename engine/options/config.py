"""Experiment configuration: the CLI flags of ``integrated_experiment.py`` and their resolved values.

The flag names follow the seed system's option table (users' muscle memory) plus what a trainer needs
(lr, optimizer, scheduler, AMP, grad accumulation, clipping, patience, patch size, overlap, resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from dataio.adapters import DATASET_VERSIONS, dataset_info
from dataio.cache import default_synthetic_size
from engine.options.cli_parser import CliParser, add_list_models_argument
from losses import list_losses
from engine.options.data_options import DataOptions, add_described_arguments, add_luna_arguments, effective_hu_window
from engine.options.lesion_options import LesionOptions, add_lesion_arguments
from engine.options.parallel_options import PARALLEL_MODES, add_parallel_arguments, parse_shard
from engine.options.stats_options import StatsOptions, add_stats_arguments
from engine.options.tracking_options import TrackingOptions, add_tracking_arguments, tracker_list
from engine.tasks.promptable import TRAIN_CLICKS, TRAIN_PROMPTS
from engine.trainer_settings import TrainerSettings
from utils.pretrained import check_pretrained_models, parse_pretrained, pretrained_for

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "plateau", "step", "poly", "none")


@dataclass
class ExperimentConfig(DataOptions, LesionOptions, TrainerSettings, StatsOptions, TrackingOptions):
    """Resolved settings of one sweep (the data flags come from :class:`DataOptions`, the lesion track's from
    :class:`LesionOptions`, the trainer's from :class:`TrainerSettings`).

    ``explicit_flags``: the trainer fields the user set on the command line, which a model's own training
    defaults (``ModelInfo.train_defaults``) never replace.

    Sizes are voxels (D, H, W); times seconds; lr per optimizer step.
    """

    models: list[str] = field(default_factory=lambda: ["unet3d_xs"])
    seeds: list[int] = field(default_factory=lambda: [24])
    dim: str | None = None
    use_pretrained: bool = False
    pretrained_checkpoint: list[str] | None = None  # entries as typed: PATH or MODEL=PATH (utils.pretrained)
    allow_pickle_checkpoint: bool = False
    fn_weight: float | None = None
    context_slices: int | None = None
    foreground_fraction: float | None = None
    freeze_encoder: list[str] | None = None
    gradient_checkpointing: list[str] | None = None
    train_prompts: str = "none"
    train_clicks: int = TRAIN_CLICKS
    num_workers: int = 0
    sharing_strategy: str = "file_descriptor"
    use_5fold: bool = False
    split_seed: int = 42
    splits_file: str | None = None
    output_dir: str | None = None
    resume: bool = False
    keep_latest: bool = False
    patch_size: tuple[int, int, int] | None = None
    samples_per_volume: int = 8
    val_overlap: float = 0.1
    device: str = "auto"
    deterministic: bool = False
    cpu_conv_split: bool = True
    pam_runs: int = 5
    latency_runs: int = 10
    skip_efficiency: bool = False
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tiny: bool = False
    parallel: str | None = None
    shard: str | None = None
    sync_bn: bool = False
    external_predictions: list[str] | None = None  # NAME=DIR entries as typed (engine.evaluate.external)
    external_label_map: list[str] | None = None  # [NAME=]MAP entries as typed
    ensemble: list[str] | None = None  # folds | a+b entries as typed (engine.evaluate.ensemble)
    postprocess: bool = False  # nnU-Net's largest-component rule chosen on validation (engine.evaluate.postprocess)
    explicit_flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag for values outside their range."""
        checks = [
            (self.epochs >= 0, f"--epochs must be >= 1 (0: zero-shot, with a checkpoint for every model), got "
                               f"{self.epochs}"),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}"),
            (len(self.seeds) >= 1, "--seeds needs at least one seed"),
            (len(self.models) >= 1, "--models needs at least one model"),
            (self.num_workers >= 0, f"--num_workers must be >= 0, got {self.num_workers}"),
            (self.grad_accum >= 1, f"--grad_accum must be >= 1, got {self.grad_accum}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.lr_decoder is None or self.lr_decoder > 0, f"--lr_decoder must be > 0, got {self.lr_decoder}"),
            (self.train_prompts in TRAIN_PROMPTS, f"--train_prompts must be one of {TRAIN_PROMPTS}, got "
                                                  f"{self.train_prompts!r}"),
            (self.train_clicks >= 1, f"--train_clicks must be >= 1, got {self.train_clicks}"),
            (0.0 <= self.val_overlap < 1.0, f"--val_overlap must be in [0, 1), got {self.val_overlap}"),
            (self.patience >= 0, f"--patience must be >= 0 (0 disables early stopping), got {self.patience}"),
            (self.samples_per_volume >= 1, f"--samples_per_volume must be >= 1, got {self.samples_per_volume}"),
            (self.pam_runs >= 1 and self.latency_runs >= 1, "--pam_runs and --latency_runs must be >= 1"),
            (self.max_samples is None or self.max_samples >= 1, f"--max_samples must be >= 1, got {self.max_samples}"),
            (self.dim in (None, "2d", "3d"), f"--dim must be 2d or 3d, got {self.dim!r}"),
            (self.dataset_version in DATASET_VERSIONS,
             f"--dataset_version {self.dataset_version!r} is not one of {DATASET_VERSIONS}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r} is not one of {OPTIMIZERS}"),
            (self.scheduler in SCHEDULERS, f"--scheduler {self.scheduler!r} is not one of {SCHEDULERS}"),
            (self.context_slices is None or self.context_slices >= 0,
             f"--context_slices must be >= 0, got {self.context_slices}"),
            (self.fn_weight is None or self.fn_weight >= 0, f"--fn_weight must be >= 0, got {self.fn_weight}"),
            (self.foreground_fraction is None or 0.0 <= self.foreground_fraction <= 1.0,
             f"--foreground_fraction must be in [0, 1], got {self.foreground_fraction}"),
            (self.loss in list_losses(), f"--loss {self.loss!r} is not one of {list_losses()}"),
            (self.patch_size is None or all(p >= 8 for p in self.patch_size),
             f"--patch_size values must be >= 8, got {self.patch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for message in self.lesion_errors():
            raise ValueError(message)
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.lr_step_size is not None and self.lr_step_size < 1:
            raise ValueError(f"--lr_step_size must be >= 1 epoch, got {self.lr_step_size}")
        if self.parallel is not None and self.parallel not in PARALLEL_MODES:
            raise ValueError(f"--parallel {self.parallel!r} is not one of {PARALLEL_MODES}")
        parse_shard(self.shard)
        self._validate_pretrained()
        self.validate_data()  # the data flags (engine.options.data_options): CT flags, layouts, --data_path
        self.validate_stats()  # --baseline, --stats_seed, --bootstrap_resamples (engine.options.stats_options)
        self.validate_tracking()  # --tracker and its packages, --wandb_project (engine.options.tracking_options)

    def _validate_pretrained(self) -> None:
        """--use_pretrained, --pretrained_checkpoint entries (files exist, one per model, MODEL= names among the
        resolved --models; with --epochs 0 every model has one) and --allow_pickle_checkpoint. A single string is
        taken as a one-entry list."""
        if isinstance(self.pretrained_checkpoint, str):
            self.pretrained_checkpoint = [self.pretrained_checkpoint]
        entries = " ".join(self.pretrained_checkpoint or [])
        if self.use_pretrained and not self.pretrained_checkpoint:
            raise ValueError("--use_pretrained needs --pretrained_checkpoint PATH (nothing is downloaded)")
        if self.pretrained_checkpoint and not self.use_pretrained:
            raise ValueError(f"--pretrained_checkpoint {entries} is only used with --use_pretrained; "
                             "add the flag or drop the path")
        if self.allow_pickle_checkpoint and not self.pretrained_checkpoint:
            raise ValueError("--allow_pickle_checkpoint is only used with --use_pretrained --pretrained_checkpoint")
        zero_shot = "--epochs must be >= 1, or 0 (zero-shot) with --use_pretrained and a --pretrained_checkpoint"
        if self.epochs == 0 and not (self.use_pretrained and self.pretrained_checkpoint):
            raise ValueError(f"{zero_shot} for every model; none was given")
        if self.pretrained_checkpoint:
            from models import resolve_model_names  # the registry, only when checkpoints are given
            models = resolve_model_names(self.models)
            mapping = parse_pretrained(self.pretrained_checkpoint)
            check_pretrained_models(mapping, models)
            without = [m for m in models if pretrained_for(m, mapping) is None]
            if self.epochs == 0 and without:
                raise ValueError(f"{zero_shot} for every model; none for {', '.join(without)}")


def add_data_arguments(parser: argparse.ArgumentParser, *, recorded: bool = False) -> argparse._ArgumentGroup:
    """Flags that choose and shape the dataset (shared with ``evaluate_experiment.py``); returns their group.

    ``recorded=True`` (the evaluation CLI): every default is None, meaning "the value recorded in the
    sweep's config.json or the checkpoint", and the help says so; the sweep's own default follows it.
    """
    g = parser.add_argument_group("data")
    then = "the recorded value, else " if recorded else ""
    g.add_argument("--data_path", default=None, metavar="DIR",
                   help=f"dataset root folder (default: {then}none: the embedded synthetic phantoms are generated "
                        "and used)")
    g.add_argument("--dataset_version", default=None, choices=DATASET_VERSIONS,
                   help=f"layout under --data_path (default: {then}synthetic without --data_path, brats2018 with it)")
    g.add_argument("--synthetic_cases", type=int, default=12, metavar="N",
                   help=f"number of synthetic phantoms (default: {then}12)")
    g.add_argument("--synthetic_size", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                   help=f"size of each synthetic phantom, voxels (default: {then}64 64 64; 64 64 16 for "
                        "synthetic_ich, with 4-5 mm slices along W)")
    g.add_argument("--synthetic_seed", type=int, default=0, help=f"seed of the synthetic phantoms (default: {then}0)")
    g.add_argument("--cache_dir", default=None, metavar="DIR",
                   help=f"preprocessing cache folder (default: {then}$VOLBENCH_CACHE, else ~/.cache/volbench)")
    g.add_argument("--max_samples", type=int, default=None, metavar="N",
                   help=f"use only the first N cases, for quick runs (default: {then}none: every case)")
    _add_ct_data_arguments(g, then)
    add_luna_arguments(g, recorded=recorded)
    add_described_arguments(g, recorded=recorded)
    if recorded:
        parser.set_defaults(**{a.dest: None for a in g._group_actions})
    return g


def _add_ct_data_arguments(g: argparse._ArgumentGroup, then: str = "") -> None:
    """Flags of the CT versions (ich, synthetic_ich); refused with the BraTS ones. ``then``: the evaluation
    CLI's "the recorded value, else " before each default."""
    g.add_argument("--test_image_dir", default=None, metavar="DIR",
                   help="ich: folder of separate test images, named and stored like DIR/images; they form the test "
                        f"split, train/val/folds are drawn from the other cases (default: {then}none, the test split "
                        "is drawn)")
    g.add_argument("--test_label_dir", default=None, metavar="DIR",
                   help=f"ich: labels of --test_image_dir, named like the images (default: {then}none; needed with "
                        "--test_image_dir)")
    g.add_argument("--patient_regex", default=None, metavar="REGEX",
                   help="ich: patient id = the first group (or the whole match) of REGEX searched in each file name "
                        "without extension, e.g. '^(P[0-9]+)_'; a patient's scans stay in one split; a name that "
                        f"does not match is an error (default: {then}none, one patient per file)")
    g.add_argument("--manifest", default=None, metavar="FILE",
                   help="ich: CSV with columns path,ich,patient_id (path relative to the CSV's folder or absolute; "
                        f"ich 0/1 = haemorrhage or not), used instead of --data_path (default: {then}none, the images/ "
                        "and labels/ folders under --data_path)")
    g.add_argument("--mask_dir", default=None, metavar="DIR",
                   help="ich with --manifest: folder of the masks, named like the image files (.nii.gz, .nii or "
                        f".npy); a row with ich=0 and no mask gets an all-background label (default: {then}none)")
    g.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SX", "SY", "SZ"),
                   help="ich: voxel spacing in mm of .npy and pickled files, which carry none; NIfTI files use "
                        "their header; evaluate_experiment.py --pred_dir: the spacing of every file, headers "
                        f"included (default: {then}1.0 1.0 1.0)")
    g.add_argument("--hu_window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="CT: Hounsfield units mapped to [0, 1], clipped outside (default: "
                        f"{then}the dataset's own: 0 120 for ich and synthetic_ich, -1000 1000 for luna16 and "
                        "synthetic_luna)")
    g.add_argument("--target_spacing", type=float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                   help="CT: resample every scan to this spacing in mm, image trilinear, label nearest (default: "
                        f"{then}none, each scan keeps its own grid)")
    g.add_argument("--allow_pickle", action="store_true",
                   help="ich: read .pkl/.pickle images and masks; unpickling runs arbitrary code stored in the "
                        f"file, so use it only for files you trust (default: {then}off, pickled files are refused)")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``integrated_experiment.py``: flags grouped as data, models, training,
    evaluation, efficiency, output and parallel runs; every help names its default and unit."""
    p = CliParser(prog="integrated_experiment.py",
                  description="Train and compare segmentation and lesion-detection models over seeds and folds; write "
                              "CSVs and charts. Sizes are voxels (D H W), times seconds, memory MB (2^20 bytes).")
    _add_data_and_split_arguments(p)
    _add_model_arguments(p)
    _add_training_arguments(p)
    _add_evaluation_arguments(p)
    add_lesion_arguments(p)
    _add_efficiency_arguments(p)
    _add_output_arguments(p)
    add_parallel_arguments(p)
    add_stats_arguments(p)
    add_tracking_arguments(p)
    return p


def _add_data_and_split_arguments(p: argparse.ArgumentParser) -> None:
    g = add_data_arguments(p)
    g.add_argument("--use_5fold", action="store_true",
                   help="5-fold cross-validation over the non-test cases (default: off, one 80/10/10 split)")
    g.add_argument("--split_seed", type=int, default=42,
                   help="seed of the case split, independent of the training seeds (default: %(default)s)")
    g.add_argument("--splits_file", default=None, metavar="FILE",
                   help="reuse the case ids of this splits.json (default: none, split with --split_seed)")
    g.add_argument("--num_workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 1)),
                   help="DataLoader worker processes; 0 loads in the main process (default: CPUs - 1, at most 8: "
                        "%(default)s here)")
    g.add_argument("--sharing_strategy", choices=("file_descriptor", "file_system"), default="file_descriptor",
                   help="how DataLoader workers share tensors (default: %(default)s)")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--models", nargs="+", default=["unet3d_xs"], metavar="NAME",
                   help="registry names or fnmatch wildcards, e.g. 'unet3d_*_xs' (default: unet3d_xs)")
    add_list_models_argument(g)
    g.add_argument("--dim", choices=("2d", "3d"), default=None,
                   help="dimensionality to train (default: none, each model's native one)")
    g.add_argument("--context_slices", type=int, default=None, metavar="K",
                   help="2D models read the slice and K neighbours on each side as channels (ends: the edge slice "
                        "repeated); applies to every 2D model (default: none, each model's own: 3 for unet2d_luna, "
                        "0 for the others)")
    g.add_argument("--tiny", action="store_true",
                   help="build every model in its tiny test configuration: a pipeline smoke test, not results "
                        "(default: off)")
    g.add_argument("--model_kwargs", type=_json_dict, default={}, metavar="JSON",
                   help='builder overrides per model, e.g. \'{"unet3d_xs": {"base": 8}}\' (default: none)')
    g.add_argument("--use_pretrained", action="store_true",
                   help="initialise from --pretrained_checkpoint (default: off, random initialisation)")
    g.add_argument("--pretrained_checkpoint", nargs="+", default=None, metavar="[MODEL=]FILE",
                   help="local .pth files: FILE for every model, MODEL=FILE for that model only (it overrides a bare "
                        "FILE); one entry per model. Read: a volbench checkpoint, a training dict with "
                        "model_state_dict (SAM-Med3D), a dict with state_dict, or a bare state dict; 'module.' "
                        "prefixes are stripped; every weight of the model must be in the file with its shape. "
                        "Nothing is downloaded (default: none)")
    g.add_argument("--allow_pickle_checkpoint", action="store_true",
                   help="load --pretrained_checkpoint files holding objects other than tensors, plain data, "
                        "argparse.Namespace and NumPy scalars with full unpickling, which runs code stored in the "
                        "file: only for files you trust (default: off, such files are refused)")


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--seeds", type=int, nargs="+", default=[24], metavar="SEED",
                   help="training seeds; each model is trained once per seed (and fold) (default: 24)")
    g.add_argument("--epochs", type=int, default=10,
                   help="training epochs per job, >= 1; 0 evaluates every model as loaded, zero-shot, and needs "
                        "--use_pretrained with a --pretrained_checkpoint for each model (default: %(default)s)")
    g.add_argument("--batch_size", type=int, default=1,
                   help="patches per optimizer step, per process under torchrun (default: %(default)s)")
    g.add_argument("--patch_size", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                   help="training patch and sliding window, voxels, rounded up to each model's divisibility "
                        "(default: none, each model's own default patch)")
    g.add_argument("--samples_per_volume", type=int, default=8,
                   help="patches drawn per training case per epoch (default: %(default)s)")
    g.add_argument("--foreground_fraction", type=float, default=None, metavar="F",
                   help="share of training patches or slices centred on a foreground voxel, in [0, 1] (default: "
                        "none, each model's own: 1.0 for unet2d_luna, the chapter's positive slices; 1/3 for the "
                        "others)")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate per optimizer step (default: %(default)s)")
    g.add_argument("--lr_decoder", type=float, default=None,
                   help="models with a declared image encoder (sam_med3d, vista3d): learning rate of everything "
                        "outside the encoder, which keeps --lr (default: none, --lr for all)")
    g.add_argument("--freeze_encoder", nargs="*", default=None, metavar="MODEL",
                   help="freeze the image encoder of these models (no names: every model of the sweep): no "
                        "gradient, eval mode; a model without a declared encoder is an error (default: none)")
    g.add_argument("--gradient_checkpointing", "--use_gradient_checkpointing", nargs="*", default=None,
                   metavar="MODEL", help="recompute these models' encoder activations in the backward pass to save "
                   "memory (no names: every model); a model that does not support it is an error (default: none)")
    g.add_argument("--train_prompts", choices=TRAIN_PROMPTS, default="none",
                   help="promptable models (sam_med3d, vista3d): none = prompt-free fine-tuning; clicks = each step "
                        "also simulates --train_clicks clicks (random rule, from the previous mask's errors) and adds "
                        "the loss after each; automatic models of the sweep ignore it with a warning, a sweep without "
                        "a promptable model is refused (default: %(default)s)")
    g.add_argument("--train_clicks", type=int, default=TRAIN_CLICKS, metavar="N",
                   help="--train_prompts clicks: clicks (decodings) per training step; the default is SAM-Med3D's "
                        "train.py, which runs interaction(num_clicks=11) per step (its --num_clicks 5 is its "
                        "validation script's) (default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=1e-5, help="optimizer weight decay (default: %(default)s)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="optimizer (default: %(default)s; models with their own recipe, e.g. RetinaNet's SGD, use "
                        "it for every training flag left unset)")
    g.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum, Nesterov (default: none, 0.99 as nnU-Net; RetinaNet's recipe 0.9)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="cosine",
                   help="learning-rate schedule, stepped once per epoch (default: %(default)s)")
    g.add_argument("--lr_step_size", type=int, default=None, metavar="EPOCHS",
                   help="epochs per x0.1 step of --scheduler step (default: none, a third of the run; RetinaNet's "
                        "recipe 50)")
    loss = g.add_mutually_exclusive_group()
    loss.add_argument("--loss", choices=list_losses(), default=None, metavar="NAME",
                      help=f"training loss of the segmentation models, one of {', '.join(list_losses())}: nnunet = "
                           "0.7 Dice + 0.3 cross-entropy, standard = 0.5 Dice + 0.5 cross-entropy, luna_dice = the "
                           "LUNA chapter's soft Dice + --fn_weight x its false-negative Dice (binary data only) "
                           "(default: none: each model's own, nnunet for all but unet2d_luna's luna_dice)")
    loss.add_argument("--use_nnunet_loss", action="store_true",
                      help="alias of --loss nnunet (default: on unless another loss is chosen)")
    loss.add_argument("--use_standard_loss", action="store_true",
                      help="alias of --loss standard (default: off)")
    g.add_argument("--fn_weight", type=float, default=None,
                   help="--loss luna_dice: weight of the false-negative Dice term (default: none, the loss's 8)")
    g.add_argument("--no_amp", action="store_true",
                   help="disable mixed precision (default: AMP on CUDA; never used on the CPU)")
    g.add_argument("--grad_accum", type=int, default=1,
                   help="optimizer step every N batches (default: %(default)s)")
    g.add_argument("--max_grad_norm", type=float, default=12.0,
                   help="clip the L2 norm of all gradients to this; <= 0 disables (default: %(default)s)")
    g.add_argument("--patience", type=int, default=0,
                   help="early stopping after N validations without improvement (epochs, with --val_every 1); 0 "
                        "disables (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto, CUDA if present)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels: the same results on a rerun of the same machine, slower "
                        "(default: off)")
    g.add_argument("--no_cpu_conv_split", action="store_true",
                   help="run batch-1 CPU 3D convolutions on PyTorch's own path instead of oneDNN by a depth split "
                        "(default: the split, 2-4x faster, off under --deterministic; see utils/cpu_conv.py)")


def _add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--val_overlap", type=float, default=0.1,
                   help="sliding-window overlap at validation and test, fraction of the window in [0, 1) "
                        "(default: %(default)s)")
    g.add_argument("--val_every", type=int, default=1, help="validate every N epochs (default: %(default)s)")
    add_external_arguments(g)
    add_ensemble_arguments(g)


def add_ensemble_arguments(g: argparse._ArgumentGroup) -> None:
    """``--ensemble`` and ``--postprocess`` (the sweep's and ``evaluate_experiment.py aggregate``'s)."""
    g.add_argument("--ensemble", nargs="+", default=None, metavar="SPEC",
                   help="ensemble rows (source ensemble): 'folds' adds <model>_ensemble for every model with more "
                        "than one ok run (the softmax probabilities of its runs' best checkpoints averaged on the test "
                        "cases, then argmax); a+b[+c] adds row a+b averaging every ok run of those models "
                        "(default: none)")
    g.add_argument("--postprocess", action="store_true",
                   help="choose nnU-Net's largest-component post-processing per model on its validation predictions "
                        "(26-connected; the whole foreground, then each region; a step kept only when it raises the "
                        "validation Dice and lowers no region's), written to postprocessing.json, and add rows "
                        "<model>_postprocessed (each run's test predictions with the rule) and, with --ensemble "
                        "folds, <model>_ensemble_postprocessed (default: off)")


def add_external_arguments(g: argparse._ArgumentGroup) -> None:
    """``--external_predictions`` and ``--external_label_map`` (the sweep's and ``evaluate_experiment.py
    aggregate``'s)."""
    g.add_argument("--external_predictions", nargs="+", default=None, metavar="NAME=DIR",
                   help="other tools' predictions of the test cases as rows named NAME: DIR holds {case_id}.nii.gz "
                        "in each image's original space (nnU-Net's output), scored by the sweep's own test metrics "
                        "(default: none)")
    g.add_argument("--external_label_map", nargs="+", default=None, metavar="[NAME=]MAP",
                   help="the label convention of external predictions (e.g. msd for nnU-Net's BraTS labels) or "
                        "file:internal pairs such as 1:2,2:1,4:3; NAME= for one source only (default: the "
                        "dataset's own convention)")


def _add_efficiency_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("efficiency")
    g.add_argument("--skip_efficiency", action="store_true",
                   help="do not measure FLOPs, activation memory (PAM) and latency (default: off, measured)")
    g.add_argument("--pam_runs", type=int, default=5,
                   help="peak-activation-memory measurements per model, reported as mean and std "
                        "(default: %(default)s)")
    g.add_argument("--latency_runs", type=int, default=10,
                   help="timed batch-1 forward passes per model after warm-up, reported in ms as mean, std and "
                        "median (default: %(default)s)")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default=None, metavar="DIR",
                   help="results folder (default: baseline_results/integrated_experiment_results_YYYYMMDD_HHMMSS)")
    g.add_argument("--resume", action="store_true",
                   help="continue the sweep in --output_dir: skip jobs finished ok, rerun failed ones, continue "
                        "interrupted ones from their latest epoch (default: off; an --output_dir holding results "
                        "is refused)")
    g.add_argument("--keep_latest", action="store_true",
                   help="keep each job's full training state (jobs/<job>/latest.pth, with the optimiser) after "
                        "it ends (default: off, deleted)")


def _json_dict(text: str) -> dict[str, dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--model_kwargs is not valid JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError("--model_kwargs must map model names to objects of keyword arguments")
    return value


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Turn parsed flags into a validated :class:`ExperimentConfig`."""
    version = args.dataset_version or ("ich" if getattr(args, "manifest", None) else
                                       "synthetic" if args.data_path is None else "brats2018")
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(
        dataset_version=version,
        loss=args.loss or ("standard" if args.use_standard_loss else "nnunet"),
        amp=not args.no_amp,
        cpu_conv_split=not args.no_cpu_conv_split,
        max_grad_norm=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
        synthetic_size=tuple(args.synthetic_size) if args.synthetic_size else default_synthetic_size(version),
        spacing=tuple(args.spacing),
        # recorded as applied: the dataset's own window unless given (None for BraTS, where a given one is refused)
        hu_window=tuple(args.hu_window) if args.hu_window else effective_hu_window(version, None),
        # subset folds and nnU-Net's splits_final.json are cross-validation folds
        use_5fold=args.use_5fold or bool(args.use_subset_folds) or bool(getattr(args, "nnunet_splits", None)),
        target_spacing=tuple(args.target_spacing) if args.target_spacing else None,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        tracker=tracker_list(args.tracker),
        lesion_hit=args.lesion_hit or dataset_info(version).lesion_hit,
    )
    config = ExperimentConfig(**values)
    config.validate()
    return config


def parse_config(argv: Sequence[str] | None = None) -> ExperimentConfig:
    """Parse ``argv`` (default ``sys.argv[1:]``) into a validated config.

    Bad flags and values exit with code 2 and one line on stderr naming the flag (no usage dump).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    config.explicit_flags = given_flags(build_parser(), argv)
    return config


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[str, ...]:
    """Destinations of the flags present in ``argv`` (abbreviations included): ``parser`` re-parses with every
    default suppressed, so only what the user typed remains."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_known_args(argv)[0])
    names = {f.name for f in dataclasses.fields(TrainerSettings)}  # the only fields a model's defaults may take
    aliases = {"use_standard_loss": "loss", "use_nnunet_loss": "loss", "no_amp": "amp"}
    return tuple(sorted({aliases.get(k, k) for k in given} & names))
