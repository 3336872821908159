"""The plan of a sweep: its data and split, its jobs (models x seeds x folds) and each model's task and setup.

Everything here is decided before any job trains, so a model that cannot run on the data fails up front.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataio.luna16 import subset_splits
from dataio.splits import iter_folds, load_splits, make_splits
from dataio.types import CachedCase, DatasetInfo, LoadedDataset
from engine.options.config import ExperimentConfig
from engine.model_setup import InputChoices, ModelSetup, cpu_conv_wanted, setup_model
from engine.tasks import Task, task_for
from engine.fine_tuning import check_fine_tuning, check_train_prompts
from engine.trainer_settings import TrainerSettings
from losses import loss_spec
from models import model_info
from utils.pretrained import parse_pretrained, pretrained_for
from utils.schema import SPLITS_JSON, checkpoint_name, job_name

log = logging.getLogger("volbench.plan")


@dataclass(frozen=True)
class Job:
    """One training run: a model, a training seed and a fold (``None`` for the holdout split)."""

    model: str
    seed: int
    fold: int | None
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    index: int = 0

    @property
    def key(self) -> tuple[str, int, int | None]:
        return (self.model, self.seed, self.fold)

    @property
    def name(self) -> str:
        return job_name(self.model, self.seed, self.fold)

    @property
    def label(self) -> str:
        """For progress lines, e.g. ``unet3d_xs seed 24 holdout`` or ``... fold 3``."""
        return f"{self.model} seed {self.seed} {'holdout' if self.fold is None else f'fold {self.fold}'}"

    def checkpoint_name(self) -> str:
        return checkpoint_name(self.model, self.seed, self.fold)


@dataclass
class SweepData:
    """Cases served by the cache, keyed by id, with the split every model shares and the dataset's info."""

    cases: dict[str, CachedCase]
    splits: dict[str, Any]
    extent: tuple[int, int, int]
    info: DatasetInfo
    from_flags: bool = True  # False when the caller handed in the dataset (the data flags do not describe it)

    def subset(self, ids: tuple[str, ...] | list[str]) -> list[CachedCase]:
        return [self.cases[i] for i in ids]


@dataclass(frozen=True)
class ModelPlan:
    """How one model runs in this sweep: its build/feed decisions, its task and its trainer settings (the
    flags, with the model's own recipe for those the user left unset)."""

    setup: ModelSetup
    task: Task
    trainer: TrainerSettings = field(default_factory=TrainerSettings)


def prepare_data(config: ExperimentConfig, output_dir: Path, dataset: LoadedDataset | None = None) -> SweepData:
    """Load (and cache) the dataset, or take ``dataset``; make the split (``--use_subset_folds``: the release's
    subsets as the folds), or reuse ``--splits_file`` or (with ``--resume``) the folder's ``splits.json``. Writes
    nothing (:func:`write_sweep_files` does)."""
    from_flags = dataset is None
    dataset = config.load() if dataset is None else dataset
    by_id = {c.case_id: c for c in dataset.cases}
    existing = output_dir / SPLITS_JSON
    resumed = config.resume and existing.is_file()  # a resumed sweep keeps the split its finished jobs used
    splits_path = Path(config.splits_file) if config.splits_file else (existing if resumed else None)
    if dataset.splits is not None:  # folds the dataset fixes itself (nnU-Net splits_final.json, datalist folds)
        splits = dataset.splits
    elif splits_path is not None:
        splits = load_splits(splits_path, list(by_id))
        wanted = "5fold" if config.use_5fold else "holdout"
        if splits.get("mode") != wanted:
            raise ValueError(f"{splits_path} holds a {splits.get('mode')} split but the flags ask for {wanted} "
                             f"({'with' if config.use_5fold else 'without'} --use_5fold)")
    elif getattr(config, "use_subset_folds", False):  # LUNA16's subsets as the folds (dataio.luna16.subset_splits)
        splits = subset_splits(sorted(by_id), dataset.subsets)
    else:
        ids = sorted(by_id)
        # stratified by lesion presence (a scan is positive when its label has a foreground voxel) where the data ask
        strata = [int(_foreground(by_id[i]) > 0) for i in ids] if dataset.info.stratify_by_lesion else None
        fixed_test = [i for i in dataset.test_ids if i in by_id] or None  # separate test folders
        splits = make_splits(ids, [by_id[i].patient_id for i in ids], use_5fold=config.use_5fold,
                             split_seed=config.split_seed, strata=strata, fixed_test=fixed_test)
    extent = tuple(max(c.image.shape[1 + a] for c in dataset.cases) for a in range(3))
    return SweepData(cases=by_id, splits=splits, extent=extent, info=dataset.info,  # type: ignore[arg-type]
                     from_flags=from_flags)


