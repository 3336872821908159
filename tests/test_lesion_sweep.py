"""The lesion track end to end: RetinaNet, DetSeg3D and a U-Net on the synthetic CT phantoms in one sweep,
with the same lesion columns for all three, re-evaluation from the checkpoints, and boxes written as files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import evaluate_experiment
import integrated_experiment
from metrics.detection import LESION_COLUMNS
from utils.checkpoint import load_checkpoint
from utils.schema import COMPARISON_CSV, JOBS_DIR, PER_CASE_CSV, RUNS_CSV, SPLITS_JSON, TABLES

MODELS = ("retinanet", "detseg3d", "unet3d_xs")


def ich_flags(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--dataset_version", "synthetic_ich", "--synthetic_cases", "8", "--synthetic_size", "32", "32", "16",
            "--cache_dir", str(cache), "--output_dir", str(out), "--tiny", "--epochs", "1", "--samples_per_volume",
            "2", "--num_workers", "0", "--skip_efficiency", "--deterministic", *extra]


@pytest.fixture(scope="module")
def ich_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ich")
    out = root / "sweep"
    assert integrated_experiment.main(ich_flags(out, root / "cache", "--models", *MODELS)) == 0
    return out


def test_every_model_of_the_track_writes_the_lesion_columns(ich_sweep: Path) -> None:
    runs = pd.read_csv(ich_sweep / RUNS_CSV).set_index("model")
    assert runs["status"].tolist() == ["ok"] * 3
    for model in MODELS:
        for column in (*LESION_COLUMNS, "lesions", "lesions_found", "lesions_missed", "fp_components"):
            value = runs.at[model, column]
            assert not math.isnan(value), f"{model}: {column} is NaN although the test scans hold lesions"
        assert runs.at[model, "lesions"] == runs.at[model, "lesions_found"] + runs.at[model, "lesions_missed"]
    assert not math.isnan(runs.at["detseg3d", "dice_ich"]) and not math.isnan(runs.at["unet3d_xs", "dice_ich"])
    assert math.isnan(runs.at["retinanet", "dice_ich"])  # boxes only: no mask, no Dice
    assert not math.isnan(runs.at["retinanet", "best_val_map"])  # detectors select their epoch by validation mAP
    per_case = pd.read_csv(ich_sweep / PER_CASE_CSV)
    assert {"lesions_found", "fp_components", "n_pred_boxes"} <= set(per_case.columns)
    comparison = pd.read_csv(ich_sweep / COMPARISON_CSV)
    assert {f"{c}_mean" for c in LESION_COLUMNS} <= set(comparison.columns)
    assert (ich_sweep / "lesion_metrics_chart.png").stat().st_size > 0
    page = (ich_sweep / "report.html").read_text(encoding="utf-8")
    for chart in ("lesion_metrics", "froc", "region_dice", "learning_curves"):  # the lesion track's report charts
        assert f'data-chart="{chart}"' in page, chart


def test_each_job_writes_its_test_boxes_and_they_reproduce_its_metrics(ich_sweep: Path) -> None:
    """The boxes table (the test evaluation's scans, one "case" row each) gives back every run's AP/FROC values,
    and the comparison statistics bootstrap those scans."""
    from engine.results.comparison_stats import extend_comparison
    from engine.results.reducer import build_comparison, collect_tables, metric_columns
    from engine.options.stats_options import StatsOptions
    from metrics.lesion_bootstrap import ScanSet, scans_from_rows

    test_ids = sorted(map(str, json.loads((ich_sweep / SPLITS_JSON).read_text())["test"]))
    runs = pd.read_csv(ich_sweep / RUNS_CSV).set_index("model")
    # the detectors' accumulators are lesion accumulators; unet3d_xs writes boxes once SegmentationAccumulator
    # passes on its lesion accumulator's tables
    with_boxes = [m for m in MODELS if m != "unet3d_xs" or (ich_sweep / JOBS_DIR / "unet3d_xs_seed_24" /
                                                             TABLES["boxes"][0]).is_file()]
    sweep_boxes = pd.read_csv(ich_sweep / TABLES["boxes"][1])
    assert set(sweep_boxes["model"]) == set(with_boxes) and {"retinanet", "detseg3d"} <= set(with_boxes)
    for model in with_boxes:
        frame = pd.read_csv(ich_sweep / JOBS_DIR / f"{model}_seed_24" / TABLES["boxes"][0])
        assert sorted(frame.loc[frame["kind"] == "case", "case_id"].astype(str)) == test_ids  # test scans only
        scans, settings = scans_from_rows(frame)
        again = ScanSet(scans, **settings).metrics_dict()
        for column in LESION_COLUMNS:
            assert again[column] == pytest.approx(runs.at[model, column], abs=1e-9, nan_ok=True), (model, column)
    tables = collect_tables(ich_sweep)
    options = StatsOptions(bootstrap_resamples=200)
    table = extend_comparison(build_comparison(tables["runs"]), tables["runs"], metric_columns(tables["runs"]),
                              options=options, boxes=tables["boxes"]).set_index("model")
    for model in with_boxes:  # one run each: no interval over runs, but one over the test scans
        low, high = table.at[model, "froc_cpm_ci_low"], table.at[model, "froc_cpm_ci_high"]
        assert (math.isnan(low) and len(test_ids) < 2) or low <= runs.at[model, "froc_cpm"] <= high


def test_checkpoints_record_the_phantoms_and_their_task(ich_sweep: Path) -> None:
    tasks = {"retinanet": "detection", "detseg3d": "detect_segment", "unet3d_xs": "binary_segmentation"}
    for model, task in tasks.items():
        meta = load_checkpoint(ich_sweep / f"{model}_seed_24_best.pth")["meta"]
        assert meta["task"] == task and meta["data"]["dataset_version"] == "synthetic_ich"
        assert meta["modalities"] == ["ct"] and meta["lesion_flags"]["lesion_hit"] == "iou"
    job = json.loads((ich_sweep / "jobs" / "retinanet_seed_24" / "job.json").read_text())
    assert job["trainer"]["optimizer"] == "sgd" and job["trainer"]["momentum"] == 0.9  # RetinaNet's own recipe


def test_each_job_records_result_columns_that_pick_the_metric_columns_the_prefixes_did(ich_sweep: Path) -> None:
    from engine.results.reducer import metric_columns

    for model in MODELS:
        folder = ich_sweep / JOBS_DIR / f"{model}_seed_24"
        recorded = json.loads((folder / "job.json").read_text())["result_columns"]
        run = pd.read_csv(folder / TABLES["runs"][0])
        assert metric_columns(run, recorded) == metric_columns(run) and "map" in recorded, model


def test_reevaluation_gives_the_sweeps_values_and_writes_boxes(ich_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert evaluate_experiment.main(["--results_dir", str(ich_sweep), "--output_dir", str(out),
                                     "--save_predictions"]) == 0
    sweep = pd.read_csv(ich_sweep / RUNS_CSV).set_index("model")
    again = pd.read_csv(out / RUNS_CSV).set_index("model")
    for model in MODELS:
        for column in ("map", "froc_cpm", "lesions_found", "fp_components"):
            assert again.at[model, column] == pytest.approx(sweep.at[model, column], rel=1e-5), (model, column)
    test_case = pd.read_csv(out / PER_CASE_CSV)["case_id"].iloc[0]
    for model in MODELS:
        boxes = json.loads((out / "predictions" / f"{model}_seed_24" / f"{test_case}_boxes.json").read_text())
        assert boxes["world_units"] == "mm" and "max exclusive" in boxes["box_convention"]
        table = pd.read_csv(out / "predictions" / f"{model}_seed_24" / f"{test_case}_boxes.csv")
        assert len(table) == len(boxes["boxes"]) and {"voxel_x1", "world_z2_mm", "score"} <= set(table.columns)
    assert (out / "predictions" / "detseg3d_seed_24" / f"{test_case}.nii.gz").is_file()
    comparison = pd.read_csv(out / COMPARISON_CSV)  # re-evaluation writes the sweep's comparison statistics too
    assert {"map_ci_low", "map_ci_high", "pareto_latency"} <= set(comparison.columns)
    tests = pd.read_csv(out / "statistical_tests.csv")
    assert set(tests["model_a"]) | set(tests["model_b"]) >= {"detseg3d", "unet3d_xs"}


def test_mri_models_are_refused_on_ct_before_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "never"
    code = integrated_experiment.main(ich_flags(out, tmp_path / "cache", "--models", "dualbranch_01_unet_xs"))
    assert code == 2 and not out.exists()
    assert "needs modalities ['t1ce', 'flair']" in caplog.text and "['ct']" in caplog.text


def test_detectors_are_refused_on_brats(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "never"
    code = integrated_experiment.main(["--models", "retinanet", "--synthetic_cases", "4", "--synthetic_size", "32",
                                       "32", "32", "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(out)])
    assert code == 2 and "no task for that pair" in caplog.text


def test_tta_is_refused_for_box_models(ich_sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = evaluate_experiment.main(["--results_dir", str(ich_sweep), "--output_dir", str(tmp_path / "e"), "--tta",
                                     "--models", "retinanet"])
    assert code == 2 and "--tta" in caplog.text and "detection" in caplog.text


def test_a_checkpoint_alone_is_evaluated_on_the_ct_phantoms_it_was_trained_on(ich_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    assert evaluate_experiment.main(["--checkpoint", str(ich_sweep / "detseg3d_seed_24_best.pth"), "--split", "test",
                                     "--splits_file", str(ich_sweep / "splits.json"), "--output_dir", str(out)]) == 0
    sweep = pd.read_csv(ich_sweep / RUNS_CSV).set_index("model")
    again = pd.read_csv(out / RUNS_CSV).set_index("model")
    for column in ("dice_ich", "map", "froc_cpm"):
        assert again.at["detseg3d", column] == pytest.approx(sweep.at["detseg3d", column], rel=1e-5), column
