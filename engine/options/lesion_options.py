"""Flags of the lesion track: how lesions are found and matched, and the detection models' own settings.

Lesions (ground truth and predicted) are 26-connected components of at least ``min_lesion_size`` voxels.
A prediction hits a lesion when their IoU is >= 0.1 (``lesion_hit iou``), when the prediction's centre
lies in the lesion's box (``centre``), or when its centre is closer than the nodule's radius in world mm (LUNA16's
``radius``, the default of the LUNA16 datasets); the same rule serves FROC and the per-case found/missed/false-positive
counts. Those matching flags are declared by the tasks that own them (``engine.tasks``: ``TaskFlag``) and
gathered here from the task registry. The model flags (``--anchor_shapes``, ``--max_rois``, ...) reach the
builders of the models whose registry entry takes them (``ModelInfo.flag_kwargs``); unset flags leave each
model's own default.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Collection, Mapping

from metrics.lesions import HIT_RULES

from engine.tasks import task_flags


@dataclass
class LesionOptions:
    """Lesion matching (sizes in voxels) and the detection models' flags (None: the model's default).

    Attributes:
        min_lesion_size: components smaller than this are not lesions (ground truth and predictions alike).
        lesion_hit: FROC / per-case hit rule, ``iou`` (IoU >= 0.1), ``centre`` (centre in the lesion box) or
            ``radius`` (LUNA16: centre within the nodule's radius, world mm); the sweep takes the dataset's own
            (``DatasetInfo.lesion_hit``) when the flag is not given.
        lesion_score_threshold: predictions scored below this are left out of the per-case counts
            (lesions found / missed / false-positive components); AP and FROC use every score.
        lesionwise_dilation: BraTS lesion-wise matching dilates each reference lesion this many times
            (26-connected structuring element).
        lesionwise_min_size: BraTS lesion-wise metrics drop reference lesions of this many voxels or fewer.
        lesion_labels: multi-class datasets: the foreground labels whose lesion metrics are reported too.
        clicks, click_mode: promptable models' interactive evaluation: the click counts reported (None: 1 3 5 10)
            and the click rule (``engine.tasks.clicks``).
        anchor_shapes: RetinaNet base anchor shapes (voxels), triples.
        max_rois, roi_batch_size, roi_size, seg_lambda, neg_ratio: DetSeg3D's RoI count cap, RoIs per
            segmenter batch, RoI crop size (voxels), weight of the segmentation loss, hard negatives per positive.
    """

    min_lesion_size: int = 1
    lesion_hit: str | None = None
    lesion_score_threshold: float = 0.5
    lesionwise_dilation: int = 3
    lesionwise_min_size: int = 50
    lesion_labels: list[str] | None = None
    clicks: list[int] | None = None
    click_mode: str = "random"
    anchor_shapes: list[list[int]] | None = None
    max_rois: int | None = None
    roi_batch_size: int | None = None
    roi_size: tuple[int, int, int] | None = None
    seg_lambda: float | None = None
    neg_ratio: float | None = None

    def lesion_errors(self) -> list[str]:
        """One message per lesion flag outside its range (empty when all are valid)."""
        checks = [
            (self.min_lesion_size >= 1, f"--min_lesion_size must be >= 1 voxel, got {self.min_lesion_size}"),
            (self.lesion_hit is None or self.lesion_hit in HIT_RULES,
             f"--lesion_hit must be one of {HIT_RULES}, got {self.lesion_hit!r}"),
            (0.0 <= self.lesion_score_threshold <= 1.0,
             f"--lesion_score_threshold must be in [0, 1], got {self.lesion_score_threshold}"),
            (self.lesionwise_dilation >= 0, f"--lesionwise_dilation must be >= 0, got {self.lesionwise_dilation}"),
            (self.lesionwise_min_size >= 0, f"--lesionwise_min_size must be >= 0, got {self.lesionwise_min_size}"),
            (not self.clicks or min(self.clicks) >= 1, f"--clicks must be >= 1, got {self.clicks}"),
            (self.anchor_shapes is None or (len(self.anchor_shapes) >= 1 and all(
                len(s) == 3 and min(s) >= 1 for s in self.anchor_shapes)),
             f"--anchor_shapes needs triples of positive voxel sizes, got {self.anchor_shapes}"),
            (self.max_rois is None or self.max_rois >= 1, f"--max_rois must be >= 1, got {self.max_rois}"),
            (self.roi_batch_size is None or self.roi_batch_size >= 1,
             f"--roi_batch_size must be >= 1, got {self.roi_batch_size}"),
            (self.roi_size is None or min(self.roi_size) >= 8, f"--roi_size values must be >= 8, got {self.roi_size}"),
            (self.seg_lambda is None or self.seg_lambda >= 0, f"--seg_lambda must be >= 0, got {self.seg_lambda}"),
            (self.neg_ratio is None or self.neg_ratio >= 0, f"--neg_ratio must be >= 0, got {self.neg_ratio}"),
        ]
        return [message for ok, message in checks if not ok]

    def model_flag_kwargs(self, flag_kwargs: Mapping[str, str]) -> dict[str, Any]:
        """Builder kwargs that the flags give a model taking ``flag_kwargs`` (``ModelInfo.flag_kwargs``: flag ->
        kwarg): every flag that is set (not None); sequences become tuples, sequences of sequences lists of lists.

        Raises:
            ValueError: a flag of ``flag_kwargs`` is not one of these options.
        """
        out: dict[str, Any] = {}
        for flag, kwarg in flag_kwargs.items():
            if not hasattr(self, flag):
                raise ValueError(f"a model takes flag --{flag}, which the sweep does not define")
            value = getattr(self, flag)
            if value is not None:
                out[kwarg] = _builder_value(value)
        return out


def _builder_value(value: Any) -> Any:
    """A flag value as builders take it: lists of triples as lists of lists, other sequences as tuples."""
    if not isinstance(value, (list, tuple)):
        return value
    if value and isinstance(value[0], (list, tuple)):
        return [list(v) for v in value]
    return tuple(value)


def _triples(values: list[int]) -> list[list[int]]:
    if len(values) % 3:
        raise argparse.ArgumentTypeError(f"--anchor_shapes takes triples (D H W per anchor), got {len(values)} numbers")
    return [values[i:i + 3] for i in range(0, len(values), 3)]


class _TriplesAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        try:
            setattr(namespace, self.dest, _triples([int(v) for v in values]))
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))


def add_lesion_matching_arguments(g: argparse._ArgumentGroup, *, recorded: bool = False,
                                  names: Collection[str] | None = None) -> None:
    """The flags of the registered tasks (lesion matching, the BraTS lesion-wise rules: ``engine.tasks.task_flags``);
    ``recorded`` (the evaluation CLI): defaults are None, meaning the value the sweep or checkpoint recorded, else
    volbench's default; ``names``: only these flags (None: all)."""
    then = "the recorded value, else " if recorded else ""
    for flag in task_flags():
        if names is not None and flag.name not in names:
            continue
        shown = flag.default if flag.default_text is None else flag.default_text
        g.add_argument(f"--{flag.name}", default=None if recorded else flag.default,
                       help=f"{flag.help} (default: {then}{shown})", **flag.options)


def add_lesion_arguments(p: argparse.ArgumentParser) -> None:
    """The ``lesions`` argument group (lesion matching, lesion-wise metrics, detection model settings)."""
    g = p.add_argument_group("lesions (CT lesion track; BraTS lesion-wise metrics)")
    add_lesion_matching_arguments(g)
    g.add_argument("--anchor_shapes", type=int, nargs="+", action=_TriplesAction, default=None, metavar="N",
                   help="RetinaNet base anchor shapes, voxels, as D H W triples (default: none, the model's "
                        "6 8 4 8 6 5 10 10 6)")
    g.add_argument("--max_rois", type=int, default=None, help="DetSeg3D: most RoIs per scan (default: model's, 64)")
    g.add_argument("--roi_batch_size", type=int, default=None,
                   help="DetSeg3D: RoIs per segmenter batch (default: model's, 8)")
    g.add_argument("--roi_size", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                   help="DetSeg3D: size every RoI crop is resized to, voxels (default: model's, 32 32 32)")
    g.add_argument("--seg_lambda", type=float, default=None,
                   help="DetSeg3D: total loss = detection loss + this x RoI segmentation loss (default: model's, 1)")
    g.add_argument("--neg_ratio", type=float, default=None,
                   help="DetSeg3D: hard-negative training RoIs per positive RoI (default: model's, 1)")


MATCHING_FLAGS = tuple(flag.name for flag in task_flags())  # recorded in each checkpoint's meta


def lesion_options_for_evaluation(args: argparse.Namespace, recorded: dict[str, Any] | None) -> LesionOptions:
    """Lesion matching of an evaluation: each flag given, else the value recorded in ``recorded`` (a sweep's
    config.json or a checkpoint's meta), else volbench's default."""
    values = {}
    for name in MATCHING_FLAGS:
        given = getattr(args, name, None)
        values[name] = given if given is not None else (recorded or {}).get(name, getattr(LesionOptions, name))
    options = LesionOptions(**values)
    errors = options.lesion_errors()
    if errors:
        raise ValueError(errors[0])
    return options
