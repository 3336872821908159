"""The sweep: jobs = models x seeds x folds (or the single split); train, evaluate, write tables.

Public steps: :func:`train_model`, :func:`evaluate_model`, :func:`run_integrated_experiment`
(alias :func:`run_sweep`). A job that fails (exception, out of memory, non-finite loss) becomes a
row with its status and error, and the sweep goes on. ``--resume`` skips jobs already finished.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dataio.loaders import LoaderSettings, make_train_loader
from dataio.sampling import PatchDataset, SliceDataset
from dataio.splits import iter_folds, load_splits, make_splits, save_splits
from dataio.types import MODALITY_ORDER, CachedCase
from engine.config import ExperimentConfig
from engine.data_options import DATA_FIELDS
from engine.evaluation import EvaluationResult, InferenceSettings, evaluate_cases
from engine.model_setup import ModelSetup, setup_model
from engine.results import ResultStore
from engine.trainer import DivergedError, FitResult, fit
from losses import create_loss
from metrics.efficiency import measure_efficiency, stage_wise_pam
from metrics.regions import BRATS_SPEC
from models import model_info, resolve_model_names
from utils.atomic import atomic_write_json
from utils.checkpoint import load_checkpoint
from utils.device import resolve_device
from utils.environment import environment_info
from utils.seeding import seed_everything

log = logging.getLogger("volbench.runner")
N_CLASSES = 4


@dataclass(frozen=True)
class Job:
    """One training run: a model, a training seed and a fold (``None`` for the holdout split)."""

    model: str
    seed: int
    fold: int | None
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]

    @property
    def key(self) -> tuple[str, int, int | None]:
        return (self.model, self.seed, self.fold)

    def checkpoint_name(self) -> str:
        fold = "" if self.fold is None else f"_fold_{self.fold}"
        return f"{self.model}_seed_{self.seed}{fold}_best.pth"


@dataclass
class SweepData:
    """Cases served by the cache, keyed by id, with the split every model shares."""

    cases: dict[str, CachedCase]
    splits: dict[str, Any]
    extent: tuple[int, int, int]

    def subset(self, ids: tuple[str, ...] | list[str]) -> list[CachedCase]:
        return [self.cases[i] for i in ids]


def prepare_data(config: ExperimentConfig, output_dir: Path) -> SweepData:
    """Load (and cache) the dataset, then make or reuse the split and write ``splits.json``."""
    cases = config.load_cases()
    by_id = {c.case_id: c for c in cases}
    existing = output_dir / "splits.json"
    resumed = config.resume and existing.is_file()  # a resumed sweep keeps the split its finished jobs used
    splits_path = Path(config.splits_file) if config.splits_file else (existing if resumed else None)
    if splits_path is not None:
        splits = load_splits(splits_path, list(by_id))
        wanted = "5fold" if config.use_5fold else "holdout"
        if splits.get("mode") != wanted:
            raise ValueError(f"{splits_path} holds a {splits.get('mode')} split but the flags ask for {wanted} "
                             f"({'with' if config.use_5fold else 'without'} --use_5fold)")
    else:
        ids = sorted(by_id)
        splits = make_splits(ids, [by_id[i].patient_id for i in ids], use_5fold=config.use_5fold,
                             split_seed=config.split_seed)
    save_splits(output_dir / "splits.json", splits)
    extent = tuple(max(c.image.shape[1 + a] for c in cases) for a in range(3))
    return SweepData(cases=by_id, splits=splits, extent=extent)  # type: ignore[arg-type]


def make_jobs(models: list[str], seeds: list[int], splits: dict[str, Any]) -> list[Job]:
    """Jobs in the order models x seeds x folds."""
    return [Job(m, s, fold, tuple(train), tuple(val))
            for m in models for s in seeds for fold, train, val in iter_folds(splits)]


def _train_dataset(setup: ModelSetup, cases: list[CachedCase], config: ExperimentConfig, seed: int) -> Any:
    if setup.spatial_dims == 3:
        return PatchDataset(cases, setup.modalities, setup.patch_size,
                            samples_per_volume=config.samples_per_volume, augment=True, seed=seed)
    return SliceDataset(cases, setup.modalities, setup.patch_size, context_slices=setup.info.context_slices,
                        samples_per_volume=config.samples_per_volume, augment=True, seed=seed)


def _load_pretrained(model: nn.Module, path: str) -> None:
    """Initialise from a local volbench checkpoint or plain state dict (``weights_only=True``)."""
    try:
        state = load_checkpoint(path)["state_dict"]
    except ValueError:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"--pretrained_checkpoint {path} holds no state dict")
    result = model.load_state_dict(state, strict=False)
    log.info("pretrained weights from %s: %d missing, %d unexpected keys", path,
             len(result.missing_keys), len(result.unexpected_keys))


def inference_settings(setup: ModelSetup, config: ExperimentConfig, device: torch.device,
                       tta: bool = False) -> InferenceSettings:
    return InferenceSettings(modalities=setup.modalities, roi_size=setup.roi_size, overlap=config.val_overlap,
                             device=device, spatial_dims=setup.spatial_dims,
                             context_slices=setup.info.context_slices, amp=config.amp, tta=tta)


def train_model(job: Job, setup: ModelSetup, data: SweepData, config: ExperimentConfig, *,
                output_dir: Path, device: torch.device) -> tuple[nn.Module, FitResult, Path]:
    """Seed, build, train and validate one job; returns the model (best weights loaded)."""
    seed_everything(job.seed, deterministic=config.deterministic)
    model = setup.build()
    if config.use_pretrained and config.pretrained_checkpoint:
        _load_pretrained(model, config.pretrained_checkpoint)
    model.to(device)
    dataset = _train_dataset(setup, data.subset(job.train_ids), config, job.seed)
    loader = make_train_loader(dataset, LoaderSettings(batch_size=config.batch_size, num_workers=config.num_workers,
                                                       sharing_strategy=config.sharing_strategy), seed=job.seed)
    checkpoint = output_dir / job.checkpoint_name()
    info = dict(model_name=setup.name, model_kwargs=setup.model_kwargs,
                meta=dict(seed=job.seed, fold=job.fold, modalities=list(setup.modalities),
                          spatial_dims=setup.spatial_dims, patch_size=list(setup.patch_size),
                          context_slices=setup.info.context_slices, dataset_version=config.dataset_version,
                          data={k: v for k, v in config.to_dict().items() if k in DATA_FIELDS},
                          val_overlap=config.val_overlap, n_classes=N_CLASSES))
    result = fit(model, loader, data.subset(job.val_ids), inference_settings(setup, config, device),
                 loss_fn=create_loss(config.loss), config=config, checkpoint_path=checkpoint,
                 checkpoint_info=info, desc=f"{job.model} s{job.seed} f{job.fold}")
    model.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    return model, result, checkpoint


def evaluate_model(model: nn.Module, setup: ModelSetup, cases: list[CachedCase], config: ExperimentConfig, *,
                   device: torch.device, tta: bool = False) -> EvaluationResult:
    """Per-case test metrics (Dice, HD95 in mm, precision, recall) of a trained model."""
    return evaluate_cases(model, cases, inference_settings(setup, config, device, tta), spec=BRATS_SPEC,
                          include_hd95=True, record_attention=setup.info.returns_attention, desc="test")


def _failure_status(exc: BaseException) -> str:
    if isinstance(exc, DivergedError):
        return "diverged"
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    return "failed"


def run_job(job: Job, setup: ModelSetup, data: SweepData, config: ExperimentConfig, store: ResultStore, *,
            output_dir: Path, device: torch.device, efficiency: dict[str, Any]) -> dict[str, Any]:
    """Train and test one job; any exception becomes a row with status and error."""
    keys = dict(model=job.model, seed=job.seed, fold=job.fold)
    row: dict[str, Any] = dict(keys, status="ok", error="")
    try:
        model, fit_result, checkpoint = train_model(job, setup, data, config, output_dir=output_dir, device=device)
        store.epochs.extend(dict(keys, **r) for r in fit_result.epoch_rows)
        test = evaluate_model(model, setup, data.subset(data.splits["test"]), config, device=device)
        store.per_case.extend(dict(keys, **r) for r in test.per_case)
        store.attention.extend(dict(keys, **r) for r in test.attention)
        store.confusion.extend(dict(keys, **r) for r in test.confusion_rows())
        row.update(epochs=fit_result.epochs_run, best_epoch=fit_result.best_epoch,
                   best_val_dice=fit_result.best_val_dice, n_test_cases=len(test.per_case),
                   **{k: v for k, v in test.aggregate.items() if not k.startswith("n_")},
                   train_time_s=fit_result.train_time_s, checkpoint=str(checkpoint))
        del model
    except Exception as exc:  # noqa: BLE001 - one failing model must not stop the sweep
        row.update(status=_failure_status(exc), error=f"{type(exc).__name__}: {exc}"[:500])
        log.error("job %s failed: %s\n%s", job.key, row["error"], traceback.format_exc(limit=5))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.update(efficiency)
    return row


def _efficiency(setup: ModelSetup, config: ExperimentConfig, device: torch.device,
                store: ResultStore) -> dict[str, Any]:
    """Params, FLOPs, PAM and latency of a freshly built model at its patch size (once per model)."""
    if config.skip_efficiency:
        return {}
    try:
        seed_everything(0)
        model = setup.build().to(device)
        values = measure_efficiency(model, setup.efficiency_input, device=device, pam_runs=config.pam_runs,
                                    latency_runs=config.latency_runs)
        if not store.has_stage_pam(setup.name):
            store.stage_pam.extend(dict(model=setup.name, **r)
                                   for r in stage_wise_pam(model, setup.efficiency_input, device=device))
        return values
    except Exception as exc:  # noqa: BLE001 - efficiency must not cost the model its results
        log.warning("efficiency measurement of %s failed: %s", setup.name, exc)
        return {}


def _overrides(name: str, config: ExperimentConfig) -> dict[str, Any]:
    """Build kwargs for ``name``: its tiny test configuration with ``--tiny``, then ``--model_kwargs``."""
    base = dict(model_info(name).tiny_kwargs) if config.tiny else {}
    return dict(base, **config.model_kwargs.get(name, {}))


def default_output_dir() -> Path:
    return Path("baseline_results") / f"integrated_experiment_results_{datetime.now():%Y%m%d_%H%M%S}"


def run_integrated_experiment(config: ExperimentConfig) -> Path:
    """Run the whole sweep; returns the results folder (tables, checkpoints, charts, JSON files)."""
    config.validate()
    models = resolve_model_names(config.models)
    device = resolve_device(config.device)
    output_dir = Path(config.output_dir) if config.output_dir else default_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(config, output_dir)
    atomic_write_json(output_dir / "config.json", dict(config.to_dict(), resolved_models=models, device=str(device)))
    atomic_write_json(output_dir / "environment.json", environment_info())
    setups = {m: setup_model(m, available_modalities=MODALITY_ORDER, n_classes=N_CLASSES,
                             requested_patch=config.patch_size or (model_info(m).test_patch_size if config.tiny else None),
                             data_extent=data.extent, dim=config.dim,
                             overrides=_overrides(m, config)) for m in models}
    store = ResultStore.resume(output_dir) if config.resume else ResultStore(output_dir)
    jobs = [j for j in make_jobs(models, config.seeds, data.splits) if j.key not in store.finished_jobs()]
    log.info("%d jobs to run (%d models x %d seeds x %d folds), results in %s", len(jobs), len(models),
             len(config.seeds), len(iter_folds(data.splits)), output_dir)
    efficiency: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for index, job in enumerate(jobs, start=1):
        elapsed = time.perf_counter() - start
        eta = elapsed / (index - 1) * (len(jobs) - index + 1) if index > 1 else float("nan")
        log.info("job %d/%d: %s seed %d fold %s (elapsed %.0fs, remaining ~%.0fs)", index, len(jobs),
                 job.model, job.seed, job.fold, elapsed, eta)
        if job.model not in efficiency:
            efficiency[job.model] = _efficiency(setups[job.model], config, device, store)
        store.runs.append(run_job(job, setups[job.model], data, config, store, output_dir=output_dir,
                                  device=device, efficiency=efficiency[job.model]))
        store.flush()
    store.flush()
    _draw_charts(output_dir)
    log.info("sweep finished in %.0fs; results in %s", time.perf_counter() - start, output_dir)
    return output_dir


def _draw_charts(output_dir: Path) -> None:
    from visualization import draw_all  # reads only the CSV files just written

    for path in draw_all(output_dir):
        log.info("chart written: %s", path)


run_sweep = run_integrated_experiment
