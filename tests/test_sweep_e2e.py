"""End-to-end: tiny sweeps through the CLI on synthetic phantoms; files, columns, failures, folds, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import integrated_experiment
from utils.schema import (COMPARISON_CSV, CONFUSION_CSV, EPOCHS_CSV, PER_CASE_CSV, RUNS_CSV,
                            STAGE_PAM_CSV)
from utils.checkpoint import load_checkpoint

TINY = json.dumps({"unet3d_xs": {"base": 2}, "unet3d_stride_xs": {"base": 2}})
CHARTS = ("learning_curves.png", "model_comparison_chart.png", "parameter_efficiency.png",
          "interactive_3d_analysis.html")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _run(out: Path, cache: Path, *extra: str) -> int:
    return integrated_experiment.main([
        "--synthetic_cases", "7", "--synthetic_size", "32", "32", "32", "--cache_dir", str(cache),
        "--output_dir", str(out), "--epochs", "1", "--samples_per_volume", "1", "--num_workers", "0",
        "--model_kwargs", TINY, "--pam_runs", "1", "--latency_runs", "1", *extra])


@pytest.fixture(scope="module")
def holdout_sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("holdout")
    assert _run(out, cache_dir, "--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "1", "2") == 0
    return out


def test_sweep_writes_every_file_with_its_columns(holdout_sweep: Path) -> None:
    runs = pd.read_csv(holdout_sweep / RUNS_CSV)
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    required = {"model", "seed", "fold", "status", "error", "epochs", "best_epoch", "dice_wt", "dice_tc", "dice_et",
                "dice_mean", "hd95_wt", "hd95_tc", "hd95_et", "precision_wt", "recall_wt", "params", "flops_torch",
                "flops_thop", "flops_input", "pam_train_mb", "pam_train_mb_std", "pam_infer_mb", "pam_infer_mb_std",
                "latency_ms", "latency_ms_std", "latency_ms_median", "train_time_s", "checkpoint"}
    assert required <= set(runs.columns)
    assert runs["fold"].isna().all()
    epochs = pd.read_csv(holdout_sweep / EPOCHS_CSV)
    assert {"train_loss", "val_loss", "val_dice_wt", "val_dice_mean", "lr", "epoch_time_s"} <= set(epochs.columns)
    assert len(epochs) == 4
    per_case = pd.read_csv(holdout_sweep / PER_CASE_CSV)
    splits = json.loads((holdout_sweep / "splits.json").read_text())
    assert set(per_case["case_id"]) == set(splits["test"])
    assert len(per_case) == 4 * len(splits["test"])
    comparison = pd.read_csv(holdout_sweep / COMPARISON_CSV)
    assert list(comparison["model"]) == ["unet3d_xs", "unet3d_stride_xs"]
    assert {"n_runs", "rank", "dice_wt_mean", "dice_wt_std", "params", "latency_ms"} <= set(comparison.columns)
    assert (comparison["n_runs"] == 2).all()
    confusion = pd.read_csv(holdout_sweep / CONFUSION_CSV)
    assert len(confusion) == 4 * 16  # 4 runs x 4 reference x 4 predicted labels
    test_voxels = confusion.groupby(["model", "seed"])["voxels"].sum()
    assert test_voxels.nunique() == 1 and test_voxels.iloc[0] > 0  # every run counts the same test voxels
    stages = pd.read_csv(holdout_sweep / STAGE_PAM_CSV)
    assert {"enc1", "bottleneck", "dec1"} <= set(stages["stage"])
    for name in CHARTS + ("config.json", "environment.json", "splits.json"):
        assert (holdout_sweep / name).stat().st_size > 0, name


def test_comparison_means_equal_run_means(holdout_sweep: Path) -> None:
    runs = pd.read_csv(holdout_sweep / RUNS_CSV)
    comparison = pd.read_csv(holdout_sweep / COMPARISON_CSV).set_index("model")
    for model, group in runs.groupby("model"):
        assert comparison.loc[model, "dice_wt_mean"] == pytest.approx(group["dice_wt"].mean(), nan_ok=True)
        assert comparison.loc[model, "params"] == group["params"].iloc[0]


def test_checkpoint_rebuilds_the_model(holdout_sweep: Path) -> None:
    from models import create_model

    runs = pd.read_csv(holdout_sweep / RUNS_CSV)
    payload = load_checkpoint(runs["checkpoint"].iloc[0])
    model = create_model(payload["model_name"], **payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    assert payload["meta"]["epoch"] == runs["best_epoch"].iloc[0]
    assert list(payload["meta"]["modalities"]) == ["t1", "t1ce", "t2", "flair"]
    assert sum(p.numel() for p in model.parameters()) == runs["params"].iloc[0]


def test_resume_skips_finished_jobs(holdout_sweep: Path, cache_dir: Path) -> None:
    runs = pd.read_csv(holdout_sweep / RUNS_CSV)
    mtimes = {p: Path(p).stat().st_mtime_ns for p in runs["checkpoint"]}
    assert _run(holdout_sweep, cache_dir, "--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "1", "2",
                "--resume") == 0
    assert {p: Path(p).stat().st_mtime_ns for p in runs["checkpoint"]} == mtimes
    assert len(pd.read_csv(holdout_sweep / RUNS_CSV)) == 4


def test_failing_model_becomes_a_row_and_the_sweep_goes_on(tmp_path: Path, cache_dir: Path) -> None:
    bad = json.dumps({"unet3d_xs": {"base": 2, "norm": "no_such_norm"}, "unet3d_stride_xs": {"base": 2}})
    code = integrated_experiment.main([
        "--synthetic_cases", "7", "--synthetic_size", "32", "32", "32", "--cache_dir", str(cache_dir),
        "--output_dir", str(tmp_path), "--epochs", "1", "--samples_per_volume", "1", "--num_workers", "0",
        "--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "3", "--model_kwargs", bad, "--skip_efficiency"])
    assert code == 0
    runs = pd.read_csv(tmp_path / RUNS_CSV).set_index("model")
    assert runs.loc["unet3d_xs", "status"] == "failed"
    assert "no_such_norm" in runs.loc["unet3d_xs", "error"]
    assert runs.loc["unet3d_stride_xs", "status"] == "ok"
    assert not (tmp_path / "unet3d_xs_seed_3_best.pth").exists()


def test_five_fold_writes_one_row_per_model_seed_fold(tmp_path: Path, cache_dir: Path) -> None:
    assert _run(tmp_path, cache_dir, "--models", "unet3d_xs", "--seeds", "5", "--use_5fold", "--skip_efficiency",
                "--max_samples", "7") == 0
    runs = pd.read_csv(tmp_path / RUNS_CSV)
    assert sorted(runs["fold"].astype(int)) == [0, 1, 2, 3, 4]
    assert all((tmp_path / f"unet3d_xs_seed_5_fold_{k}_best.pth").is_file() for k in range(5))
    splits = json.loads((tmp_path / "splits.json").read_text())
    for fold in splits["folds"]:
        assert not set(fold["train"]) & (set(fold["val"]) | set(splits["test"]))


def test_bad_flags_and_bad_models_give_clear_errors(tmp_path: Path, cache_dir: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        integrated_experiment.main(["--epochs", "0"])
    assert "--epochs must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        integrated_experiment.main(["--dataset_version", "brats2021"])
    assert "--data_path is required" in capsys.readouterr().err
    code = _run(tmp_path, cache_dir, "--models", "unet3d_xss")
    assert code == 2


def test_dim_contradicting_the_model_fails_before_training(tmp_path: Path, cache_dir: Path) -> None:
    code = _run(tmp_path, cache_dir, "--models", "unet3d_xs", "--dim", "2d")
    assert code == 2
    assert not list(tmp_path.glob("*.pth"))
    assert torch.get_num_threads() >= 1


def test_pretrained_weights_come_from_a_local_checkpoint(holdout_sweep: Path, tmp_path: Path) -> None:
    from experiment_runner import _load_pretrained
    from models import create_model

    checkpoint = pd.read_csv(holdout_sweep / RUNS_CSV)["checkpoint"].iloc[0]
    payload = load_checkpoint(checkpoint)
    torch.manual_seed(123)
    model = create_model(payload["model_name"], **payload["model_kwargs"])
    _load_pretrained(model, checkpoint)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, payload["state_dict"][name]), name
    plain = tmp_path / "plain_state_dict.pth"
    torch.save(payload["state_dict"], plain)  # a bare state dict (not a volbench checkpoint) works too
    torch.manual_seed(321)
    other = create_model(payload["model_name"], **payload["model_kwargs"])
    _load_pretrained(other, str(plain))
    assert all(torch.equal(other.state_dict()[k], v) for k, v in payload["state_dict"].items())


def test_pretrained_flags_must_come_together(capsys) -> None:
    with pytest.raises(SystemExit):
        integrated_experiment.main(["--use_pretrained"])
    assert "needs --pretrained_checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        integrated_experiment.main(["--pretrained_checkpoint", "missing.pth"])
    assert "missing.pth" in capsys.readouterr().err


def test_resume_refuses_a_split_of_another_mode(holdout_sweep: Path, cache_dir: Path) -> None:
    config_before = (holdout_sweep / "config.json").read_text()
    code = _run(holdout_sweep, cache_dir, "--models", "unet3d_xs", "--seeds", "1", "--use_5fold", "--resume")
    assert code == 2
    assert len(pd.read_csv(holdout_sweep / RUNS_CSV)) == 4  # nothing of the sweep was touched
    assert (holdout_sweep / "config.json").read_text() == config_before
