"""A promptable model on the BraTS phantoms: one prompt-free mask per region (WT, TC, ET), trained with simulated
clicks (``--train_prompts clicks``), evaluated prompt-free in the ordinary BraTS columns and interactively per
target region; checkpoint re-evaluation reproduces both."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

import evaluate_experiment
import integrated_experiment
from utils.schema import PER_CASE_CSV, RUNS_CSV

REGIONS = ("wt", "tc", "et")
CLICK_COLUMNS = tuple(f"{m}_{r}_click{k}" for r in REGIONS for k in (1, 2) for m in ("dice", "hd95"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("promptable_brats")
    out = root / "sweep"
    assert integrated_experiment.main([
        "--dataset_version", "synthetic", "--synthetic_cases", "6", "--synthetic_size", "32", "32", "32",
        "--cache_dir", str(root / "cache"), "--output_dir", str(out), "--tiny", "--seeds", "1",
        "--samples_per_volume", "1", "--num_workers", "0", "--skip_efficiency", "--deterministic", "--epochs", "1",
        "--models", "sam_med3d", "--clicks", "1", "2", "--train_prompts", "clicks", "--train_clicks", "2"]) == 0
    return out


def test_brats_rows_have_region_columns_and_per_click_columns_per_region(sweep: Path) -> None:
    run = pd.read_csv(sweep / RUNS_CSV).iloc[0]
    assert run["status"] == "ok", run.get("error")
    for column in ("dice_wt", "dice_tc", "dice_et", "dice_mean", "hd95_wt", "lesion_dice_wt", *CLICK_COLUMNS):
        assert not math.isnan(run[column]), column
    assert (run["prompt_mode"], run["click_mode"]) == ("clicks", "random")
    per_case = pd.read_csv(sweep / PER_CASE_CSV)
    assert set(CLICK_COLUMNS) <= set(per_case.columns)
    epochs = pd.read_csv(sweep / "all_epochs_results.csv").iloc[0]
    assert epochs["train_loss_clicks"] > 0 and epochs["train_loss_prompt_free"] > 0
    assert (sweep / "dice_vs_clicks.png").stat().st_size > 0


def test_re_evaluation_reproduces_the_brats_values(sweep: Path, tmp_path: Path) -> None:
    again_dir = tmp_path / "again"
    assert evaluate_experiment.main(["checkpoints", "--results_dir", str(sweep), "--output_dir", str(again_dir)]) == 0
    before, again = pd.read_csv(sweep / RUNS_CSV).iloc[0], pd.read_csv(again_dir / RUNS_CSV).iloc[0]
    assert again["prompt_mode"] == "clicks"
    for column in ("dice_wt", "dice_tc", "dice_et", *CLICK_COLUMNS):
        assert again[column] == pytest.approx(before[column], rel=1e-5, nan_ok=True), column
