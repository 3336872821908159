"""Re-evaluate saved checkpoints: rebuild each model from its own metadata, predict cases, collect rows.

A checkpoint (``utils.checkpoint``) carries the model name, its build kwargs and ``meta`` (modalities,
spatial dims, patch size, context slices, validation overlap, fold). Inference uses exactly the sweep's
settings: sliding window of ``meta["patch_size"]`` voxels, overlap ``meta["val_overlap"]``, Gaussian
blending, argmax labels; cases go through ``engine.evaluation.evaluate_cases`` (the sweep's), so re-evaluating
a sweep's checkpoint on its test cases reproduces its ``per_case_results.csv``.

Data sources: the on-disk cache (``DataOptions`` = the sweep's data flags) or an image folder
(:func:`load_image_folder`, uncached), with or without labels.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from dataio.preprocess import preprocess_case
from dataio.splits import load_splits
from dataio.types import MODALITY_ORDER, CachedCase, CaseFiles
from engine.options.data_options import DataOptions
from engine.evaluation import EvaluationRequest, evaluate_cases
from engine.inference import InferenceSettings
from engine.evaluate.folders import case_name, metric_summary
from engine.tasks import task_from_meta
from metrics.surface import EMPTY_MASK_RULES
from models import create_model, model_info
from utils.checkpoint import load_checkpoint
from utils.schema import (COMPARISON_CSV, EFFICIENCY_COLUMNS, EVALUATION_SUMMARY_JSON, PER_CASE_CSV, RUNS_CSV,
                          SPLITS_JSON, checkpoint_name, fold_value)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".nii.gz", ".nii")
@dataclass
class RunSpec:
    """One checkpoint to evaluate: identity of its run and the case ids to use (``None`` = all)."""

    checkpoint: Path
    model: str
    seed: int | None
    fold: int | None
    case_ids: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # columns carried over from the sweep's run row
    name: str | None = None  # overrides the derived label (to keep labels unique)
    meta: dict[str, Any] | None = None  # the checkpoint's meta, read by check_runs

    @property
    def label(self) -> str:
        """Folder/file name of the run, e.g. ``unet3d_xs_seed_1_fold_0``."""
        if self.name:
            return self.name
        seed = "" if self.seed is None else f"_seed_{self.seed}"
        fold = "" if self.fold is None else f"_fold_{self.fold}"
        return f"{self.model}{seed}{fold}" if seed or fold else self.checkpoint.stem


def load_model(path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint from its own name/kwargs and load its weights (eval mode).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, unknown model name or weights that do not fit -- naming the file.
    """
    payload = load_checkpoint(path)
    try:
        model = create_model(payload["model_name"], **payload["model_kwargs"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"checkpoint {path}: cannot rebuild model {payload['model_name']!r}: {exc}") from exc
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path}: weights do not fit model {payload['model_name']!r}: "
                         f"{str(exc)[:300]}") from exc
    payload.setdefault("meta", {})
    return model.to(device).eval(), payload


