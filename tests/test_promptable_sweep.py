"""Promptable models in a sweep: SAM-Med3D fine-tuned from a checkpoint in its own format with its encoder frozen,
VISTA3D and an automatic U-Net on the CT phantoms; prompt-free rows comparable with the U-Net, per-click rows kept
apart; zero-shot evaluation of a checkpoint; re-evaluation reproduces both kinds of values."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import evaluate_experiment
import integrated_experiment
from models import create_model, model_info
from utils.checkpoint import load_checkpoint
from utils.schema import PER_CASE_CSV, RUNS_CSV

MODELS = ("sam_med3d", "vista3d", "unet3d_xs")
CLICK_COLUMNS = ("dice_ich_click1", "dice_ich_click3", "hd95_ich_click1", "hd95_ich_click3")


def sam_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A tiny SAM-Med3D written as its training script saves it (``module.`` keys beside an argparse.Namespace and
    NumPy scalars); returns the weights as written."""
    torch.manual_seed(7)
    model = create_model("sam_med3d", **model_info("sam_med3d").tiny_kwargs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"epoch": np.int64(3), "best_loss": np.float64(0.25), "args": argparse.Namespace(lr=1e-4),
                "model_state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer_state_dict": {}}, path)
    return state


def flags(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--dataset_version", "synthetic_ich", "--synthetic_cases", "6", "--synthetic_size", "32", "32", "16",
            "--cache_dir", str(cache), "--output_dir", str(out), "--tiny", "--seeds", "1", "--samples_per_volume",
            "1", "--num_workers", "0", "--skip_efficiency", "--deterministic", "--clicks", "1", "3", *extra]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor], Path]:
    root = tmp_path_factory.mktemp("promptable")
    weights = root / "sam_med3d_turbo.pth"
    state = sam_checkpoint(weights)
    out = root / "sweep"
    assert integrated_experiment.main(flags(out, root / "cache", "--models", *MODELS, "--epochs", "1",
                                            "--use_pretrained", "--pretrained_checkpoint", f"sam_med3d={weights}",
                                            "--freeze_encoder", "sam_med3d")) == 0
    return out, root / "cache", state, weights


def test_rows_for_all_three_with_prompt_free_and_per_click_columns(sweep) -> None:
    out, *_ = sweep
    runs = pd.read_csv(out / RUNS_CSV).set_index("model")
    assert runs["status"].tolist() == ["ok"] * 3
    for model in MODELS:
        assert not math.isnan(runs.at[model, "dice_ich"]) and not math.isnan(runs.at[model, "ap_10"]), model
    for model in ("sam_med3d", "vista3d"):
        assert all(not math.isnan(runs.at[model, c]) for c in CLICK_COLUMNS), model
        assert (runs.at[model, "prompt_mode"], runs.at[model, "click_mode"]) == ("none", "random")
    assert all(math.isnan(runs.at["unet3d_xs", c]) for c in CLICK_COLUMNS)
    assert (runs.at["unet3d_xs", "prompt_mode"], runs.at["unet3d_xs", "click_mode"]) == ("none", "none")
    per_case = pd.read_csv(out / PER_CASE_CSV)
    assert set(CLICK_COLUMNS) <= set(per_case.columns) and set(per_case["click_mode"]) == {"random", "none"}
    assert (out / "dice_vs_clicks.png").stat().st_size > 0
    assert 'data-chart="dice_vs_clicks"' in (out / "report.html").read_text(encoding="utf-8")


def test_per_click_columns_stay_out_of_tests_and_rankings(sweep) -> None:
    out, *_ = sweep
    tests = pd.read_csv(out / "statistical_tests.csv")
    assert not tests["metric"].astype(str).str.contains("_click").any()
    assert "dice_ich" in set(tests["metric"])
    ranking = pd.read_csv(out / "ranking.csv")
    assert not any("_click" in c for c in ranking.columns)


