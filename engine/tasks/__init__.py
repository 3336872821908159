"""Task registry: the task of a job follows from the model's ``ModelInfo.task`` and the dataset's label kind.

``TASK_BUILDERS[(model_task, label_kind)](dataset, loss, lesions) -> Task`` (``lesions``: the lesion flags,
``engine.options.lesion_options.LesionOptions`` or ``None`` for their defaults). Adding a kind of work means one
task module and one :func:`register_task` line here; the trainer and the runner stay as they are.
"""

from __future__ import annotations

from typing import Any, Callable

from dataio.types import DatasetInfo
from models import ModelInfo
from utils.schema import DEFAULT_BINARY_REGION

from engine.tasks.base import CaseAccumulator, Selection, Task
from engine.tasks.detect_segment import DetectSegmentTask
from engine.tasks.detection import DetectionTask
from engine.tasks.lesion_metrics import LesionSettings
from engine.tasks.lesionwise import LesionwiseSettings
from engine.tasks.segmentation import SegmentationTask, binary_segmentation, brats_segmentation

TaskBuilder = Callable[[DatasetInfo, str, Any], Task]
TASK_BUILDERS: dict[tuple[str, str], TaskBuilder] = {}


def register_task(model_task: str, label_kind: str, builder: TaskBuilder) -> None:
    """Use ``builder`` for models of ``model_task`` on datasets of ``label_kind``; refuses duplicates."""
    key = (model_task, label_kind)
    if key in TASK_BUILDERS:
        raise ValueError(f"a task for {model_task!r} models on {label_kind!r} data is already registered")
    TASK_BUILDERS[key] = builder


register_task("segmentation", "brats",
              lambda dataset, loss, lesions: brats_segmentation(loss, LesionwiseSettings.of(lesions)))
register_task("segmentation", "binary",
              lambda dataset, loss, lesions: binary_segmentation(dataset.region, loss, LesionSettings.of(lesions)))
register_task("detection", "binary", lambda dataset, loss, lesions: DetectionTask(dataset.region,
                                                                                  LesionSettings.of(lesions)))
register_task("detect_segment", "binary",
              lambda dataset, loss, lesions: DetectSegmentTask(dataset.region, LesionSettings.of(lesions)))


def task_for(info: ModelInfo, dataset: DatasetInfo, *, loss: str = "nnunet", lesions: Any = None) -> Task:
    """The task that trains and evaluates model ``info`` on ``dataset``.

    Raises:
        ValueError: no task is registered for this model kind and label kind.
    """
    builder = TASK_BUILDERS.get((info.task, dataset.label_kind))
    if builder is None:
        known = ", ".join(f"{t} on {k}" for t, k in sorted(TASK_BUILDERS))
        raise ValueError(f"model {info.name!r} ({info.task}) cannot run on dataset {dataset.name!r} "
                         f"({dataset.label_kind} labels): no task for that pair (known: {known})")
    return builder(dataset, loss, lesions)


def task_from_meta(meta: dict[str, Any], lesions: Any = None) -> Task:
    """The task of a checkpoint, from its ``meta`` (``task`` and ``regions``; older checkpoints only have
    ``n_classes``: 4 is BraTS, 2 is binary with region ``lesion``). ``lesions``: lesion flags for the
    evaluation (``None``: the defaults)."""
    name = meta.get("task")
    regions = meta.get("regions") or {}
    n_classes = int(meta.get("n_classes", 4))
    region = next(iter(regions), DEFAULT_BINARY_REGION)
    settings = LesionSettings.of(lesions)
    if name == "detection":
        return DetectionTask(region, settings)
    if name == "detect_segment":
        return DetectSegmentTask(region, settings)
    if name == "binary_segmentation" or (name is None and n_classes == 2):
        return binary_segmentation(region, lesions=settings)
    if name in ("brats_segmentation", None) and n_classes == 4:
        return brats_segmentation(lesionwise=LesionwiseSettings.of(lesions))
    raise ValueError(f"no task for a checkpoint of task {name!r} with {n_classes} classes "
                     f"(known: brats_segmentation with 4, binary_segmentation with 2, detection, detect_segment)")


__all__ = ["CaseAccumulator", "DetectSegmentTask", "DetectionTask", "Selection", "SegmentationTask", "Task",
           "TASK_BUILDERS", "binary_segmentation",
           "brats_segmentation", "register_task", "task_for", "task_from_meta"]
