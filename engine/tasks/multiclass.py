"""General multi-class segmentation: N labels and the dataset's named regions (nnU-Net raw, MONAI datalists).

The dataset (``DatasetInfo.label_kind == "multiclass"``) names its foreground labels and regions
(``dataio.label_names``); the network has one softmax output per label (background included), trained like the
BraTS task (patches, the registered loss; :class:`engine.tasks.segmentation.SegmentationTask`).

Columns (``metrics.regions.multiclass_spec``): for every foreground label and then every named region
``dice_<name>``, ``hd95_<name>`` (mm, test only), ``precision_<name>``, ``recall_<name>``, plus ``dice_mean`` (the
mean over the named regions when the dataset has any, else over the labels). Label names come from the dataset
(``dice_liver``, ``dice_tumour``) or are ``label<k>``; BraTS' regions give ``dice_wt``, ``dice_tc``, ``dice_et``.
BraTS datasets keep their own task (``brats_segmentation``) and columns. Selection: the highest validation
``dice_mean``. Checkpoints record ``labels``, ``label_regions`` and ``lesion_labels`` so re-evaluation rebuilds the
same columns. ``--lesion_labels NAME ...`` adds the lesion metrics of those foreground labels at test time
(``engine.tasks.label_lesions``: columns ending in ``_<name>``).
"""

from __future__ import annotations

from typing import Any

import torch

from dataio.types import CachedCase, DatasetInfo
from losses import LossSpec
from metrics.regions import MetricSpec, multiclass_spec

from engine.tasks.flags import TaskFlag
from engine.tasks.label_lesions import LabelLesions, label_lesion_columns
from engine.tasks.lesion_metrics import LesionSettings
from engine.tasks.registry import TaskEntry, register_task
from engine.tasks.segmentation import SegmentationAccumulator, SegmentationTask

TASK_NAME = "multiclass_segmentation"


LESION_LABELS_FLAG = TaskFlag(
    "lesion_labels", None, "multi-class datasets (nnunet, datalist): the lesion metrics (AP, mAP, mAR, FROC, per-case "
    "counts) of these foreground labels too, columns ending in _<label>", dict(nargs="+", metavar="LABEL"),
    default_text="none")


class MulticlassAccumulator(SegmentationAccumulator):
    """The segmentation metrics plus the lesion metrics of the chosen labels (``LabelLesions``)."""

    def __init__(self, spec: MetricSpec, *, include_hd95: bool, loss_fn: Any,
                 label_lesions: list[LabelLesions]) -> None:
        super().__init__(spec, include_hd95=include_hd95, loss_fn=loss_fn)
        self.label_lesions = label_lesions
        self.extras += label_lesions

    def update(self, case: CachedCase, prediction: torch.Tensor) -> None:
        super().update(case, prediction)
        labels = prediction.argmax(0).numpy()
        for lesions in self.label_lesions:
            lesions.update(case, prediction, labels)


class MulticlassSegmentationTask(SegmentationTask):
    """Dense segmentation of ``labels`` (label ``i + 1`` is ``labels[i]``) with region metrics for ``regions`` and,
    at test time, lesion metrics for ``lesion_labels`` (matched by ``lesion_settings``)."""

    def __init__(self, labels: tuple[str, ...], regions: tuple[tuple[str, tuple[int, ...]], ...] = (), *,
                 loss: str | LossSpec = "nnunet", lesion_labels: tuple[str, ...] = (),
                 lesion_settings: LesionSettings | None = None) -> None:
        self.labels = tuple(labels)
        self.named_regions = tuple((str(n), tuple(int(v) for v in m)) for n, m in regions)
        unknown = [n for n in lesion_labels if n not in self.labels]
        if unknown:
            raise ValueError(f"--lesion_labels {unknown}: not foreground labels of the dataset (labels: "
                             f"{', '.join(self.labels)})")
        self.lesion_labels = tuple(dict.fromkeys(lesion_labels))
        self.lesion_settings = lesion_settings or LesionSettings()
        super().__init__(multiclass_spec(self.labels, self.named_regions), loss=loss, name=TASK_NAME)

    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> SegmentationAccumulator:
        if stage != "test" or not self.lesion_labels:
            return super().new_accumulator(stage=stage, with_loss=with_loss)
        lesions = [LabelLesions(self.labels.index(n) + 1, n, self.lesion_settings) for n in self.lesion_labels]
        return MulticlassAccumulator(self.spec, include_hd95=True, loss_fn=self.loss_fn if with_loss else None,
                                     label_lesions=lesions)

    def result_columns(self) -> tuple[str, ...]:
        return (*super().result_columns(), *label_lesion_columns(self.lesion_labels))

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), labels=list(self.labels),
                    label_regions=[[n, list(m)] for n, m in self.named_regions], lesion_labels=list(self.lesion_labels))


def _lesion_labels(lesions: Any) -> tuple[str, ...]:
    return tuple(getattr(lesions, "lesion_labels", None) or ())


def _build(dataset: DatasetInfo, loss: str | LossSpec, lesions: Any) -> MulticlassSegmentationTask:
    return MulticlassSegmentationTask(dataset.labels, dataset.regions, loss=loss, lesion_labels=_lesion_labels(lesions),
                                      lesion_settings=LesionSettings.of(lesions))


def _rebuild(meta: dict[str, Any], lesions: Any) -> MulticlassSegmentationTask:
    """The checkpoint's task; the evaluation's ``--lesion_labels`` when given, else the recorded ones."""
    labels = meta.get("labels")
    if not labels:
        raise ValueError(f"a {TASK_NAME} checkpoint must record its 'labels'; this one records {sorted(meta)}")
    chosen = _lesion_labels(lesions) or tuple(meta.get("lesion_labels") or ())
    return MulticlassSegmentationTask(tuple(labels), tuple((n, tuple(m)) for n, m in meta.get("label_regions", [])),
                                      lesion_labels=chosen, lesion_settings=LesionSettings.of(lesions))


register_task(TaskEntry(name=TASK_NAME, model_kinds=("segmentation",), label_kinds=("multiclass",), build=_build,
                        rebuild=_rebuild, flags=(LESION_LABELS_FLAG,)))
