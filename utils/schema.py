"""The result-file contract (ARCHITECTURE.md section 4) in one place: file names, columns, run keys,
job folder and checkpoint names, region names.

The runner, the reducer, ``evaluate_experiment.py`` and ``visualization/`` import these names instead
of repeating literals. This module imports nothing of volbench, so any layer may use it.
"""

from __future__ import annotations

import math
import re
from typing import Any

# sweep-level tables (reduced from the job folders)
RUNS_CSV = "integrated_experiment_results.csv"
EPOCHS_CSV = "all_epochs_results.csv"
PER_CASE_CSV = "per_case_results.csv"
COMPARISON_CSV = "model_comparison.csv"
STAGE_PAM_CSV = "stage_wise_pam_results.csv"
ATTENTION_CSV = "modality_attention.csv"
CONFUSION_CSV = "confusion_matrices.csv"
VAL_PER_CASE_CSV = "val_per_case_results.csv"  # each job's validation cases at its best epoch (out-of-fold)
STATISTICAL_TESTS_CSV = "statistical_tests.csv"  # paired tests on the per-case test results (engine/comparison_stats)
RANKING_CSV = "ranking.csv"  # rank-then-aggregate over the test cases and its bootstrap stability
LESION_BOXES_CSV = "lesion_boxes.csv"  # lesion track: each test case's predicted and reference boxes per run
CONFIG_JSON = "config.json"
ENVIRONMENT_JSON = "environment.json"
SPLITS_JSON = "splits.json"
EVALUATION_SUMMARY_JSON = "evaluation_summary.json"

# per-job folders: jobs/<model>_seed_<s>[_fold_<k>]/{job.json, run.csv, epochs.csv, ...}
JOBS_DIR = "jobs"
JOB_JSON = "job.json"
LATEST_CHECKPOINT = "latest.pth"
LOCK_FILE = ".volbench.lock"
# per-model efficiency measurements: efficiency/<model>.json (run-table columns) and <model>_stage_pam.csv
EFFICIENCY_DIR = "efficiency"
STAGE_PAM_LEADING = ("model", "stage")

# table name -> (job-folder file, sweep-level file, leading columns)
TABLES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "runs": ("run.csv", RUNS_CSV, ()),  # leading/trailing of the runs table: RUN_LEADING / RUN_TRAILING
    "epochs": ("epochs.csv", EPOCHS_CSV, ("model", "seed", "fold", "epoch")),
    "per_case": ("per_case.csv", PER_CASE_CSV, ("model", "seed", "fold", "case_id")),
    "attention": ("attention.csv", ATTENTION_CSV, ("model", "seed", "fold", "case_id")),
    "confusion": ("confusion.csv", CONFUSION_CSV, ("model", "seed", "fold", "reference")),
    "val_cases": ("val_per_case.csv", VAL_PER_CASE_CSV, ("model", "seed", "fold", "epoch", "case_id")),
    # lesion track: every test case's boxes, one row per "case" (with the matching settings), "gt" and "pred" box
    # (score, x1..z2 in voxels, max exclusive), "nodule" and "excluded" sphere of rule radius (cx, cy, cz, diameter
    # in world mm; "pred" rows carry their world centre too); columns: metrics.lesion_bootstrap.BOX_COLUMNS, rows:
    # metrics.lesion_bootstrap.box_rows; for the scan bootstrap of AP/FROC
    "boxes": ("boxes.csv", LESION_BOXES_CSV, ("model", "seed", "fold", "case_id", "kind")),
}

# files a run writes under predictions/<run>/ in another tool's format (no run keys): table name -> (file, columns);
# the LUNA16 track's test candidates as the challenge's evaluation script reads them (world mm, LPS)
SUBMISSION_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "luna_candidates": ("luna_candidates.csv", ("seriesuid", "coordX", "coordY", "coordZ", "probability")),
}
PREDICTIONS_DIR = "predictions"

