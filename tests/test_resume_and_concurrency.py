"""Kill-safe resume and shared result folders: a job stopped after epoch 2 of 4 (by an exception
raised in a hook, and by SIGKILL of its process) resumes from its ``latest`` state and ends with the
same rows and metrics as an uninterrupted job; two processes on disjoint jobs of one folder lose no row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import integrated_experiment
from engine.options.config import parse_config
from engine.results.job_results import JobFolder
from engine.trainer import TrainerHooks
from experiment_runner import run_integrated_experiment
from sweep_helpers import comparable, tiny_flags
from utils.schema import EPOCHS_CSV, JOBS_DIR, PER_CASE_CSV, RUNS_CSV

ROOT = Path(__file__).resolve().parent.parent
JOB = ("--models", "unet3d_xs", "--seeds", "1", "--epochs", "4", "--samples_per_volume", "3")
TABLES = (RUNS_CSV, EPOCHS_CSV, PER_CASE_CSV)


class Interrupt(BaseException):
    """Stands for Ctrl-C or a pre-emption: not an error of the job, so the sweep stops."""


class StopAfter(TrainerHooks):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state, row) -> None:  # type: ignore[no-untyped-def]
        if state.epoch == self.epoch:
            raise Interrupt(f"stopped after epoch {self.epoch}")


class StartRecorder(TrainerHooks):
    """Records the last finished epoch each training run starts from (0 = from scratch)."""

    def __init__(self) -> None:
        self.starts: list[int] = []

    def on_train_start(self, state) -> None:  # type: ignore[no-untyped-def]
        self.starts.append(state.epoch)


def resume(out: Path, cache: Path, *extra: str) -> list[int]:
    """Resume the sweep in ``out``; returns the epoch each job continued after."""
    recorder = StartRecorder()
    run_integrated_experiment(parse_config(tiny_flags(out, cache, *JOB, "--resume", *extra)), hooks=[recorder])
    return recorder.starts


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert integrated_experiment.main(tiny_flags(out, cache_dir, *JOB)) == 0
    return out


def assert_same_results(out: Path, reference: Path) -> None:
    for name in TABLES:
        got, want = comparable(pd.read_csv(out / name)), comparable(pd.read_csv(reference / name))
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6, obj=name)


def test_a_job_stopped_in_a_hook_resumes_from_its_latest_state(tmp_path: Path, cache_dir: Path,
                                                               uninterrupted: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        run_integrated_experiment(parse_config(tiny_flags(out, cache_dir, *JOB)), hooks=[StopAfter(2)])
    folder = JobFolder(out / JOBS_DIR / "unet3d_xs_seed_1")
    assert folder.latest_checkpoint.is_file() and folder.run_row() is None
    assert folder.read_table("epochs")["epoch"].tolist() == [1, 2]
    state = torch.load(folder.latest_checkpoint, weights_only=True)
    assert state["progress"]["epoch"] == 2 and {"python", "numpy", "torch"} <= set(state["rng"][0])
    assert resume(out, cache_dir, "--keep_latest") == [2]  # epochs 3 and 4 only
    assert_same_results(out, uninterrupted)
    assert pd.read_csv(out / EPOCHS_CSV)["epoch"].tolist() == [1, 2, 3, 4]
    assert folder.latest_checkpoint.is_file()  # --keep_latest


def test_a_job_killed_with_sigkill_resumes_with_the_same_results(tmp_path: Path, cache_dir: Path,
                                                                 uninterrupted: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    # the killed run must use this process's kernels (the resume and the reference run here): run as a script,
    # --deterministic would pin portable AVX2 kernels in the fresh process (utils.portable_kernels)
    main = "import sys, integrated_experiment; sys.exit(integrated_experiment.main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", main, *tiny_flags(out, cache_dir, *JOB)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = JobFolder(out / JOBS_DIR / "unet3d_xs_seed_1")
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            epochs = folder.read_table("epochs") if folder.table_path("epochs").is_file() else None
            if epochs is not None and len(epochs) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert folder.run_row() is None and folder.latest_checkpoint.is_file()
    assert resume(out, cache_dir)[0] >= 2
    assert_same_results(out, uninterrupted)
    runs = pd.read_csv(out / RUNS_CSV)
    assert len(runs) == 1 and not folder.latest_checkpoint.exists()


def test_two_processes_on_disjoint_jobs_of_one_folder_lose_no_row(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "shared"
    integrated_experiment.main(tiny_flags(tmp_path / "warm", cache_dir, "--models", "unet3d_xs", "--epochs", "1",
                                          "--max_samples", "7", "--seeds", "9"))  # cache built before the race
    procs = [subprocess.Popen([sys.executable, str(ROOT / "integrated_experiment.py"),
                               *tiny_flags(out, cache_dir, "--models", model, "--seeds", "1", "2", "--epochs", "1",
                                           "--resume")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for model in ("unet3d_xs", "unet3d_stride_xs")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    runs = pd.read_csv(out / RUNS_CSV)  # the process that ended last reduced every job of both
    assert sorted(zip(runs["model"], runs["seed"])) == [("unet3d_stride_xs", 1), ("unet3d_stride_xs", 2),
                                                        ("unet3d_xs", 1), ("unet3d_xs", 2)]
    assert (runs["status"] == "ok").all()
    per_case = pd.read_csv(out / PER_CASE_CSV)
    assert not per_case.duplicated(["model", "seed", "case_id"]).any()
    assert len(per_case) == 4 * runs["n_test_cases"].iloc[0]
    assert len(pd.read_csv(out / EPOCHS_CSV)) == 4
    tables = {name: (out / name).read_text() for name in TABLES}
    assert integrated_experiment_aggregate(out) == 0
    assert {name: (out / name).read_text() for name in TABLES} == tables


def integrated_experiment_aggregate(out: Path) -> int:
    import evaluate_experiment

    return evaluate_experiment.main(["--results_dir", str(out), "--aggregate"])
