"""Engine seams: a toy task through a sweep, binary segmentation on one-channel data, per-job folders,
the reducer, refusal to overwrite results, and the task-free runner and trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import integrated_experiment
from engine import tasks as task_registry
from engine.evaluate.checkpoints import RunSpec, evaluate_run
from engine.options.config import parse_config
from engine.results.job_results import JobFolder
from engine.results.reducer import IncrementalReducer, reduce_results
from engine.tasks import SegmentationTask
from engine.trainer import TrainerHooks
from experiment_runner import run_integrated_experiment
from metrics.regions import BRATS_SPEC
from sweep_helpers import flair_wt_dataset, tiny_flags
from utils.schema import COMPARISON_CSV, EPOCHS_CSV, JOBS_DIR, PER_CASE_CSV, RUNS_CSV, TABLES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


class TwoLossTask(SegmentationTask):
    """Test-only task: the nnU-Net loss split into its Dice and cross-entropy parts."""

    def train_step(self, model, batch, device):  # type: ignore[no-untyped-def]
        from monai.losses import DiceLoss

        logits = model(batch["image"].to(device)).float()
        label = batch["label"].to(device)
        return {"dice": 0.7 * DiceLoss(to_onehot_y=True, softmax=True)(logits, label[:, None]),
                "ce": 0.3 * torch.nn.functional.cross_entropy(logits, label)}


def test_a_toy_task_runs_through_a_sweep_without_engine_edits(tmp_path: Path, cache_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    brats = task_registry.TASK_ENTRIES["brats_segmentation"]
    monkeypatch.setitem(task_registry.TASK_ENTRIES, "brats_segmentation", dataclasses.replace(
        brats, build=lambda dataset, loss, lesions: TwoLossTask(BRATS_SPEC, loss=loss, name="two_loss")))
    out = tmp_path / "out"
    assert integrated_experiment.main(tiny_flags(out, cache_dir, "--models", "unet3d_xs", "--epochs", "2")) == 0
    epochs = pd.read_csv(out / EPOCHS_CSV)
    assert {"train_loss_dice", "train_loss_ce"} <= set(epochs.columns)
    assert epochs["train_loss"].to_numpy() == pytest.approx((epochs["train_loss_dice"] + epochs["train_loss_ce"]).to_numpy())
    assert pd.read_csv(out / RUNS_CSV)["status"].tolist() == ["ok"]


def test_binary_segmentation_on_one_channel_data_writes_binary_columns(tmp_path: Path, cache_dir: Path) -> None:
    dataset = flair_wt_dataset(cache_dir)
    out = tmp_path / "binary"
    config = parse_config(tiny_flags(out, cache_dir, "--models", "unet3d_xs", "--epochs", "1"))
    run_integrated_experiment(config, dataset=dataset)
    runs = pd.read_csv(out / RUNS_CSV)
    assert runs["status"].tolist() == ["ok"], runs.get("error")
    assert {"dice_lesion", "hd95_lesion", "precision_lesion", "recall_lesion", "dice_mean"} <= set(runs.columns)
    assert not [c for c in runs.columns if c.endswith(("_wt", "_tc", "_et"))]
    confusion = pd.read_csv(out / TABLES["confusion"][1])
    assert set(confusion["reference"]) == {0, 1}  # 2 x 2 labels
    checkpoint = Path(runs["checkpoint"].iloc[0])
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["model_kwargs"]["in_channels"] == 1 and payload["model_kwargs"]["out_channels"] == 2
    assert payload["meta"]["task"] == "binary_segmentation" and payload["meta"]["data"] is None
    splits = json.loads((out / "splits.json").read_text())
    test_cases = [c for c in dataset.cases if c.case_id in splits["test"]]
    again = evaluate_run(RunSpec(checkpoint=checkpoint, model="unet3d_xs", seed=24, fold=None), test_cases,
                         device=torch.device("cpu"))
    sweep_cases = pd.read_csv(out / PER_CASE_CSV)
    assert set(pd.DataFrame(again.per_case).columns) == set(sweep_cases.columns)
    assert again.row["dice_lesion"] == pytest.approx(runs["dice_lesion"].iloc[0], nan_ok=True)


def test_a_model_needing_mri_modalities_fails_before_training_on_one_channel_data(tmp_path: Path,
                                                                                  cache_dir: Path) -> None:
    config = parse_config(tiny_flags(tmp_path / "x", cache_dir, "--models", "dualbranch_01_unet_xs"))
    with pytest.raises(ValueError, match=r"needs modalities \['t1ce', 'flair'\]"):
        run_integrated_experiment(config, dataset=flair_wt_dataset(cache_dir))
    assert not (tmp_path / "x" / JOBS_DIR).exists()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "out"
    flags = tiny_flags(out, cache_dir, "--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "1", "2",
                       "--epochs", "1")
    assert integrated_experiment.main(flags) == 0
    return out


def test_every_job_has_its_own_folder_and_no_latest_state_after_it_ends(sweep: Path) -> None:
    folders = sorted(p.name for p in (sweep / JOBS_DIR).iterdir())
    assert folders == ["unet3d_stride_xs_seed_1", "unet3d_stride_xs_seed_2", "unet3d_xs_seed_1", "unet3d_xs_seed_2"]
    for name in folders:
        folder = JobFolder(sweep / JOBS_DIR / name)
        assert folder.run_row()["status"] == "ok"
        assert folder.read_table("epochs") is not None and folder.read_table("per_case") is not None
        assert not folder.latest_checkpoint.exists()  # deleted without --keep_latest


def test_aggregate_rebuilds_the_same_tables_from_the_job_folders(sweep: Path, tmp_path: Path) -> None:
    before = {t: pd.read_csv(sweep / TABLES[t][1]) for t in ("runs", "epochs", "per_case", "confusion")}
    comparison = pd.read_csv(sweep / COMPARISON_CSV)
    for table in before:
        (sweep / TABLES[table][1]).unlink()
    assert integrated_experiment_evaluate(["--results_dir", str(sweep), "--aggregate"]) == 0
    for table, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(sweep / TABLES[table][1]), frame, obj=table)
    pd.testing.assert_frame_equal(pd.read_csv(sweep / COMPARISON_CSV), comparison)


def integrated_experiment_evaluate(argv: list[str]) -> int:
    import evaluate_experiment

    return evaluate_experiment.main(argv)


def test_aggregate_leaves_a_folder_without_jobs_as_it_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / RUNS_CSV).write_text("model,seed,fold,status\nm,1,,ok\n")
    assert integrated_experiment_evaluate(["--results_dir", str(tmp_path), "--aggregate"]) == 0
    assert "left as they are" in caplog.text
    assert (tmp_path / RUNS_CSV).read_text() == "model,seed,fold,status\nm,1,,ok\n"


def test_a_folder_with_results_is_refused_without_resume(sweep: Path, cache_dir: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    runs_before = (sweep / RUNS_CSV).read_text()
    flags = tiny_flags(sweep, cache_dir, "--models", "unet3d_xs", "--seeds", "1", "--epochs", "1")
    assert integrated_experiment.main(flags) == 2
    assert "--resume" in caplog.text
    assert (sweep / RUNS_CSV).read_text() == runs_before


def test_incremental_update_reads_only_the_new_job_and_its_model(tmp_path: Path, sweep: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    def reads_for(n_other_jobs: int) -> int:
        out = tmp_path / f"n{n_other_jobs}"
        template = sweep / JOBS_DIR / "unet3d_stride_xs_seed_1"
        for i in range(n_other_jobs):  # finished jobs of another model already in the tables
            target = out / JOBS_DIR / f"other_seed_{i}"
            shutil.copytree(template, target)
            for table in TABLES:
                frame = JobFolder(target).read_table(table)
                if frame is not None:
                    frame["model"] = "other"
                    frame["seed"] = i
                    JobFolder(target).write_table(table, frame.to_dict("records"))
        reduce_results(out) if n_other_jobs else (out / JOBS_DIR).mkdir(parents=True)
        new = out / JOBS_DIR / "unet3d_xs_seed_1"
        shutil.copytree(sweep / JOBS_DIR / "unet3d_xs_seed_1", new)
        calls = []
        original = JobFolder.read_table
        monkeypatch.setattr(JobFolder, "read_table", lambda self, t: calls.append(self.path) or original(self, t))
        IncrementalReducer(out).add_job(JobFolder(new), [JobFolder(new)])
        monkeypatch.setattr(JobFolder, "read_table", original)
        runs = pd.read_csv(out / RUNS_CSV)
        assert len(runs) == n_other_jobs + 1 and runs["model"].iloc[-1] == "unet3d_xs"
        assert set(pd.read_csv(out / COMPARISON_CSV)["model"]) == ({"other", "unet3d_xs"} if n_other_jobs else
                                                                    {"unet3d_xs"})
        assert all(p == new for p in calls)
        return len(calls)

    assert reads_for(2) == reads_for(12)


class FailAtFirstEpoch(TrainerHooks):
    def on_epoch_end(self, state, row) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("a failure of this job")


def test_resume_runs_a_failed_job_again_and_keeps_one_row(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "out"
    flags = tiny_flags(out, cache_dir, "--models", "unet3d_xs", "--seeds", "3", "--epochs", "1")
    run_integrated_experiment(parse_config(flags), hooks=[FailAtFirstEpoch()])
    runs = pd.read_csv(out / RUNS_CSV)
    assert runs["status"].tolist() == ["failed"] and "a failure of this job" in runs["error"].iloc[0]
    assert integrated_experiment.main([*flags, "--resume"]) == 0
    assert pd.read_csv(out / RUNS_CSV)["status"].tolist() == ["ok"]
    assert len(pd.read_csv(out / EPOCHS_CSV)) == 1


def test_resume_with_flags_that_change_results_is_refused(tmp_path: Path, cache_dir: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    flags = tiny_flags(out, cache_dir, "--models", "unet3d_xs", "--seeds", "3", "--epochs", "1")
    assert integrated_experiment.main(flags) == 0
    before = (out / RUNS_CSV).read_text()
    assert integrated_experiment.main([*flags, "--resume", "--epochs", "2", "--lr", "0.01"]) == 2
    assert "--epochs: 1 at the first start, 2 now" in caplog.text and "--lr" in caplog.text
    assert (out / RUNS_CSV).read_text() == before
    assert integrated_experiment.main([*flags, "--resume", "--seeds", "3", "4", "--keep_latest"]) == 0  # extends
    assert sorted(pd.read_csv(out / RUNS_CSV)["seed"]) == [3, 4]
    record = json.loads((out / "config.json").read_text())
    assert record["seeds"] == [3] and len(record["starts"]) == 2  # the first start's flags, every start listed
    assert record["starts"][1]["changed"]["seeds"] == [3, 4]


def test_runner_and_trainer_hold_no_task_constants() -> None:
    for path in ("experiment_runner.py", "engine/trainer.py"):
        source = (ROOT / path).read_text()
        assert "N_CLASSES" not in source and "BRATS_SPEC" not in source, path


def test_task_registry_refuses_duplicates_and_unknown_pairs() -> None:
    from dataio.types import DatasetInfo
    from models import ModelInfo

    brats = task_registry.TASK_ENTRIES["brats_segmentation"]
    with pytest.raises(ValueError, match="already registered"):
        task_registry.register_task(dataclasses.replace(brats, name="brats_again"))
    with pytest.raises(ValueError, match="no task for that pair"):
        task_registry.task_for(ModelInfo(name="det", family="x", task="detection"), DatasetInfo(name="ct"))


def test_a_failed_start_leaves_no_folder_and_config_records_amp_as_in_effect(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "never"
    assert integrated_experiment.main(tiny_flags(out, cache_dir, "--models", "unet3d_xss")) == 2
    config = parse_config(tiny_flags(out, cache_dir, "--models", "dualbranch_01_unet_xs"))
    with pytest.raises(ValueError, match="needs modalities"):
        run_integrated_experiment(config, dataset=flair_wt_dataset(cache_dir))
    assert not out.exists()
    ok = tmp_path / "ok"
    assert integrated_experiment.main(tiny_flags(ok, cache_dir, "--models", "unet3d_xs", "--epochs", "1")) == 0
    recorded = json.loads((ok / "config.json").read_text())
    assert recorded["amp"] is False and recorded["amp_requested"] is True  # AMP takes effect on CUDA only


def test_efficiency_is_measured_once_per_model_while_other_processes_wait(tmp_path: Path) -> None:
    import threading
    import time as clock

    from engine.results.efficiency_store import ensure_efficiency, stage_pam_table

    calls: list[int] = []

    def measure():  # type: ignore[no-untyped-def]
        calls.append(1)
        clock.sleep(0.3)
        return {"params": 123, "latency_ms": 4.5}, [{"stage": "enc1", "pam_train_mb": 1.0}]

    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_efficiency(tmp_path, "m", measure)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results == [{"params": 123, "latency_ms": 4.5}] * 3
    assert stage_pam_table(tmp_path, ["m"]).to_dict("records") == [{"model": "m", "stage": "enc1", "pam_train_mb": 1.0}]
    assert ensure_efficiency(tmp_path, "failing", lambda: ({}, [])) == {}  # a failed measurement is not recorded
    assert ensure_efficiency(tmp_path, "failing", measure)["params"] == 123