def _foreground(case: CachedCase) -> int:
    """Foreground voxels of a case: as recorded in its cache entry, else counted (older entries, cases handed in)."""
    if case.foreground_voxels is not None:
        return int(case.foreground_voxels)
    return 0 if case.label is None else int(np.count_nonzero(case.label))


def make_jobs(models: list[str], seeds: list[int], splits: dict[str, Any]) -> list[Job]:
    """Jobs in the order models x seeds x folds (``index`` = position in that order)."""
    grid = [(m, s, fold, train, val) for m in models for s in seeds for fold, train, val in iter_folds(splits)]
    return [Job(m, s, fold, tuple(train), tuple(val), index=i) for i, (m, s, fold, train, val) in enumerate(grid)]


def plan_models(models: list[str], config: ExperimentConfig, data: SweepData) -> dict[str, ModelPlan]:
    """Task and setup of every model, checked before any job trains (a model that cannot run fails here)."""
    plans = {}
    for name in models:
        info = model_info(name)
        recipe = info.train_defaults_for(bool(config.tiny))
        trainer = TrainerSettings.for_model(config, recipe, config.explicit_flags)
        task = task_for(info, data.info, loss=loss_spec(trainer.loss, config), lesions=config)
        requested = config.patch_size or (info.test_patch_size if config.tiny else None)
        setup = setup_model(name, available_modalities=data.info.channels, n_classes=task.n_outputs,
                            requested_patch=requested, data_extent=data.extent,
                            inputs=InputChoices(dim=config.dim, context_slices=config.context_slices,
                                                foreground_fraction=config.foreground_fraction, tiny=bool(config.tiny)),
                            overrides=_with_spacing(info, _overrides(name, config), data),
                            cpu_conv=cpu_conv_wanted(config))
        own = {k: getattr(trainer, k) for k in recipe if getattr(trainer, k) != getattr(config, k)}
        if own:
            log.info("%s trains with its own recipe for the flags left unset: %s", name,
                     ", ".join(f"{k} {v}" for k, v in own.items()))
        _warn_scratch(name, info, trainer, config)
        plans[name] = ModelPlan(setup=setup, task=task, trainer=trainer)
    check_fine_tuning(models, config.freeze_encoder, config.gradient_checkpointing, lambda n: _meta_build(plans[n]))
    check_train_prompts(models, getattr(config, "train_prompts", "none"), lambda n: _meta_build(plans[n]))
    return plans


def _meta_build(plan: ModelPlan) -> Any:
    """The model of ``plan`` built on the meta device (no memory, no weights): to inspect what it declares."""
    import torch

    with torch.device("meta"):
        return plan.setup.build()


def _overrides(name: str, config: ExperimentConfig) -> dict[str, Any]:
    """Build kwargs for ``name``: its tiny test configuration with ``--tiny``, then the model flags its registry entry
    takes (``ModelInfo.flag_kwargs``: ``--max_rois``, ...), then ``--model_kwargs``."""
    info = model_info(name)
    base = dict(info.tiny_kwargs) if config.tiny else {}
    base.update(config.model_flag_kwargs(info.flag_kwargs))
    return dict(base, **config.model_kwargs.get(name, {}))


def median_spacing(cases: Any) -> tuple[float, ...]:
    """Median voxel spacing (mm per array axis) over ``cases`` (:class:`CachedCase`)."""
    spacings = np.array([c.spacing for c in cases], dtype=np.float64)
    return tuple(float(v) for v in np.median(spacings, axis=0))


def _with_spacing(info: Any, overrides: dict[str, Any], data: SweepData) -> dict[str, Any]:
    """``overrides`` plus the dataset's median spacing under ``info.spacing_kwarg`` when the model takes it and
    ``--model_kwargs`` does not give it (recorded in the checkpoint's build kwargs like any other)."""
    key = info.spacing_kwarg
    if not key or key in overrides or not data.cases:
        return overrides
    spacing = median_spacing(data.cases.values())
    log.info("%s is built for the dataset's median spacing %s mm (%s)", info.name,
             " x ".join(f"{v:g}" for v in spacing), key)
    return dict(overrides, **{key: spacing})


def _warn_scratch(name: str, info: Any, trainer: TrainerSettings, config: ExperimentConfig) -> None:
    """Warn when a model with a fine-tuning recipe (``ModelInfo.scratch_flags``) starts from scratch with the
    recipe's lr: it does not learn so (benchmarks/RESULTS.md), and the flags that make it learn are named."""
    if not info.scratch_flags or "lr" in config.explicit_flags or "lr" not in info.train_defaults:
        return
    if pretrained_for(name, parse_pretrained(config.pretrained_checkpoint)) is not None:
        return
    log.warning("%s starts from scratch with its fine-tuning recipe (lr %g, meant for released weights); from "
                "scratch it learns with %s (benchmarks/RESULTS.md)", name, trainer.lr, info.scratch_flags)
