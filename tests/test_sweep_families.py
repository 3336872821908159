"""One model of each architecture family runs through the CLI sweep (tiny configurations); the
attention model writes its per-modality weights; unusable models fail before any training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import integrated_experiment
from engine.model_setup import InputChoices, setup_model
from models import model_info
from utils.schema import ATTENTION_CSV, RUNS_CSV, STAGE_PAM_CSV

FAMILY_REPRESENTATIVES = [
    "unet3d_stride_xs", "unetr", "dualbranch_03_unet_xs", "dualbranch_04_unet_xs", "dualbranch_07_unet_xs",
    "dualbranch_13_unet_xs", "dualbranch_14_ghostnet_xs", "dualbranch_14_shufflenetv2_xs",
    "dualbranch_14_convnext_xs", "dualbranch_mobilenetv2_dilated_fixed_xs", "unet3d_2modal_s",
    "quadbranch_4modal_attention_unet_s", "mobile_unetr",
]


@pytest.fixture(scope="module")
def family_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("families")
    code = integrated_experiment.main([
        "--synthetic_cases", "6", "--synthetic_size", "32", "32", "32",
        "--cache_dir", str(tmp_path_factory.mktemp("cache")), "--output_dir", str(out), "--epochs", "1",
        "--samples_per_volume", "1", "--num_workers", "0", "--tiny", "--pam_runs", "1", "--latency_runs", "1",
        "--seeds", "7", "--models", *FAMILY_REPRESENTATIVES])
    assert code == 0
    return out


def test_every_family_produces_an_ok_row(family_sweep: Path) -> None:
    runs = pd.read_csv(family_sweep / RUNS_CSV).set_index("model")
    assert list(runs.index) == FAMILY_REPRESENTATIVES
    failed = runs[runs["status"] != "ok"]
    assert failed.empty, failed["error"].to_dict()
    assert runs["params"].notna().all() and runs["dice_wt"].notna().all()


def test_stage_names_are_meaningful_per_family(family_sweep: Path) -> None:
    stages = pd.read_csv(family_sweep / STAGE_PAM_CSV)
    dual = set(stages.loc[stages["model"] == "dualbranch_04_unet_xs", "stage"])
    assert {"stem_t1ce", "stem_flair", "flair_stage2", "t1ce_stage2", "dec1"} <= dual
    quad = " ".join(stages.loc[stages["model"] == "quadbranch_4modal_attention_unet_s", "stage"])
    assert all(m in quad for m in ("t1", "t1ce", "t2", "flair"))


def test_attention_model_writes_weights_per_test_case(family_sweep: Path) -> None:
    attention = pd.read_csv(family_sweep / ATTENTION_CSV)
    assert set(attention["model"]) == {"quadbranch_4modal_attention_unet_s"}
    assert set(attention["modality"]) == {"t1", "t1ce", "t2", "flair"}
    assert set(attention["stage"]) == {"stage2", "stage3"}
    assert attention["weight"].between(0, 1).all()
    per_case = pd.read_csv(family_sweep / "per_case_results.csv")
    tested = set(per_case.loc[per_case["model"] == "quadbranch_4modal_attention_unet_s", "case_id"])
    assert set(attention["case_id"]) == tested
    assert (family_sweep / "modality_contribution.png").stat().st_size > 0


def test_missing_modality_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match=r"needs modalities \['t1ce', 'flair'\].*lacks \['t1ce', 'flair'\]"):
        setup_model("dualbranch_01_unet_xs", available_modalities=("ct",), n_classes=2, requested_patch=None,
                    data_extent=(64, 64, 64))


def test_patch_size_is_rounded_up_to_each_model_divisibility() -> None:
    swin = setup_model("swin_unetr", available_modalities=("t1", "t1ce", "t2", "flair"), n_classes=4,
                       requested_patch=(40, 48, 33), data_extent=(64, 64, 64))
    assert swin.patch_size == (64, 64, 64)
    unetr = setup_model("unetr", available_modalities=("t1", "t1ce", "t2", "flair"), n_classes=4,
                        requested_patch=None, data_extent=(50, 60, 70))
    assert unetr.patch_size == (64, 64, 80) and unetr.model_kwargs["img_size"] == (64, 64, 80)


def test_a_tiny_build_rounds_the_patch_to_its_own_divisibility() -> None:
    """mobile_unetr_3d downsamples by 64, its tiny build by 4: with --tiny a 32 x 32 x 16 CT patch stays as asked
    (it was rounded up to 64^3, a window the scan fills by 3%), and the tiny build runs on it."""
    info = model_info("mobile_unetr_3d")
    kwargs = dict(available_modalities=("ct",), n_classes=2, requested_patch=(32, 32, 16), data_extent=(32, 32, 16))
    assert setup_model("mobile_unetr_3d", **kwargs).patch_size == (64, 64, 64)
    tiny = setup_model("mobile_unetr_3d", **kwargs, overrides=dict(info.tiny_kwargs), inputs=InputChoices(tiny=True))
    assert tiny.patch_size == (32, 32, 16)
    model = tiny.build()
    assert model.stride == info.tiny_divisibility == 4
    with torch.no_grad():
        assert model(torch.zeros(1, 1, *tiny.patch_size)).shape == (1, 2, 32, 32, 16)
    assert model_info("unet3d_xs").divisibility_for(True) == model_info("unet3d_xs").divisibility
