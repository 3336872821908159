"""General multi-class segmentation: N labels and the dataset's named regions (nnU-Net raw, MONAI datalists).

The dataset (``DatasetInfo.label_kind == "multiclass"``) names its foreground labels and regions
(``dataio.label_names``); the network has one softmax output per label (background included), trained like the
BraTS task (patches, the registered loss; :class:`engine.tasks.segmentation.SegmentationTask`).

Columns (``metrics.regions.multiclass_spec``): for every foreground label and then every named region
``dice_<name>``, ``hd95_<name>`` (mm, test only), ``precision_<name>``, ``recall_<name>``, plus ``dice_mean`` (the
mean over the named regions when the dataset has any, else over the labels). Label names come from the dataset
(``dice_liver``, ``dice_tumour``) or are ``label<k>``; BraTS' regions give ``dice_wt``, ``dice_tc``, ``dice_et``.
BraTS datasets keep their own task (``brats_segmentation``) and columns. Selection: the highest validation
``dice_mean``. Checkpoints record ``labels`` and ``label_regions`` so re-evaluation rebuilds the same columns.
"""

from __future__ import annotations

from typing import Any

from dataio.types import DatasetInfo
from losses import LossSpec
from metrics.regions import multiclass_spec

from engine.tasks.registry import TaskEntry, register_task
from engine.tasks.segmentation import SegmentationTask

TASK_NAME = "multiclass_segmentation"


class MulticlassSegmentationTask(SegmentationTask):
    """Dense segmentation of ``labels`` (label ``i + 1`` is ``labels[i]``) with region metrics for ``regions``."""

    def __init__(self, labels: tuple[str, ...], regions: tuple[tuple[str, tuple[int, ...]], ...] = (), *,
                 loss: str | LossSpec = "nnunet") -> None:
        self.labels = tuple(labels)
        self.named_regions = tuple((str(n), tuple(int(v) for v in m)) for n, m in regions)
        super().__init__(multiclass_spec(self.labels, self.named_regions), loss=loss, name=TASK_NAME)

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), labels=list(self.labels),
                    label_regions=[[n, list(m)] for n, m in self.named_regions])


def _build(dataset: DatasetInfo, loss: str | LossSpec, lesions: Any) -> MulticlassSegmentationTask:
    return MulticlassSegmentationTask(dataset.labels, dataset.regions, loss=loss)


def _rebuild(meta: dict[str, Any], lesions: Any) -> MulticlassSegmentationTask:
    labels = meta.get("labels")
    if not labels:
        raise ValueError(f"a {TASK_NAME} checkpoint must record its 'labels'; this one records {sorted(meta)}")
    return MulticlassSegmentationTask(tuple(labels), tuple((n, tuple(m)) for n, m in meta.get("label_regions", [])))


register_task(TaskEntry(name=TASK_NAME, model_kinds=("segmentation",), label_kinds=("multiclass",), build=_build,
                        rebuild=_rebuild))
