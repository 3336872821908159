"""Kinds of work: one module per task, each registering itself once in the task registry (``engine.tasks.registry``).

The task of a job follows from the model's ``ModelInfo.task`` and the dataset's label kind (:func:`task_for`), a
checkpoint's from its ``meta`` (:func:`task_from_meta`). Adding a kind of work means one task module that calls
:func:`register_task` at its bottom, and one import line below; the trainer, the runner, the evaluations and the
CLIs stay as they are. Import order is registration order: the CLIs list the tasks' flags in it (the lesion
flags of detection before BraTS's lesion-wise ones) and ``--task`` offers the folder evaluations in it.
"""

from __future__ import annotations

from engine.tasks.registry import (TASK_ENTRIES, FolderEvaluation, TaskEntry, box_file_task, folder_evaluation,
                                   folder_task_names, label_map_task, register_task, served_model_kinds,
                                   task_flags, task_for, task_from_meta)
from engine.tasks.base import CaseAccumulator, Selection, Task
from engine.tasks.flags import TaskFlag
from engine.tasks.detection import DetectionTask  # registers detection
from engine.tasks.segmentation import SegmentationTask, binary_segmentation, brats_segmentation  # BraTS, binary
from engine.tasks.multiclass import MulticlassSegmentationTask  # registers multiclass_segmentation
from engine.tasks.detect_segment import DetectSegmentTask  # registers detect_segment
from engine.tasks.promptable import PromptableTask  # registers promptable_segmentation

__all__ = ["CaseAccumulator", "DetectSegmentTask", "DetectionTask", "FolderEvaluation", "MulticlassSegmentationTask",
           "PromptableTask", "Selection",
           "SegmentationTask", "TASK_ENTRIES", "Task", "TaskEntry", "TaskFlag", "binary_segmentation",
           "box_file_task", "brats_segmentation", "folder_evaluation", "folder_task_names", "label_map_task",
           "register_task",
           "served_model_kinds", "task_flags", "task_for", "task_from_meta"]