def settings_from_meta(meta: dict[str, Any], path: Path, device: torch.device, *, tta: bool = False,
                       amp: bool = True) -> InferenceSettings:
    """The sweep's inference settings of a checkpoint (roi = meta patch size, overlap = meta val_overlap)."""
    missing = [k for k in ("modalities", "patch_size", "val_overlap") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint {path}: meta lacks {missing}; cannot choose the inference settings")
    return InferenceSettings(modalities=tuple(meta["modalities"]), roi_size=tuple(int(p) for p in meta["patch_size"]),
                             overlap=float(meta["val_overlap"]), device=device,
                             spatial_dims=int(meta.get("spatial_dims", 3)),
                             context_slices=int(meta.get("context_slices", 0)), amp=amp, tta=tta,
                             seed=int(meta.get("seed") or 0))


def read_json(path: Path, what: str) -> Any:
    """JSON content of ``path``; ``ValueError`` naming it when missing or invalid."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON: {exc}") from None


def dataset_case_files(options: DataOptions) -> dict[str, CaseFiles]:
    """Original files (images, label) of every case of the dataset, keyed by case id (for overlays)."""
    return {c.case_id: c for c in options.case_files(require_labels=False)}


def _image_file(image_dir: Path, case: str, modality: str) -> Path | None:
    return next((image_dir / f"{case}_{modality}{e}" for e in IMAGE_EXTENSIONS
                 if (image_dir / f"{case}_{modality}{e}").is_file()), None)


def image_folder_cases(image_dir: Path, label_dir: Path | None, convention: str) -> list[CaseFiles]:
    """Cases of an image folder: ``{case}_{t1,t1ce,t2,flair}.nii[.gz]`` in ``image_dir``, labels
    ``{case}[_seg|-seg].nii[.gz]`` in ``label_dir`` (optional), in label ``convention``.

    Raises:
        ValueError: missing folder, no cases, a case lacking a modality or (with ``label_dir``) a label.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"--image_dir {image_dir} is not a folder")
    suffix = f"_{MODALITY_ORDER[-1]}"
    names = sorted({case_name(p)[: -len(suffix)] for p in image_dir.iterdir()  # type: ignore[index]
                    if p.name.endswith(IMAGE_EXTENSIONS) and (case_name(p) or "").endswith(suffix)})
    if not names:
        raise ValueError(f"--image_dir {image_dir} holds no {{case}}_{{t1,t1ce,t2,flair}}.nii.gz files")
    labels = {}
    if label_dir is not None:
        if not Path(label_dir).is_dir():
            raise ValueError(f"--label_dir {label_dir} is not a folder")
        labels = {case_name(p): p for p in Path(label_dir).iterdir() if p.name.endswith(IMAGE_EXTENSIONS)}
    cases = []
    for name in names:
        images = {m: _image_file(image_dir, name, m) for m in MODALITY_ORDER}
        missing = [m for m, p in images.items() if p is None]
        if missing:
            raise ValueError(f"case {name}: missing {missing} in --image_dir {image_dir} "
                             f"(expected {image_dir / f'{name}_{missing[0]}.nii.gz'})")
        if label_dir is not None and name not in labels:
            raise ValueError(f"missing label for case {name}: expected {Path(label_dir) / f'{name}.nii.gz'}")
        cases.append(CaseFiles(case_id=name, patient_id=name, images=images,  # type: ignore[arg-type]
                               label=labels.get(name), convention=convention))
    return cases


def load_image_folder(files: list[CaseFiles]) -> list[CachedCase]:
    """Preprocess folder cases in memory (same preprocessing as the cache, not cached)."""
    return [preprocess_case(c) for c in files]


def _checkpoint_path(results_dir: Path, row: dict[str, Any]) -> Path:
    recorded = row.get("checkpoint")
    if isinstance(recorded, str) and recorded:
        for candidate in (Path(recorded), results_dir / Path(recorded).name):
            if candidate.is_file():
                return candidate
        return Path(recorded)
    return results_dir / checkpoint_name(row["model"], row["seed"], row["fold"])


def split_ids(splits: dict[str, Any], split: str, fold: int | None, source: Path) -> list[str]:
    """Test ids, or the val ids of ``fold`` (``None`` = the holdout fold) from a splits dict."""
    if split == "test":
        return list(splits["test"])
    for entry in splits["folds"]:
        if fold_value(entry.get("fold")) == fold:
            return list(entry["val"])
    raise ValueError(f"splits file {source} has no fold {fold} (needed for --split val)")


def plan_results_runs(results_dir: Path, models: list[str] | None, split: str) -> list[RunSpec]:
    """One :class:`RunSpec` per ok run of a finished sweep (filtered by ``models`` names/wildcards).

    Raises:
        ValueError: not a folder, no results CSV, no ok runs, no run matching ``models``, bad splits.json.
    """
    results_dir = Path(results_dir)
    csv = results_dir / RUNS_CSV
    if not results_dir.is_dir():
        raise ValueError(f"--results_dir {results_dir} is not a folder")
    if not csv.is_file():
        raise ValueError(f"--results_dir {results_dir} holds no {RUNS_CSV} (not a finished sweep?)")
    try:
        runs = pd.read_csv(csv)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{csv} is empty") from None
    ok = runs[runs.get("status", pd.Series("ok", index=runs.index)).astype(str) == "ok"] if len(runs) else runs
    if ok.empty:
        raise ValueError(f"{csv} has no run with status ok")
    if models:
        keep = ok["model"].astype(str).map(lambda m: any(fnmatch.fnmatchcase(m, p) for p in models))
        if not keep.any():
            raise ValueError(f"--models {models} match no ok run in {csv}; runs: {sorted(set(ok['model']))}")
        ok = ok[keep]
    splits_path = results_dir / SPLITS_JSON
    splits = load_splits(splits_path)
    plan = []
    for row in ok.to_dict("records"):
        row["fold"] = fold_value(row.get("fold"))
        extra = {c: row[c] for c in EFFICIENCY_COLUMNS if c in row}
        plan.append(RunSpec(checkpoint=_checkpoint_path(results_dir, row), model=str(row["model"]),
                            seed=int(row["seed"]), fold=row["fold"], extra=extra,
                            case_ids=split_ids(splits, split, row["fold"], splits_path)))
    return plan