def test_frozen_encoder_keeps_the_loaded_weights_and_is_exported(sweep) -> None:
    out, _, state, _ = sweep
    best = load_checkpoint(out / "sam_med3d_seed_1_best.pth")["state_dict"]
    encoder = [k for k in state if k.startswith("image_encoder.")]
    assert encoder and all(torch.equal(best[k], state[k]) for k in encoder)  # loaded, then never updated
    assert any(not torch.equal(best[k], state[k]) for k in state if k.startswith("mask_decoder."))  # trained
    exported = torch.load(out / "sam_med3d_seed_1_best_sam_encoder.pth", weights_only=True)
    assert set(exported["image_encoder_state_dict"]) == {k[len("image_encoder."):] for k in encoder}


def test_re_evaluation_reproduces_prompt_free_and_per_click_values(sweep, tmp_path: Path) -> None:
    out, *_ = sweep
    again_dir = tmp_path / "again"
    assert evaluate_experiment.main(["checkpoints", "--results_dir", str(out), "--output_dir", str(again_dir),
                                     "--models", "sam_med3d", "vista3d"]) == 0
    before = pd.read_csv(out / RUNS_CSV).set_index("model")
    again = pd.read_csv(again_dir / RUNS_CSV).set_index("model")
    for model in ("sam_med3d", "vista3d"):
        for column in ("dice_ich", *CLICK_COLUMNS):
            assert again.at[model, column] == pytest.approx(before.at[model, column], rel=1e-5, nan_ok=True), \
                (model, column)


def test_zero_shot_evaluates_the_checkpoint_as_loaded(sweep, tmp_path: Path) -> None:
    _, cache, state, weights = sweep
    out = tmp_path / "zero"
    assert integrated_experiment.main(flags(out, cache, "--models", "sam_med3d", "--epochs", "0", "--use_pretrained",
                                            "--pretrained_checkpoint", f"sam_med3d={weights}")) == 0
    run = pd.read_csv(out / RUNS_CSV).iloc[0]
    assert run["status"] == "ok" and run["epochs"] == 0 and not math.isnan(run["dice_ich_click1"])
    best = load_checkpoint(out / "sam_med3d_seed_1_best.pth")["state_dict"]
    assert all(torch.equal(best[k], v) for k, v in state.items())
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 0 and config["pretrained_checkpoint"] == [f"sam_med3d={weights}"]


def test_zero_shot_without_a_checkpoint_names_the_models(sweep, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    *_, weights = sweep
    with pytest.raises(SystemExit) as exit_info:
        integrated_experiment.main(flags(tmp_path / "o", tmp_path / "c", "--models", "sam_med3d", "unet3d_xs",
                                         "--epochs", "0", "--use_pretrained", "--pretrained_checkpoint",
                                         f"sam_med3d={weights}"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--epochs" in err and "unet3d_xs" in err and "sam_med3d" not in err.split("unet3d_xs")[-1]


def test_sam_med3d_reads_its_own_cached_arrays_and_the_others_share_one_entry(sweep) -> None:
    """SAM-Med3D's declared preprocessing (1.5 mm, z-normalised foreground) has its own cache key; VISTA3D and the
    U-Net (no declaration) share the dataset's one entry; the runs' rows are scored on the same test cases."""
    out, cache, *_ = sweep
    keys = [json.loads((d / "key.json").read_text()) for d in cache.iterdir() if (d / "key.json").is_file()]
    own = [k for k in keys if "model" in k["params"]]
    assert len(keys) == 2 and len(own) == 1
    assert own[0]["params"]["model"] == model_info("sam_med3d").preprocessing.params()
    own_dir = next(d for d in cache.iterdir() if (d / "key.json").is_file()
                   and "model" in json.loads((d / "key.json").read_text())["params"])
    metas = [json.loads(p.read_text()) for p in own_dir.glob("*/meta.json")]
    assert metas and all(m["spacing"] == [1.5, 1.5, 1.5] for m in metas)
    per_case = pd.read_csv(out / PER_CASE_CSV)
    cases = {m: set(per_case.loc[per_case["model"] == m, "case_id"]) for m in MODELS}
    assert cases["sam_med3d"] == cases["unet3d_xs"] == cases["vista3d"]
