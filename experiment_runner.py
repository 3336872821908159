"""The sweep: jobs = models x seeds x folds (or the single split); each job trains, tests and writes its
own folder, and one reducer builds the sweep tables from those folders.

Public steps: :func:`train_model`, :func:`evaluate_model`, :func:`run_integrated_experiment` (alias
:func:`run_sweep`). Everything task-specific (samples, losses, prediction, metrics, selection) comes from
the job's task (``engine.tasks``), chosen from the model's ``ModelInfo.task`` and the dataset; the runner
never branches on a model kind. A job that fails (exception, out of memory, non-finite loss) becomes a
row with its status and error, and the sweep goes on. ``--resume`` skips jobs that finished ok, runs
failed ones again and continues an interrupted one from its ``latest`` training state.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from dataio.loaders import LoaderSettings, make_train_loader
from dataio.splits import iter_folds
from dataio.types import CachedCase, LoadedDataset
from engine.options.config import ExperimentConfig
from engine.context import RunContext
from engine.options.data_options import DATA_FIELDS
from engine.results.efficiency_store import ensure_efficiency, read_efficiency
from engine.evaluate.ensemble import EnsembleInputs, add_ensemble_rows, check_ensembles
from engine.evaluate.external import add_external_rows, check_sources, parse_external
from engine.evaluation import EvaluationRequest, EvaluationResult, evaluate_cases
from engine.fine_tuning import enable_gradient_checkpointing, export_encoder, freeze_encoder, named
from engine.inference import InferenceSettings
from engine.results.job_results import JobFolder, write_submission
from engine.options.lesion_options import MATCHING_FLAGS
from engine.model_setup import ModelSetup
from engine.parallel import resolve_mode, select_jobs, wrap_for_ddp
from engine.results.reducer import IncrementalReducer, reduce_results
from engine.results.sweep_files import check_output_dir, check_resume, default_output_dir, sweep_record, write_sweep_files
from engine.sweep_plan import Job, ModelPlan, SweepData, make_jobs, plan_models, prepare_data
from engine.tasks import label_map_task
from engine.tracking import JobTracking
from engine.trainer import CheckpointFiles, DivergedError, FitInputs, FitResult, TrainerHooks, fit
from metrics.efficiency import measure_efficiency, stage_wise_pam
from models import resolve_model_names
from utils.atomic import OutputWriteError
from utils.checkpoint import load_checkpoint
from utils.device import resolve_device
from utils.distributed import (barrier, destroy_process_group, dist_env, init_process_group,
                               process_device)
from utils.pretrained import LoadReport, load_pretrained, parse_pretrained, pretrained_for
from utils.schema import SOURCE_COLUMN, SPLITS_JSON, SUBMISSION_FILES
from utils.seeding import seed_everything
from utils.rank_agreement import agree, announce
from utils.signals import raise_if_stopping

__all__ = ["Job", "ModelPlan", "SweepData", "evaluate_model", "make_jobs", "plan_models", "prepare_data",
           "run_integrated_experiment", "run_sweep", "train_model"]

log = logging.getLogger("volbench.runner")


def _load_pretrained(model: nn.Module, path: str | Path, *, allow_pickle: bool = False) -> LoadReport:
    """Initialise ``model`` from a local checkpoint (:func:`utils.pretrained.load_pretrained`: every weight
    must be there with its shape; nothing re-initialises the weights afterwards)."""
    report = load_pretrained(model, path, allow_pickle=allow_pickle)
    log.info("pretrained weights from %s: %d loaded, %d missing, %d unexpected keys", path, report.loaded,
             len(report.missing), len(report.unexpected))
    return report


def inference_settings(setup: ModelSetup, config: ExperimentConfig, device: torch.device,
                       tta: bool = False, seed: int = 0) -> InferenceSettings:
    return InferenceSettings(modalities=setup.modalities, roi_size=setup.roi_size, overlap=config.val_overlap,
                             device=device, spatial_dims=setup.spatial_dims,
                             context_slices=setup.context_slices, amp=config.amp, tta=tta, seed=seed)


def checkpoint_info(plan: ModelPlan, job: Job, config: ExperimentConfig, data: SweepData) -> dict[str, Any]:
    """Model name, build kwargs and meta (everything re-evaluation needs) of a job's checkpoint.

    ``meta["data"]`` holds the data flags, or ``None`` when the dataset was handed in by the caller."""
    setup = plan.setup
    flags = {k: v for k, v in config.to_dict().items() if k in DATA_FIELDS} if data.from_flags else None
    meta = dict(seed=job.seed, fold=job.fold, modalities=list(setup.modalities), spatial_dims=setup.spatial_dims,
                patch_size=list(setup.patch_size), context_slices=setup.context_slices,
                dataset_version=config.dataset_version if data.from_flags else data.info.name, data=flags,
                val_overlap=config.val_overlap, lesion_flags={k: getattr(config, k) for k in MATCHING_FLAGS},
                **plan.task.checkpoint_meta())
    return dict(model_name=setup.name, model_kwargs=setup.model_kwargs, meta=meta)


class EpochRowWriter(TrainerHooks):
    """Writes the job's epoch rows into its folder as each epoch ends (the whole table, atomically) and
    logs one line per epoch (what a log file keeps when progress bars are off)."""

    def __init__(self, folder: JobFolder, keys: dict[str, Any], label: str, epochs: int) -> None:
        self.folder, self.keys, self.label, self.epochs = folder, keys, label, epochs

    def on_epoch_end(self, state: Any, row: dict[str, Any]) -> None:
        self.folder.write_table("epochs", [dict(self.keys, **r) for r in state.epoch_rows])
        values = "  ".join(f"{k} {v:.4f}" for k, v in row.items()
                           if k.startswith(("train_loss", "val_")) and isinstance(v, float) and v == v)
        log.info("%s: epoch %d/%d  %s  (%.1fs)", self.label, row["epoch"], self.epochs, values, row["epoch_time_s"])


class BestValidationWriter(TrainerHooks):
    """Writes the per-case validation rows of the job's best epoch so far into its folder (table ``val_cases``):
    with ``--use_5fold`` every non-test case then has an out-of-fold prediction of every model."""

    def __init__(self, folder: JobFolder, keys: dict[str, Any]) -> None:
        self.folder, self.keys = folder, keys
        self.last: list[dict[str, Any]] = []

    def on_validation(self, state: Any, evaluation: EvaluationResult) -> None:
        self.last = evaluation.per_case

    def on_epoch_end(self, state: Any, row: dict[str, Any]) -> None:
        if state.best_epoch == row["epoch"] and self.last:
            self.folder.write_table("val_cases", [dict(self.keys, epoch=row["epoch"], **r) for r in self.last])


def train_model(job: Job, plan: ModelPlan, data: SweepData, config: ExperimentConfig, context: RunContext, *,
                hooks: Sequence[TrainerHooks] = ()) -> tuple[nn.Module, FitResult, Path]:
    """Seed, build, train and validate one job (resuming its ``latest`` state if there is one);
    returns the model with the best weights loaded. Under DDP every rank calls this for the same job."""
    seed_everything(job.seed, deterministic=config.deterministic)
    model = plan.setup.build()
    pretrained = pretrained_for(job.model, parse_pretrained(config.pretrained_checkpoint))
    if config.use_pretrained and pretrained is not None:
        _load_pretrained(model, pretrained, allow_pickle=config.allow_pickle_checkpoint)
    if named(config.freeze_encoder, job.model):
        freeze_encoder(model, job.model)
    if named(config.gradient_checkpointing, job.model):
        enable_gradient_checkpointing(model, job.model)
    model.to(context.device)
    ddp = context.mode == "ddp"
    if ddp:
        agree()  # a rank that failed while building announces it here, before DDP's own broadcast
    trained = wrap_for_ddp(model, context.device, sync_bn=config.sync_bn,
                           find_unused=plan.task.may_skip_parameters) if ddp else model
    dataset = plan.task.train_dataset(data.subset(job.train_ids), modalities=plan.setup.modalities,
                                      spatial_dims=plan.setup.spatial_dims, patch_size=plan.setup.patch_size,
                                      rules=plan.setup.sample_rules(),
                                      samples_per_volume=config.samples_per_volume, seed=job.seed)
    loader = make_train_loader(dataset, LoaderSettings(batch_size=plan.trainer.batch_size, num_workers=config.num_workers,
                                                       sharing_strategy=config.sharing_strategy), seed=job.seed,
                               distributed=ddp)
    checkpoint = Path(context.output_dir) / job.checkpoint_name()
    folder = JobFolder(context.job_dir) if context.job_dir else None
    inputs = FitInputs(trained, plan.task, loader, data.subset(job.val_ids),
                       inference_settings(plan.setup, config, context.device, seed=job.seed), shard=context.job_shard)
    files = CheckpointFiles(best=checkpoint, info=checkpoint_info(plan, job, config, data),
                            latest=folder.latest_checkpoint if folder else None, writes=context.writes_job_files)
    result = fit(inputs, plan.trainer, files, hooks=hooks, desc=job.label)
    if ddp:
        agree()  # rank 0 has written the best checkpoint (and no rank failed since the last agreement)
        model = trained.module  # the network DDP trained (a SyncBatchNorm copy with --sync_bn)
    model.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    return model, result, checkpoint


def evaluate_model(model: nn.Module, plan: ModelPlan, cases: list[CachedCase], config: ExperimentConfig, *,
                   device: torch.device, tta: bool = False, shard: tuple[int, int] = (0, 1),
                   seed: int = 0) -> EvaluationResult:
    """Per-case test metrics of a trained model (the task's test metrics, e.g. Dice, HD95 in mm);
    ``shard=(rank, world_size)`` splits the cases across the ranks of a DDP job and gathers them; ``seed``: the
    run's (interactive evaluation draws its clicks from it)."""
    request = EvaluationRequest(stage="test", record_attention=plan.setup.info.returns_attention, desc="test",
                                shard=shard)
    settings = inference_settings(plan.setup, config, device, tta, seed=seed)
    return evaluate_cases(model, cases, plan.task, settings, request)


def _failure_status(exc: BaseException) -> str:
    if isinstance(exc, DivergedError):
        return "diverged"
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    return "failed"


def run_job(job: Job, plan: ModelPlan, data: SweepData, config: ExperimentConfig, context: RunContext, *,
            efficiency: dict[str, Any], hooks: Sequence[TrainerHooks] = ()) -> dict[str, Any]:
    """Train and test one job into its folder (``context.job_dir``); any exception becomes a row with
    status and error. Interruptions (``KeyboardInterrupt``, a kill) leave the ``latest`` state for resume.
    Under DDP every rank runs this for the same job and only rank 0 writes."""
    folder = JobFolder(context.job_dir)  # type: ignore[arg-type]
    writes = context.writes_job_files
    if writes:
        folder.remove_stale_temporaries()  # left by a process killed while writing
    if writes and not folder.latest_checkpoint.is_file():
        folder.clear_results()  # a fresh start (or a rerun of a failed job): no rows of an earlier attempt
    if writes:
        folder.write_job(dict(model=job.model, seed=job.seed, fold=job.fold, index=job.index,
                              result_columns=list(plan.task.result_columns()),
                              trainer=dataclasses.asdict(plan.trainer)))
    keys = dict(model=job.model, seed=job.seed, fold=job.fold)
    labels = plan.task.run_labels()  # prompt_mode, click_mode
    row: dict[str, Any] = dict(keys, status="ok", error="")
    tracking = JobTracking(config, folder.path, Path(context.output_dir), job.label,
                           dict(keys, **dataclasses.asdict(plan.trainer))) if writes else None
    job_hooks = [EpochRowWriter(folder, keys, job.label, config.epochs), BestValidationWriter(folder, keys),
                 tracking] if writes else []
    try:
        model, fit_result, checkpoint = train_model(job, plan, data, config, context, hooks=[*job_hooks, *hooks])
        if writes:
            export_encoder(model, checkpoint)  # SAM-Med3D: the best weights' image encoder, sam_encoder.pth
        test = evaluate_model(model, plan, data.subset(data.splits["test"]), config, device=context.device,
                              shard=context.job_shard, seed=job.seed)
        if tracking is not None:
            tracking.log_test(test.aggregate)
        if writes:
            folder.write_table("epochs", [dict(keys, **r) for r in fit_result.epoch_rows])
            for table, rows in test.all_tables().items():
                if table in SUBMISSION_FILES:  # another tool's format, under predictions/<run>/
                    write_submission(Path(context.output_dir), job.name, table, rows)
                else:
                    folder.write_table(table, [dict(keys, **r) for r in rows])
        if context.mode == "ddp":
            agree()  # the job's end: a rank that failed after the test gather (e.g. rank 0 writing) says so here
        row.update(epochs=fit_result.epochs_run, best_epoch=fit_result.best_epoch,
                   **{plan.task.selection.column: fit_result.best_metric}, n_test_cases=len(test.per_case),
                   **{k: v for k, v in test.aggregate.items() if not k.startswith("n_")},
                   train_time_s=fit_result.train_time_s, checkpoint=str(checkpoint))
        del model
    except OutputWriteError:  # a full disk is no job's fault: stop, the job stays resumable
        raise
    except Exception as exc:  # noqa: BLE001 - one failing model must not stop the sweep
        raise_if_stopping(exc)  # e.g. DataLoader workers killed by the stop signal: the stop, not a failure
        if context.mode == "ddp":
            exc = announce(exc)  # the same RankFailed on every rank of the job, naming the failing ranks
        row.update(status=_failure_status(exc), error=f"{type(exc).__name__}: {exc}"[:500])
        log.error("job %s failed: %s\n%s", job.key, row["error"], traceback.format_exc(limit=5))
        if context.device.type == "cuda":
            torch.cuda.empty_cache()
    row.update(efficiency)
    row.update(labels, **{SOURCE_COLUMN: "volbench"})
    if tracking is not None:
        tracking.close(row["status"])
    if writes:
        folder.write_table("runs", [row])  # last: the job is finished
        if not config.keep_latest:
            folder.latest_checkpoint.unlink(missing_ok=True)
    return row


def measure_model_efficiency(plan: ModelPlan, config: ExperimentConfig, device: torch.device
                             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Params, FLOPs, PAM and latency of a freshly built model at its patch size, and its stage-wise PAM
    rows ({} and [] when the measurement fails: efficiency must not cost the model its results)."""
    setup = plan.setup
    try:
        seed_everything(0)
        model = setup.build().to(device)
        values = measure_efficiency(model, setup.efficiency_input, device=device, pam_runs=config.pam_runs,
                                    latency_runs=config.latency_runs)
        return values, stage_wise_pam(model, setup.efficiency_input, device=device)
    except Exception as exc:  # noqa: BLE001
        log.warning("efficiency measurement of %s failed: %s", setup.name, exc)
        return {}, []


def sweep_efficiency(models: list[str], plans: dict[str, ModelPlan], config: ExperimentConfig,
                     context: RunContext) -> dict[str, dict[str, Any]]:
    """Figures of every model with jobs to run, measured once per model (``efficiency/``): under torchrun
    rank 0 measures while the other ranks wait, so no figure is taken on cores busy with training."""
    if config.skip_efficiency or not models:
        return {m: {} for m in models}
    if context.is_main:
        for name in models:
            ensure_efficiency(context.output_dir, name,
                              lambda plan=plans[name]: measure_model_efficiency(plan, config, context.device))
    barrier()
    return {m: read_efficiency(context.output_dir, m) or {} for m in models}


def _job_done(folder: JobFolder) -> bool:
    """A job finished ok and its best checkpoint still exists: a resumed sweep skips it."""
    row = folder.run_row()
    return row is not None and row.get("status") == "ok" and isinstance(row.get("checkpoint"), str) \
        and Path(row["checkpoint"]).is_file()


def run_integrated_experiment(config: ExperimentConfig, *, dataset: LoadedDataset | None = None,
                              hooks: Sequence[TrainerHooks] = ()) -> Path:
    """Run the whole sweep (or this process's share of it); returns the results folder.

    ``dataset`` replaces the one the data flags describe (library use and tests); ``hooks`` are added
    to every job's trainer. Under torchrun the process group is started here and ended on return.
    """
    config.validate()
    env = dist_env()
    mode = resolve_mode(config.parallel, config.shard, env)
    device = process_device(env, resolve_device(config.device))
    init_process_group(env, device)
    try:
        context = RunContext(output_dir=Path(config.output_dir) if config.output_dir else default_output_dir(),
                             device=device, rank=env.rank, world_size=env.world_size, mode=mode)
        return _run_sweep(config, context, dataset, hooks)
    finally:
        destroy_process_group()


def _run_sweep(config: ExperimentConfig, context: RunContext, dataset: LoadedDataset | None,
               hooks: Sequence[TrainerHooks]) -> Path:
    models = resolve_model_names(config.models)
    output_dir = context.output_dir
    check_output_dir(output_dir, config.resume, config.shard)
    barrier()  # every rank has checked the folder before rank 0 writes into it
    if context.is_main:
        data = prepare_data(config, output_dir, dataset)  # rank 0 builds phantoms and cache entries first
    barrier()
    if not context.is_main:
        data = prepare_data(config, output_dir, dataset)
    plans = plan_models(models, config, data)  # every check passes before anything is written
    externals = parse_external(config.external_predictions, config.external_label_map)
    check_sources(externals, list(data.splits["test"]), models)  # before any training: a missing case is an error
    check_ensembles(config.ensemble, models)
    record = sweep_record(config, data, models, context)
    if config.resume or config.shard is not None:
        check_resume(output_dir, record)
    all_jobs = make_jobs(models, config.seeds, data.splits)
    folders = {j.key: JobFolder(context.for_job(*j.key).job_dir) for j in all_jobs}  # type: ignore[arg-type]
    if context.is_main:
        write_sweep_files(output_dir, data, record)
        if config.resume and context.jobs_root.is_dir():
            reduce_results(output_dir)  # tables exactly as the job folders say (e.g. after a kill)
    barrier()
    pending = [j for j in all_jobs if not _job_done(folders[j.key])]
    mine = select_jobs(pending, shard=config.shard, mode=context.mode, rank=context.rank,
                       world_size=context.world_size)
    log.info("%d of %d jobs pending (%d models x %d seeds x %d folds); rank %d of %d (%s) runs %d; results in %s",
             len(pending), len(all_jobs), len(models), len(config.seeds), len(iter_folds(data.splits)), context.rank,
             context.world_size, context.mode, len(mine), output_dir)
    efficiency = sweep_efficiency(list(dict.fromkeys(j.model for j in pending)), plans, config, context)
    _run_jobs(mine, all_jobs, plans, data, config, context, folders, efficiency, hooks)
    barrier()
    if context.is_main:
        if externals:
            add_external_rows(output_dir, externals, data.subset(data.splits["test"]),
                              label_map_task(data.info, lesions=config))
        if config.ensemble or config.postprocess:
            inputs = EnsembleInputs(data.subset(data.splits["test"]), data.subset, data.splits,
                                    output_dir / SPLITS_JSON, context.device, amp=config.amp, lesions=config)
            add_ensemble_rows(output_dir, config.ensemble, config.postprocess, models, inputs)
        reduce_results(output_dir)
        _draw_charts(output_dir)
    return output_dir


def _run_jobs(jobs: list[Job], all_jobs: list[Job], plans: dict[str, ModelPlan], data: SweepData,
              config: ExperimentConfig, context: RunContext, folders: dict[tuple, JobFolder],
              efficiency: dict[str, dict[str, Any]], hooks: Sequence[TrainerHooks]) -> None:
    """Run ``jobs`` in order; after each, its rows go into the sweep tables (O(1) per job)."""
    reducer = IncrementalReducer(context.output_dir)
    by_model: dict[str, list[JobFolder]] = {}
    for grid_job in all_jobs:
        by_model.setdefault(grid_job.model, []).append(folders[grid_job.key])
    start = time.perf_counter()
    for index, job in enumerate(jobs, start=1):
        elapsed = time.perf_counter() - start
        eta = f"~{elapsed / (index - 1) * (len(jobs) - index + 1):.0f}s" if index > 1 else "unknown yet"
        log.info("job %d/%d: %s (elapsed %.0fs, remaining %s)", index, len(jobs), job.label, elapsed, eta)
        folder = folders[job.key]
        rerun = folder.run_row() is not None  # a failed job run again: its old rows are in the tables
        if context.mode == "ddp":
            barrier()  # every rank has looked before rank 0 writes
        run_job(job, plans[job.model], data, config, context.for_job(*job.key), efficiency=efficiency[job.model],
                hooks=hooks)
        if not context.writes_job_files:
            continue
        if rerun:
            reduce_results(context.output_dir)
        else:
            reducer.add_job(folder, by_model[job.model])
    log.info("%d jobs finished in %.0fs; results in %s", len(jobs), time.perf_counter() - start, context.output_dir)


def _draw_charts(output_dir: Path) -> None:
    from visualization import draw_all  # reads only the CSV files just written

    for path in draw_all(output_dir):
        log.info("chart written: %s", path)


run_sweep = run_integrated_experiment