def plan_checkpoint_runs(paths: list[Path], split: str | None, splits_file: Path | None) -> list[RunSpec]:
    """One :class:`RunSpec` per checkpoint file; cases = all, or ``split`` of ``splits_file``."""
    if split is not None and splits_file is None:
        raise ValueError(f"--split {split} with --checkpoint needs --splits_file (e.g. a sweep's splits.json)")
    splits = load_splits(splits_file) if splits_file is not None else None
    plan = []
    for path in paths:
        payload = load_checkpoint(path)
        meta = payload.get("meta", {})
        fold = fold_value(meta.get("fold"))
        ids = None
        if splits is not None and split is not None and splits_file is not None:
            ids = split_ids(splits, split, fold, splits_file)
        plan.append(RunSpec(checkpoint=Path(path), model=str(payload["model_name"]), seed=meta.get("seed"),
                            fold=fold, case_ids=ids))
    seen: dict[str, int] = {}
    for run in plan:  # two files of the same model/seed/fold get distinct labels (prediction folders)
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.name = f"{run.label}_{seen[run.label]}"
    return plan


def check_runs(plan: list[RunSpec]) -> None:
    """Fail early (before any data is loaded): every checkpoint must exist, be readable and name a
    registered model. Raises ``FileNotFoundError`` / ``ValueError`` naming the file. Keeps each
    checkpoint's meta on its run."""
    for run in plan:
        payload = load_checkpoint(run.checkpoint)
        run.meta = payload.get("meta", {})
        try:
            model_info(payload["model_name"])
        except ValueError as exc:
            raise ValueError(f"checkpoint {run.checkpoint}: {exc}") from exc


@dataclass
class RunResult:
    """Outcome of one evaluated run: its table row, its per-case rows, its prediction folder and its task's
    result columns (the metric columns of the comparison, as a sweep's job records them)."""

    row: dict[str, Any]
    per_case: list[dict[str, Any]]
    prediction_dir: Path | None
    metric_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class PredictionOutput:
    """Where a run's predictions are written (``engine.tasks.prediction_io``): under ``directory`` (None:
    nowhere), for the cases in ``save_ids`` (None: all), with their softmax probabilities
    (``save_probabilities``) in ``probability_format``."""

    directory: Path | None = None
    save_ids: set[str] | None = None
    save_probabilities: bool = False
    probability_format: str = "nifti"


def evaluate_run(run: RunSpec, cases: list[CachedCase], *, device: torch.device, tta: bool = False,
                 amp: bool = True, output: PredictionOutput = PredictionOutput(), lesions: Any = None) -> RunResult:
    """Rebuild the run's model, predict every case and compute per-case metrics of labelled cases
    (``lesions``: the lesion flags of the evaluation, ``None`` for their defaults); predictions are
    written as ``output`` says (nowhere by default).
    """
    start = time.perf_counter()
    model, payload = load_model(run.checkpoint, device)
    meta = payload["meta"]
    settings = settings_from_meta(meta, run.checkpoint, device, tta=tta, amp=amp)

    task = task_from_meta(meta, lesions)
    if tta and not task.supports_tta:
        raise ValueError(f"--tta averages dense logits; {run.checkpoint} is a {task.name} model (boxes): evaluate it "
                         "without --tta")

    def save(case: CachedCase, prediction: Any) -> None:
        if output.directory is not None and (output.save_ids is None or case.case_id in output.save_ids):
            task.write_prediction(case, prediction, output.directory, save_probabilities=output.save_probabilities,
                                  probability_format=output.probability_format)

    result = evaluate_cases(model, cases, task, settings, EvaluationRequest(stage="test", desc=run.label,
                                                                            on_prediction=save))
    keys = dict(model=run.model, seed=run.seed, fold=run.fold)
    aggregate = {k: v for k, v in result.aggregate.items() if not k.startswith("n_")}
    row = dict(keys, status="ok", error="", best_epoch=meta.get("epoch"), n_cases=len(cases),
               n_labelled_cases=result.aggregate["n_cases"], **aggregate, **run.extra,
               eval_time_s=time.perf_counter() - start, checkpoint=str(run.checkpoint), **task.run_labels())
    per_case = [dict(keys, **r) for r in result.per_case]
    logger.info("%s: %d cases (%d labelled), dice_mean %.4f", run.label, len(cases), row["n_labelled_cases"],
                float(row.get("dice_mean", float("nan"))))
    del model
    return RunResult(row=row, per_case=per_case, prediction_dir=output.directory,
                     metric_columns=tuple(task.result_columns()))


