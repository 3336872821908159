"""The lung-nodule track end to end: the chapter's 2.5D U-Net, a 2D and a 3D segmentation model and RetinaNet on
the synthetic LUNA16 phantoms in one tiny sweep, scored by LUNA16's radius rule; the run's submission CSV gives
back its FROC through the challenge-style CSV evaluation; the chapter's recipe, loss, context and sampling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import evaluate_experiment
import integrated_experiment
from dataio.cache import synthetic_luna_root
from dataio.sampling import SliceDataset, volume_to_slices
from dataio.types import CachedCase, CropBox
from engine.model_setup import InputChoices, setup_model
from metrics.froc import FROC_KEYS
from utils.schema import JOBS_DIR, RUNS_CSV, SPLITS_JSON

MODELS = ("unet2d_luna", "mobile_unetr", "unet3d_xs", "retinanet")
N_CASES, SIZE = 10, ("32", "32", "24")


def luna_flags(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--dataset_version", "synthetic_luna", "--synthetic_cases", str(N_CASES), "--synthetic_size", *SIZE,
            "--cache_dir", str(cache), "--output_dir", str(out), "--tiny", "--epochs", "1", "--seeds", "1",
            "--samples_per_volume", "2", "--num_workers", "0", "--skip_efficiency", "--deterministic", *extra]


@pytest.fixture(scope="module")
def luna_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("luna")
    out = root / "sweep"
    assert integrated_experiment.main(luna_flags(out, root / "cache", "--models", *MODELS)) == 0
    return out, root / "cache"


def test_every_model_writes_the_nodule_and_lesion_columns(luna_sweep: tuple[Path, Path]) -> None:
    out, _ = luna_sweep
    runs = pd.read_csv(out / RUNS_CSV).set_index("model")
    assert runs["status"].tolist() == ["ok"] * len(MODELS)
    for model in MODELS:
        for column in ("ap_10", "map", "mar", *FROC_KEYS, "lesions", "lesions_found"):
            assert not math.isnan(runs.at[model, column]), (model, column)
    for model in ("unet2d_luna", "mobile_unetr", "unet3d_xs"):
        for column in ("dice_nodule", "recall_nodule", "hd95_nodule"):
            assert not math.isnan(runs.at[model, column]), (model, column)
    assert math.isnan(runs.at["retinanet", "dice_nodule"])  # boxes only
    config = json.loads((out / "config.json").read_text())
    assert config["lesion_hit"] == "radius" and config["hu_window"] == [-1000.0, 1000.0]
    boxes = pd.read_csv(out / "lesion_boxes.csv")
    assert set(boxes.loc[boxes["kind"] == "case", "hit_rule"]) == {"radius"}


def test_unet2d_luna_trains_with_the_chapters_recipe_and_the_others_with_theirs(luna_sweep: tuple[Path, Path]) -> None:
    out, _ = luna_sweep
    trainer = {m: json.loads((out / JOBS_DIR / f"{m}_seed_1" / "job.json").read_text())["trainer"] for m in MODELS}
    assert {k: trainer["unet2d_luna"][k] for k in ("optimizer", "lr", "weight_decay", "scheduler", "max_grad_norm",
                                                   "batch_size", "loss")} == dict(
        optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="none", max_grad_norm=None, batch_size=16,
        loss="luna_dice")
    assert trainer["unet3d_xs"]["loss"] == "nnunet" and trainer["unet3d_xs"]["batch_size"] == 1
    assert trainer["retinanet"]["optimizer"] == "sgd"


def test_the_runs_submission_csv_gives_back_its_froc(luna_sweep: tuple[Path, Path], tmp_path: Path) -> None:
    """predictions/<run>/luna_candidates.csv (LPS world mm), scored against the phantoms' annotations.csv and
    annotations_excluded.csv like the challenge's script, reproduces the run's own FROC values."""
    out, cache = luna_sweep
    phantoms = synthetic_luna_root(cache, N_CASES, tuple(int(s) for s in SIZE), 0)
    test_ids = json.loads((out / SPLITS_JSON).read_text())["test"]
    series = tmp_path / "seriesuids.csv"
    series.write_text("".join(f"{case}\n" for case in test_ids))  # the run's test scans only
    runs = pd.read_csv(out / RUNS_CSV).set_index("model")
    for model in MODELS:
        candidates = out / "predictions" / f"{model}_seed_1" / "luna_candidates.csv"
        assert list(pd.read_csv(candidates).columns) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
        result = tmp_path / f"{model}.json"
        assert evaluate_experiment.main(["boxes", "--luna_candidates", str(candidates), "--annotations",
                                         str(phantoms / "annotations.csv"), "--excluded",
                                         str(phantoms / "annotations_excluded.csv"), "--series", str(series),
                                         "--output_json", str(result)]) == 0
        scored = json.loads(result.read_text())
        for key in FROC_KEYS:
            assert scored[key] == pytest.approx(runs.at[model, key], abs=1e-6), (model, key)


def test_luna_dice_is_refused_on_multiclass_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["--synthetic_cases", "4", "--synthetic_size", "16", "16", "16", "--cache_dir", str(tmp_path / "c"),
            "--output_dir", str(tmp_path / "o"), "--models", "unet3d_xs", "--loss", "luna_dice", "--epochs", "1",
            "--tiny", "--skip_efficiency", "--num_workers", "0"]
    assert integrated_experiment.main(argv) == 2
    assert "--loss luna_dice fits binary data" in caplog.text


def test_context_slices_flag_overrides_every_2d_model_and_leaves_3d_alone() -> None:
    def channels(name: str, context: int | None) -> int:
        setup = setup_model(name, available_modalities=("ct",), n_classes=2, requested_patch=None,
                            data_extent=(32, 32, 24), inputs=InputChoices(context_slices=context))
        assert setup.sample_rules().context_slices == setup.context_slices
        return setup.model_kwargs["in_channels"]

    assert channels("unet2d_luna", None) == 7 and channels("unet2d_luna", 1) == 3
    assert channels("mobile_unetr", None) == 1 and channels("mobile_unetr", 2) == 5
    assert channels("unet3d_xs", 3) == 1


def test_seven_channel_context_repeats_the_edge_slices_at_both_ends() -> None:
    vol = torch.arange(4, dtype=torch.float32).reshape(1, 1, 1, 4).expand(1, 2, 2, 4).contiguous()  # slice z = z
    stacked = volume_to_slices(vol, 3)  # (W, 7, D, H)
    expected = [[min(max(w + t, 0), 3) for t in range(-3, 4)] for w in range(4)]
    assert stacked[:, :, 0, 0].tolist() == expected


def test_positive_slices_with_jittered_crops() -> None:
    """The chapter's sampling: every slice holds foreground (foreground_fraction 1) and the foreground voxel lies
    anywhere within +-jitter of the crop centre."""
    label = np.zeros((40, 40, 6), dtype=np.uint8)
    label[20, 20, 3] = 1
    case = CachedCase("c", "c", np.random.default_rng(0).random((1, 40, 40, 6), dtype=np.float32), label, (1., 1., 1.),
                      np.eye(4), (40, 40, 6), CropBox((0, 0, 0), (40, 40, 6)), "binary", channel_names=("ct",))
    ds = SliceDataset([case], ("ct",), (16, 16), samples_per_volume=40, foreground_fraction=1.0, augment=False,
                      seed=3, context_slices=3, centre_jitter=4)
    offsets = set()
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (7, 16, 16) and int(sample["label"].sum()) == 1
        (row, col), = np.argwhere(sample["label"].numpy() == 1)
        offsets.add((int(row) - 8, int(col) - 8))
    assert all(abs(r) <= 4 and abs(c) <= 4 for r, c in offsets) and len(offsets) > 10


def test_checkpoint_re_evaluation_reproduces_the_radius_rule_values(luna_sweep: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    out, _ = luna_sweep
    again_dir = tmp_path / "again"
    assert evaluate_experiment.main(["checkpoints", "--results_dir", str(out), "--output_dir", str(again_dir)]) == 0
    sweep = pd.read_csv(out / RUNS_CSV).set_index("model")
    again = pd.read_csv(again_dir / RUNS_CSV).set_index("model")
    for model in MODELS:
        for column in ("map", "froc_cpm", "froc_fp1", "lesions_found", "fp_components"):
            assert again.at[model, column] == pytest.approx(sweep.at[model, column], rel=1e-5), (model, column)


def test_subset_folds_make_the_release_subsets_the_folds(luna_sweep: tuple[Path, Path]) -> None:
    from engine.options.config import parse_config
    from engine.sweep_plan import prepare_data

    _, cache = luna_sweep
    config = parse_config(luna_flags(Path("unused"), cache, "--use_subset_folds"))
    assert config.use_5fold  # subset folds are cross-validation folds
    data = prepare_data(config, Path("unused"))
    subsets = config.load().subsets
    last = max(subsets.values())
    assert sorted(data.splits["test"]) == sorted(c for c, s in subsets.items() if s == last)
    for fold in data.splits["folds"]:
        assert len({subsets[c] for c in fold["val"]}) == 1  # one subset validates each fold
        assert last not in {subsets[c] for c in fold["train"]}