RUN_KEYS = ("model", "seed", "fold")
SOURCE_COLUMN = "source"  # where a run's predictions came from: volbench (trained here), external, ensemble
# promptable models' interactive results, one column per click count (``dice_<region>_click<k>``): kept apart from
# the paired tests and rankings against automatic models, which see the prompt-free columns only
PER_CLICK_SUFFIX = re.compile(r"_click\d+$")


def is_per_click(column: str) -> bool:
    """Whether ``column`` is a per-click-count column of interactive evaluation."""
    return bool(PER_CLICK_SUFFIX.search(str(column)))
RUN_LEADING = ["model", "seed", "fold", "status", "error", "epochs", "best_epoch", "best_val_dice"]
RUN_TRAILING = ["params", "flops_torch", "flops_thop", "flops_input", "pam_train_mb", "pam_train_mb_std",
                "pam_infer_mb", "pam_infer_mb_std", "latency_ms", "latency_ms_std", "latency_ms_median",
                "latency_cv", "latency_load", "latency_cpu_share", "latency_threads", "latency_flag",
                "train_time_s", "checkpoint"]
# per-model measurements (identical for every run of a model): copied into model_comparison.csv as is
EFFICIENCY_COLUMNS = ["params", "flops_torch", "flops_thop", "flops_input", "pam_train_mb", "pam_train_mb_std",
                      "pam_infer_mb", "pam_infer_mb_std", "latency_ms", "latency_ms_std", "latency_ms_median",
                      "latency_cv", "latency_load", "latency_cpu_share", "latency_threads", "latency_flag"]
# latency quality (metrics.efficiency.measure_latency): latency_cv = std / mean of the timed runs; latency_load =
# 1-minute load average per CPU core (the higher of before and after timing); latency_cpu_share = CPU time of
# this process / (wall time x torch threads) while timing (below 1: other processes took the cores; empty when
# the timed runs last under 0.1 s, too short for the process CPU clock);
# latency_flag = "" (clean) or "busy" and/or "noisy" joined by "+", e.g. "busy+noisy"
# prefixes of test-metric columns in the runs table (segmentation, BraTS lesion-wise, lesion track: AP/mAP/mAR,
# FROC and the summed per-case lesion counts): how the reducer picks the metric columns of job folders written
# before each job recorded its task's result columns in job.json (``result_columns``), and of tables without jobs
METRIC_PREFIXES = ("dice_", "hd95_", "precision_", "recall_", "lesion_dice_", "lesion_hd95_", "ap_", "map", "mar",
                   "froc_", "lesions", "fp_components", "n_pred_boxes")
STATUSES = ("ok", "failed", "diverged", "oom")

# region names used in column names (dice_<region>, hd95_<region>, ...)
BRATS_REGION_NAMES = ("wt", "tc", "et")
BRATS_CLASS_NAMES = ("ncr", "ed")
DEFAULT_BINARY_REGION = "lesion"  # binary tasks without a dataset-given name (folder evaluation)
ICH_REGION = "ich"


def fold_suffix(fold: int | None) -> str:
    """``""`` for the holdout split, ``"_fold_<k>"`` for fold k."""
    return "" if fold is None else f"_fold_{int(fold)}"


def job_name(model: str, seed: int, fold: int | None) -> str:
    """Name of a job's folder under ``jobs/``, e.g. ``unet3d_xs_seed_24_fold_0``."""
    return f"{model}_seed_{int(seed)}{fold_suffix(fold)}"


def checkpoint_name(model: str, seed: int, fold: int | None) -> str:
    """File name of a job's best checkpoint in the results folder, e.g. ``unet3d_xs_seed_24_best.pth``."""
    return f"{job_name(model, seed, fold)}_best.pth"


def fold_value(value: Any) -> int | None:
    """A fold read back from a CSV/JSON (NaN, None, <NA> or a number) as ``int | None``."""
    if value is None or value is _pandas_na():
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return int(value)


def run_key(row: dict[str, Any]) -> tuple[str, int, int | None]:
    """(model, seed, fold) of a result row."""
    return (str(row["model"]), int(row["seed"]), fold_value(row.get("fold")))


def _pandas_na() -> Any:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return None
    return pd.NA