def select_cases(cases: list[CachedCase], ids: list[str] | None, source: str) -> list[CachedCase]:
    """The cases with ``ids`` in that order (all when None); ``ValueError`` naming unknown ids."""
    if ids is None:
        return list(cases)
    by_id = {c.case_id: c for c in cases}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise ValueError(f"{source}: case ids {unknown[:10]} are not in the dataset ({len(by_id)} cases)")
    return [by_id[i] for i in ids]


def summary_of(results: list[RunResult], context: dict[str, Any]) -> dict[str, Any]:
    """``evaluation_summary.json``: the context (mode, split, data, tta), per run the means and NaN
    counts over its cases, and per model the mean over its runs of each run mean."""
    runs = []
    for result in results:
        keys = {k: result.row[k] for k in ("model", "seed", "fold", "checkpoint", "n_cases")}
        runs.append(dict(keys, **metric_summary(result.per_case)))
    models: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        own = [r for r in runs if r["model"] == model]
        keys = list(dict.fromkeys(k for r in own for k in r["mean"]))
        means = {k: [r["mean"][k] for r in own if k in r["mean"] and not math.isnan(r["mean"][k])] for k in keys}
        models[model] = {"n_runs": len(own), "mean_over_runs": {k: float(np.mean(v)) if v else float("nan")
                                                                for k, v in means.items()}}
    return dict(context, runs=runs, models=models, empty_mask_rules=dict(EMPTY_MASK_RULES))


def write_evaluation(output_dir: Path, results: list[RunResult], context: dict[str, Any],
                     results_dir: Path | None = None) -> list[Path]:
    """Write ``per_case_results.csv``, ``integrated_experiment_results.csv`` (one row per evaluated run,
    the sweep's schema so every chart works), ``model_comparison.csv`` (with the comparison statistics),
    ``statistical_tests.csv``, ``ranking.csv`` and ``evaluation_summary.json`` into ``output_dir``; returns the
    files written. ``results_dir``: the sweep whose recorded statistics flags apply."""
    from engine.results.reducer import build_comparison
    from utils.atomic import atomic_write_csv, atomic_write_json

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    per_case = [r for res in results for r in res.per_case]
    if per_case:
        atomic_write_csv(output_dir / PER_CASE_CSV, pd.DataFrame(per_case))
        written.append(output_dir / PER_CASE_CSV)
    runs = pd.DataFrame([res.row for res in results])
    atomic_write_csv(output_dir / RUNS_CSV, runs)
    metrics = {c for res in results for c in res.metric_columns} or None  # None: by the metric prefixes
    basic = build_comparison(runs, metrics)
    atomic_write_csv(output_dir / COMPARISON_CSV, basic)
    atomic_write_json(output_dir / EVALUATION_SUMMARY_JSON, summary_of(results, context))
    written += [output_dir / RUNS_CSV, output_dir / COMPARISON_CSV, output_dir / EVALUATION_SUMMARY_JSON]
    tables = {"runs": runs, "per_case": pd.DataFrame(per_case)} if per_case else {"runs": runs}
    return written + _statistics(output_dir, tables, basic, metrics, results_dir)


def _statistics(output_dir: Path, tables: dict[str, pd.DataFrame], basic: pd.DataFrame, metrics: set[str] | None,
                results_dir: Path | None) -> list[Path]:
    """The sweep's comparison statistics over the evaluated runs' ``tables`` (``runs``, ``per_case`` when any) and
    ``metrics`` (flags recorded by ``results_dir``, else the defaults; model order as evaluated); a failure is
    logged and leaves the basic comparison."""
    from engine.results.reducer import recorded_stats, write_statistics
    from engine.options.stats_options import StatsOptions

    options, order = recorded_stats(results_dir) if results_dir is not None else (StatsOptions(), [])
    runs = tables["runs"]
    models = [m for m in order if m in set(runs["model"])] or list(dict.fromkeys(runs["model"].astype(str)))
    try:
        return write_statistics(output_dir, tables, basic, options, models, metrics)
    except Exception:  # derived tables: the evaluation's own rows are already written
        logger.exception("the comparison statistics of %s failed; %s holds the basic comparison", output_dir,
                         COMPARISON_CSV)
        return []
