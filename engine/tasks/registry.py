"""The task registry: each kind of work registers one :class:`TaskEntry`, once, at the bottom of its module.

An entry names the task, the model kinds (``ModelInfo.task``) and dataset label kinds
(``DatasetInfo.label_kind``) it serves, how it is built for a sweep and rebuilt from a checkpoint's ``meta``,
the ``out_channels`` that ``models.create_model`` gives its model kinds by default, the flags it owns, and
optionally how it scores prediction folders (``--task NAME``) and box files (``--boxes_json``). Everything
that dispatches on a kind of work (the sweep plan, re-evaluation, folder and box evaluation, the CLIs' flags)
asks the registry, so nothing outside ``engine/tasks/`` and ``models/`` names a task, kind or model family.

``lesions`` arguments are the lesion flags (``engine.options.lesion_options.LesionOptions``, a config extending
it, or ``engine.tasks.lesion_metrics.LesionSettings``), or None for their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dataio.types import DatasetInfo
from metrics.regions import MetricSpec
from models import ModelInfo, default_out_channels, set_default_outputs
from utils.schema import DEFAULT_BINARY_REGION

from engine.tasks.base import Task
from engine.tasks.flags import TaskFlag

TaskBuilder = Callable[[DatasetInfo, str, Any], Task]
TaskRebuilder = Callable[[dict[str, Any], Any], Task]
LabelReader = Callable[[np.ndarray, str, str], np.ndarray]


@dataclass(frozen=True)
class FolderEvaluation:
    """How a task scores prediction folders against label folders (``engine.evaluate.folders``).

    Attributes:
        name: the ``--task`` value, e.g. ``brats``.
        spec: regions and classes of the metrics.
        read_labels: (label array, label convention, file name) -> the internal labels of ``spec``.
        lesions: the lesion metrics (boxes of the predicted components, AP/FROC) are added, and ``--prob_dir``
            scores those boxes.
    """

    name: str
    spec: MetricSpec
    read_labels: LabelReader
    lesions: bool = False


@dataclass(frozen=True)
class TaskEntry:
    """One kind of work.

    Attributes:
        name: the task's name (``Task.name``; checkpoints record it as ``meta["task"]``).
        model_kinds: ``ModelInfo.task`` values it trains.
        label_kinds: ``DatasetInfo.label_kind`` values it trains on.
        build: (dataset, loss name, lesions) -> the task of a sweep.
        rebuild: (checkpoint meta, lesions) -> the task that re-evaluates the checkpoint.
        legacy_n_classes: checkpoints written before ``meta`` recorded the task (no ``task`` key) are this task's
            when their ``n_classes`` is one of these (None: no ``n_classes`` recorded either).
        default_outputs: ``create_model``'s default ``out_channels`` for models of its kinds (None: another task
            serving the kind sets it).
        flags: the flags it owns.
        folder: how it scores prediction folders, if it does.
        box_files: it scores box files: its test accumulator takes ``add_boxes`` (one task at most).
    """

    name: str
    model_kinds: tuple[str, ...]
    label_kinds: tuple[str, ...]
    build: TaskBuilder
    rebuild: TaskRebuilder
    legacy_n_classes: tuple[int | None, ...] = ()
    default_outputs: int | None = None
    flags: tuple[TaskFlag, ...] = ()
    folder: FolderEvaluation | None = None
    box_files: bool = False

    def pairs(self) -> set[tuple[str, str]]:
        """Every (model kind, label kind) it serves."""
        return {(kind, labels) for kind in self.model_kinds for labels in self.label_kinds}


TASK_ENTRIES: dict[str, TaskEntry] = {}  # by name, in registration order; add with register_task


def _clashes(entry: TaskEntry) -> list[str]:
    """Why ``entry`` cannot join the registered tasks (empty when it can)."""
    problems = []
    for other in TASK_ENTRIES.values():
        if other.name == entry.name:
            problems.append(f"a task named {entry.name!r} is already registered")
        problems += [f"{other.name!r} is already registered for {kind!r} models on {labels!r} data"
                     for kind, labels in sorted(entry.pairs() & other.pairs())]
        if entry.folder and other.folder and entry.folder.name == other.folder.name:
            problems.append(f"{other.name!r} already evaluates folders as --task {entry.folder.name}")
        if entry.box_files and other.box_files:
            problems.append(f"{other.name!r} already scores box files")
        theirs = {flag.name: flag for flag in other.flags}
        problems += [f"{other.name!r} declares --{flag.name} differently" for flag in entry.flags
                     if theirs.get(flag.name, flag) != flag]
    if entry.default_outputs is not None:
        problems += [f"{kind!r} models already default to out_channels={default_out_channels(kind)}"
                     for kind in entry.model_kinds if default_out_channels(kind) not in (None, entry.default_outputs)]
    return problems


def register_task(entry: TaskEntry) -> TaskEntry:
    """Add ``entry`` and make its ``default_outputs`` the default of its model kinds in ``models``.

    Raises:
        ValueError: its name, a (model kind, label kind) pair, its folder name, box-file scoring, a flag or a
            default output count clashes with a registered task.
    """
    problems = _clashes(entry)
    if problems:
        raise ValueError(f"cannot register task {entry.name!r}: {'; '.join(problems)}")
    if entry.default_outputs is not None:
        for kind in entry.model_kinds:
            set_default_outputs(kind, entry.default_outputs)
    TASK_ENTRIES[entry.name] = entry
    return entry


def served_model_kinds() -> tuple[str, ...]:
    """Sorted model kinds that some registered task serves."""
    return tuple(sorted({kind for entry in TASK_ENTRIES.values() for kind in entry.model_kinds}))


def task_for(info: ModelInfo, dataset: DatasetInfo, *, loss: Any = "nnunet", lesions: Any = None) -> Task:
    """The task that trains and evaluates model ``info`` on ``dataset``; ``loss``: a loss name or a
    ``losses.LossSpec`` (the model's loss with the values of its flags).

    Raises:
        ValueError: no registered task serves the model's kind, or none serves it on this label kind.
    """
    for entry in TASK_ENTRIES.values():
        if (info.task, dataset.label_kind) in entry.pairs():
            task = entry.build(dataset, loss, lesions)
            if info.preprocessing is not None:  # the model's own input preprocessing (ModelInfo.preprocessing)
                task.use_input_preprocessing(info.preprocessing.params())
            return task
    if info.task not in served_model_kinds():
        raise ValueError(f"model {info.name!r} is of kind {info.task!r}, which no registered task serves (served "
                         f"kinds: {', '.join(served_model_kinds())}); register a task for it in engine/tasks/")
    known = ", ".join(f"{kind} on {labels}" for kind, labels in sorted(set().union(
        *(entry.pairs() for entry in TASK_ENTRIES.values()))))
    raise ValueError(f"model {info.name!r} ({info.task}) cannot run on dataset {dataset.name!r} "
                     f"({dataset.label_kind} labels): no task for that pair (known: {known})")


def label_map_task(dataset: DatasetInfo, lesions: Any = None) -> Task:
    """The task that scores label maps on ``dataset`` (e.g. another tool's predictions): the one that trains
    segmentation models there, with its test metrics.

    Raises:
        ValueError: no registered task trains segmentation models on the dataset's label kind.
    """
    for entry in TASK_ENTRIES.values():
        if ("segmentation", dataset.label_kind) in entry.pairs():
            return entry.build(dataset, "nnunet", lesions)
    raise ValueError(f"no registered task scores label maps on dataset {dataset.name!r} ({dataset.label_kind} labels)")


def meta_region(meta: dict[str, Any]) -> str:
    """The foreground region a checkpoint's ``meta`` records (its first region), else ``lesion``."""
    return next(iter(meta.get("regions") or {}), DEFAULT_BINARY_REGION)


def task_from_meta(meta: dict[str, Any], lesions: Any = None) -> Task:
    """The task of a checkpoint: the registered task named by ``meta["task"]``; checkpoints written before meta
    recorded it go by ``n_classes`` (:attr:`TaskEntry.legacy_n_classes`: 4 or none is BraTS, 2 is binary with
    region ``lesion``). ``lesions``: lesion flags of the evaluation (None: the defaults).

    Raises:
        ValueError: no registered task matches, or the task's output count differs from the recorded ``n_classes``.
    """
    name, n_classes = meta.get("task"), meta.get("n_classes")
    n_classes = None if n_classes is None else int(n_classes)
    if name is None:
        entry = next((e for e in TASK_ENTRIES.values() if n_classes in e.legacy_n_classes), None)
    else:
        entry = TASK_ENTRIES.get(name)
    if entry is None:
        legacy = ", ".join(f"{e.name} for {' or '.join('none' if n is None else str(n) for n in e.legacy_n_classes)}"
                           for e in TASK_ENTRIES.values() if e.legacy_n_classes)
        raise ValueError(f"no task for a checkpoint of task {name!r} with {n_classes} classes (known: "
                         f"{', '.join(TASK_ENTRIES)}; checkpoints that record no task: {legacy})")
    task = entry.rebuild(meta, lesions)
    if n_classes is not None and n_classes != task.n_outputs:
        raise ValueError(f"checkpoint of task {entry.name!r} records {n_classes} classes, but the task has "
                         f"{task.n_outputs} outputs")
    return task


def folder_task_names() -> tuple[str, ...]:
    """The ``--task`` values of folder evaluation (e.g. ``brats``, ``binary``), in registration order."""
    return tuple(entry.folder.name for entry in TASK_ENTRIES.values() if entry.folder is not None)


def folder_evaluation(name: str) -> FolderEvaluation:
    """How ``--task name`` scores prediction folders; ``ValueError`` naming the choices when unknown."""
    for entry in TASK_ENTRIES.values():
        if entry.folder is not None and entry.folder.name == name:
            return entry.folder
    raise ValueError(f"--task {name!r} is not one of {folder_task_names()}")


def box_file_task(lesions: Any = None) -> Task:
    """The task that scores box files, rebuilt as from a checkpoint that records no region (``lesion``)."""
    entry = next((e for e in TASK_ENTRIES.values() if e.box_files), None)
    if entry is None:
        raise ValueError("no registered task scores box files")
    return entry.rebuild({}, lesions)


def task_flags() -> tuple[TaskFlag, ...]:
    """The flags of every registered task, once each, in registration order."""
    flags: dict[str, TaskFlag] = {}
    for entry in TASK_ENTRIES.values():
        for flag in entry.flags:
            flags.setdefault(flag.name, flag)
    return tuple(flags.values())
