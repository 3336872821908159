"""Trackers (engine/tracking.py) with their local back ends: a tiny sweep logging to TensorBoard, MLflow (SQLite)
and W&B (offline) holds the same values as its CSV files; a resumed job continues its runs; a failing tracker
never fails the job; bad or unavailable --tracker values are refused. Where a tracker package is missing the
tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import integrated_experiment
from engine.options.config import parse_config
from engine.tracking import TENSORBOARD_DIR, TRACKERS_JSON, JobTracking
from engine.options.tracking_options import TrackingOptions
from sweep_helpers import tiny_flags
from utils.schema import EPOCHS_CSV, JOBS_DIR, RUNS_CSV


def require(package: str) -> None:
    """Skip without ``package``; fail under ``CI=true`` (CI must test every tracker)."""
    if importlib.util.find_spec(package) is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the {package} package is not installed; CI must test the {package} tracker")
        pytest.skip(f"{package} is not installed")


def scalars(job_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the job's TensorBoard event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(job_dir / TENSORBOARD_DIR))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for package in ("tensorboard", "mlflow", "wandb"):
        require(package)
    out = tmp_path_factory.mktemp("tracking") / "sweep"
    flags = tiny_flags(out, tmp_path_factory.mktemp("cache"), "--models", "unet3d_xs", "--seeds", "1",
                       "--epochs", "2", "--tracker", "tensorboard", "mlflow", "wandb")
    assert integrated_experiment.main(flags) == 0
    return out


def test_tensorboard_holds_the_csv_values(sweep: Path) -> None:
    epochs = pd.read_csv(sweep / EPOCHS_CSV)
    runs = pd.read_csv(sweep / RUNS_CSV)
    series = scalars(sweep / JOBS_DIR / "unet3d_xs_seed_1")
    for column in ("train_loss", "val_loss", "val_dice_wt", "lr"):  # event files hold float32
        assert [s for s, _ in series[column]] == epochs["epoch"].tolist(), column
        assert [v for _, v in series[column]] == pytest.approx(epochs[column].tolist(), rel=1e-6), column
    assert series["test/dice_wt"] == [(2, pytest.approx(runs.at[0, "dice_wt"], rel=1e-6))]


def test_mlflow_holds_one_finished_run_with_the_csv_values(sweep: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{(sweep / 'mlflow.db').resolve()}"
    (run,) = mlflow_runs(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "unet3d_xs seed 1 holdout"
    assert run.data.params["seed"] == "1" and float(run.data.params["lr"]) == pytest.approx(1e-3)
    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "train_loss")
    epochs = pd.read_csv(sweep / EPOCHS_CSV)
    assert sorted((m.step, m.value) for m in history) == list(zip(epochs["epoch"], epochs["train_loss"]))
    assert run.data.metrics["test_dice_wt"] == pytest.approx(pd.read_csv(sweep / RUNS_CSV).at[0, "dice_wt"])


def test_wandb_writes_an_offline_run(sweep: Path) -> None:
    (run_file,) = (sweep / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()  # protobuf records: keys and the run name are stored as plain strings
    assert b"train_loss" in data and b"test/dice_wt" in data and b"unet3d_xs seed 1 holdout" in data


def _epoch_state(epoch: int) -> SimpleNamespace:
    return SimpleNamespace(epoch=epoch)


def test_a_resumed_job_continues_its_runs(tmp_path: Path) -> None:
    require("mlflow")
    require("tensorboard")
    options = TrackingOptions(tracker=("tensorboard", "mlflow"))
    job_dir = tmp_path / "jobs" / "m_seed_1"
    job_dir.mkdir(parents=True)
    first = JobTracking(options, job_dir, tmp_path, "m seed 1 holdout", {"seed": 1})
    first.on_train_start(_epoch_state(0))
    for epoch in (1, 2, 3):
        first.on_epoch_end(None, {"epoch": epoch, "train_loss": float(epoch)})
    # killed after epoch 3 had been logged but before its state was saved: the resume restarts after epoch 2
    assert (job_dir / TRACKERS_JSON).is_file()
    second = JobTracking(options, job_dir, tmp_path, "m seed 1 holdout", {"seed": 1})
    second.on_train_start(_epoch_state(2))
    second.on_epoch_end(None, {"epoch": 3, "train_loss": 30.0})
    second.close("ok")
    assert scalars(job_dir)["train_loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]  # TensorBoard purged the old epoch 3
    (run,) = mlflow_runs(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] == 30.0


class _Broken:
    def log_metrics(self, metrics: dict, step: int) -> None:
        raise OSError("disk full")

    def close(self, status: str) -> None:
        raise AssertionError("a dropped tracker is not closed")


def test_a_failing_tracker_is_dropped_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tracking = JobTracking(TrackingOptions(tracker=("tensorboard",)), tmp_path, tmp_path, "m seed 1", {})
    monkeypatch.setattr(tracking, "_open", lambda name, run_id: _Broken())
    tracking.on_train_start(_epoch_state(0))
    with caplog.at_level(logging.ERROR):
        tracking.on_epoch_end(None, {"epoch": 1, "train_loss": 1.0})
    assert "tracker tensorboard failed and is dropped" in caplog.text and tracking.trackers == {}
    tracking.close("ok")


def test_tracker_flags() -> None:
    assert parse_config([]).tracker == ("tensorboard",)
    assert parse_config(["--tracker", "none"]).tracker == ()
    assert parse_config(["--tracker", "mlflow", "mlflow", "wandb"]).tracker == ("mlflow", "wandb")


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_missing_tracker_package_stops_before_training_naming_the_pip_install(
        package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # the package is absent whether or not it is installed here: None in sys.modules makes find_spec return
    # None and ``import package`` raise ImportError (requirements.txt holds neither; requirements-test.txt both)
    monkeypatch.setitem(sys.modules, package, None)
    assert importlib.util.find_spec(package) is None
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        integrated_experiment.main(tiny_flags(out, tmp_path / "cache", "--models", "unet3d_xs", "--tracker",
                                              "tensorboard", package))
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"--tracker {package} needs the {package} package, which is not installed" in lines[0]
    assert f"pip install {package}" in lines[0] and "--tracker none" in lines[0]
    assert not out.exists() and not (tmp_path / "cache").exists()  # stopped before data, models or training
