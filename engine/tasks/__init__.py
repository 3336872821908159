"""Task registry: the task of a job follows from the model's ``ModelInfo.task`` and the dataset's label kind.

``TASK_BUILDERS[(model_task, label_kind)](dataset, loss) -> Task``. Adding a kind of work means one
task module and one :func:`register_task` line here; the trainer and the runner stay as they are.
"""

from __future__ import annotations

from typing import Any, Callable

from dataio.types import DatasetInfo
from models import ModelInfo
from utils.schema import DEFAULT_BINARY_REGION

from .base import CaseAccumulator, Selection, Task
from .segmentation import SegmentationTask, binary_segmentation, brats_segmentation

TaskBuilder = Callable[[DatasetInfo, str], Task]
TASK_BUILDERS: dict[tuple[str, str], TaskBuilder] = {}


def register_task(model_task: str, label_kind: str, builder: TaskBuilder) -> None:
    """Use ``builder`` for models of ``model_task`` on datasets of ``label_kind``; refuses duplicates."""
    key = (model_task, label_kind)
    if key in TASK_BUILDERS:
        raise ValueError(f"a task for {model_task!r} models on {label_kind!r} data is already registered")
    TASK_BUILDERS[key] = builder


register_task("segmentation", "brats", lambda dataset, loss: brats_segmentation(loss))
register_task("segmentation", "binary", lambda dataset, loss: binary_segmentation(dataset.region, loss))


def task_for(info: ModelInfo, dataset: DatasetInfo, *, loss: str = "nnunet") -> Task:
    """The task that trains and evaluates model ``info`` on ``dataset``.

    Raises:
        ValueError: no task is registered for this model kind and label kind.
    """
    builder = TASK_BUILDERS.get((info.task, dataset.label_kind))
    if builder is None:
        known = ", ".join(f"{t} on {k}" for t, k in sorted(TASK_BUILDERS))
        raise ValueError(f"model {info.name!r} ({info.task}) cannot run on dataset {dataset.name!r} "
                         f"({dataset.label_kind} labels): no task for that pair (known: {known})")
    return builder(dataset, loss)


def task_from_meta(meta: dict[str, Any]) -> Task:
    """The task of a checkpoint, from its ``meta`` (``task`` and ``regions``; older checkpoints only have
    ``n_classes``: 4 is BraTS, 2 is binary with region ``lesion``)."""
    name = meta.get("task")
    regions = meta.get("regions") or {}
    n_classes = int(meta.get("n_classes", 4))
    if name == "binary_segmentation" or (name is None and n_classes == 2):
        region = next(iter(regions), DEFAULT_BINARY_REGION)
        return binary_segmentation(region)
    if name in ("brats_segmentation", None) and n_classes == 4:
        return brats_segmentation()
    raise ValueError(f"no task for a checkpoint of task {name!r} with {n_classes} classes "
                     f"(known: brats_segmentation with 4, binary_segmentation with 2)")


__all__ = ["CaseAccumulator", "Selection", "SegmentationTask", "Task", "TASK_BUILDERS", "binary_segmentation",
           "brats_segmentation", "register_task", "task_for", "task_from_meta"]
