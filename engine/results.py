"""Result tables of a sweep (ARCHITECTURE.md section 4), rewritten atomically after every job.

Files: integrated_experiment_results.csv (run), all_epochs_results.csv (run x epoch),
per_case_results.csv (run x test case), model_comparison.csv (model), stage_wise_pam_results.csv
(model x stage), modality_attention.csv (run x case x stage x modality; attention models only),
confusion_matrices.csv (run x reference label x predicted label: test voxels summed over cases).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.atomic import atomic_write_csv

log = logging.getLogger(__name__)

RUNS_CSV = "integrated_experiment_results.csv"
EPOCHS_CSV = "all_epochs_results.csv"
PER_CASE_CSV = "per_case_results.csv"
COMPARISON_CSV = "model_comparison.csv"
STAGE_PAM_CSV = "stage_wise_pam_results.csv"
ATTENTION_CSV = "modality_attention.csv"
CONFUSION_CSV = "confusion_matrices.csv"

RUN_KEYS = ("model", "seed", "fold")
RUN_LEADING = ["model", "seed", "fold", "status", "error", "epochs", "best_epoch", "best_val_dice"]
RUN_TRAILING = ["params", "flops_torch", "flops_thop", "flops_input", "pam_train_mb", "pam_train_mb_std",
                "pam_infer_mb", "pam_infer_mb_std", "latency_ms", "latency_ms_std", "latency_ms_median",
                "train_time_s", "checkpoint"]
# Per-model measurements (identical for every run of a model): copied into model_comparison.csv as is.
EFFICIENCY_COLUMNS = ["params", "flops_torch", "flops_thop", "flops_input", "pam_train_mb", "pam_train_mb_std",
                      "pam_infer_mb", "pam_infer_mb_std", "latency_ms", "latency_ms_std", "latency_ms_median"]


def _order(frame: pd.DataFrame, leading: list[str], trailing: list[str] | None = None) -> pd.DataFrame:
    trailing = trailing or []
    middle = [c for c in frame.columns if c not in leading and c not in trailing]
    cols = [c for c in leading if c in frame.columns] + middle + [c for c in trailing if c in frame.columns]
    return frame[cols]


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Test-metric columns of the runs table (dice_*, hd95_*, precision_*, recall_*)."""
    prefixes = ("dice_", "hd95_", "precision_", "recall_", "map_", "mar_", "froc_")
    return [c for c in runs.columns if c.startswith(prefixes)]


def build_comparison(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model: n_runs, n_ok, mean/std over ok runs of every metric and of train_time_s,
    the model's efficiency measurements as measured (with their own std over repeats), and a rank
    by mean Dice (1 = best).

    Means and stds are over runs (seeds x folds), NaN-skipping; ``std`` uses ddof=1 (NaN for one run).
    """
    rows = []
    metrics = metric_columns(runs) + [c for c in ("train_time_s",) if c in runs.columns]
    for model, group in runs.groupby("model", sort=False):
        ok = group[group["status"] == "ok"]
        row: dict[str, Any] = dict(model=model, n_runs=len(group), n_ok=len(ok))
        measured = group.dropna(subset=[c for c in ("params",) if c in group.columns])
        for col in EFFICIENCY_COLUMNS:
            if col in group.columns:
                row[col] = measured[col].iloc[0] if len(measured) else np.nan
        for col in metrics:
            values = pd.to_numeric(ok[col], errors="coerce")
            row[f"{col}_mean"] = values.mean() if values.notna().any() else np.nan
            row[f"{col}_std"] = values.std(ddof=1) if values.notna().sum() > 1 else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if "dice_mean_mean" in table:
        table["rank"] = table["dice_mean_mean"].rank(ascending=False, method="min")
    else:
        table["rank"] = np.nan
    return _order(table, ["model", "rank", "n_runs", "n_ok"])


class ResultStore:
    """Collects rows of a sweep and rewrites every table in ``output_dir`` atomically on ``flush``."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.runs: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self.per_case: list[dict[str, Any]] = []
        self.stage_pam: list[dict[str, Any]] = []
        self.attention: list[dict[str, Any]] = []
        self.confusion: list[dict[str, Any]] = []

    @classmethod
    def resume(cls, output_dir: Path) -> "ResultStore":
        """Reload the tables of an earlier run of this sweep, keeping only jobs that finished ok
        and whose checkpoint still exists."""
        store = cls(output_dir)
        runs_path = output_dir / RUNS_CSV
        if not runs_path.is_file():
            return store
        runs = pd.read_csv(runs_path, dtype={"fold": "Int64"})
        done = runs[(runs["status"] == "ok") & runs["checkpoint"].map(lambda p: isinstance(p, str) and Path(p).is_file())]
        keys = {tuple(_key(r)) for r in done.to_dict("records")}
        store.runs = done.to_dict("records")
        for attr, name in (("epochs", EPOCHS_CSV), ("per_case", PER_CASE_CSV), ("attention", ATTENTION_CSV),
                           ("confusion", CONFUSION_CSV)):
            path = output_dir / name
            if path.is_file():
                frame = pd.read_csv(path, dtype={"fold": "Int64"})
                setattr(store, attr, [r for r in frame.to_dict("records") if tuple(_key(r)) in keys])
        stage_path = output_dir / STAGE_PAM_CSV
        if stage_path.is_file():
            store.stage_pam = pd.read_csv(stage_path).to_dict("records")
        return store

    def finished_jobs(self) -> set[tuple[str, int, int | None]]:
        """(model, seed, fold) of the jobs already recorded as ok."""
        return {tuple(_key(r)) for r in self.runs if r.get("status") == "ok"}  # type: ignore[misc]

    def has_stage_pam(self, model: str) -> bool:
        return any(r["model"] == model for r in self.stage_pam)

    def flush(self) -> None:
        """Rewrite every table from the rows collected so far."""
        if self.runs:
            runs = _order(pd.DataFrame(self.runs), RUN_LEADING, RUN_TRAILING)
            atomic_write_csv(self.output_dir / RUNS_CSV, runs)
            atomic_write_csv(self.output_dir / COMPARISON_CSV, build_comparison(runs))
        for rows, name, leading in ((self.epochs, EPOCHS_CSV, ["model", "seed", "fold", "epoch"]),
                                    (self.per_case, PER_CASE_CSV, ["model", "seed", "fold", "case_id"]),
                                    (self.stage_pam, STAGE_PAM_CSV, ["model", "stage"]),
                                    (self.attention, ATTENTION_CSV, ["model", "seed", "fold", "case_id"]),
                                    (self.confusion, CONFUSION_CSV, ["model", "seed", "fold", "reference"])):
            if rows:
                atomic_write_csv(self.output_dir / name, _order(pd.DataFrame(rows), leading))


def _key(row: dict[str, Any]) -> tuple[str, int, int | None]:
    fold = row.get("fold")
    fold = None if fold is None or (isinstance(fold, float) and np.isnan(fold)) or fold is pd.NA else int(fold)
    return (str(row["model"]), int(row["seed"]), fold)
