"""Scaled-out sweeps on the CPU (gloo): torchrun DDP and job-parallel, --shard processes, SIGTERM, and
SIGKILL at seeded random moments followed by --resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import evaluate_experiment
from engine.options.data_options import DataOptions
from engine.results.job_results import JobFolder
from models import create_model
from sweep_helpers import comparable
from utils.schema import EPOCHS_CSV, JOBS_DIR, PER_CASE_CSV, RUNS_CSV
from utils.seeding import seed_everything

ROOT = Path(__file__).resolve().parent.parent
KWARGS = {"unet3d_xs": {"base": 2}, "unet3d_stride_xs": {"base": 2}}


def flags(out: Path, cache: Path, *extra: str, cases: int = 16, kwargs: dict | None = None) -> list[str]:
    return ["--synthetic_cases", str(cases), "--synthetic_size", "32", "32", "32", "--cache_dir", str(cache),
            "--output_dir", str(out), "--samples_per_volume", "2", "--num_workers", "0", "--skip_efficiency",
            "--deterministic", "--model_kwargs", json.dumps(kwargs or KWARGS), *extra]


def launch(args: list[str], nproc: int = 0) -> subprocess.Popen:
    """The sweep in a new process (``nproc`` > 0: under torchrun with that many CPU ranks)."""
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc \
        else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([*prefix, str(ROOT / "integrated_experiment.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    for cases in (16, 7):  # phantoms and cache entries built once, before any race
        DataOptions(synthetic_cases=cases, synthetic_size=(32, 32, 32), cache_dir=str(cache)).load_cases()
    return cache


def test_ddp_counts_every_case_once_and_matches_one_process(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "ddp"
    finish(launch(flags(out, cache_dir, "--models", "unet3d_xs", "--seeds", "1", "--epochs", "1", "--keep_latest"),
                  nproc=2))
    state = torch.load(JobFolder(out / JOBS_DIR / "unet3d_xs_seed_1").latest_checkpoint, weights_only=True)
    assert len(state["rng"]) == 2  # every rank's RNG states are kept, one entry per rank
    per_case = pd.read_csv(out / PER_CASE_CSV)
    test_ids = json.loads((out / "splits.json").read_text())["test"]
    assert len(test_ids) == 2 and sorted(per_case["case_id"]) == sorted(test_ids)  # each case once, none padded
    assert evaluate_experiment.main(["--results_dir", str(out), "--output_dir", str(tmp_path / "eval")]) == 0
    again = pd.read_csv(tmp_path / "eval" / PER_CASE_CSV)  # the same checkpoint evaluated by one process
    pd.testing.assert_frame_equal(comparable(again)[comparable(per_case).columns], comparable(per_case),
                                  check_exact=False, rtol=1e-6, check_dtype=False)


def test_two_ranks_at_batch_1_equal_one_rank_at_batch_2(tmp_path: Path, cache_dir: Path) -> None:
    # instance norm (no batch statistics) and SGD: Adam would turn float-level gradient differences of
    # near-zero gradients into lr-sized steps, so weights are compared under SGD
    kwargs = {"unet3d_xs": {"base": 2, "norm": "in"}}
    common = ("--models", "unet3d_xs", "--seeds", "1", "--epochs", "1", "--optimizer", "sgd", "--lr", "0.01")
    ddp = launch(flags(tmp_path / "ddp", cache_dir, *common, "--batch_size", "1", kwargs=kwargs), nproc=2)
    single = launch(flags(tmp_path / "one", cache_dir, *common, "--batch_size", "2", kwargs=kwargs))
    finish(ddp), finish(single)
    a = torch.load(tmp_path / "ddp" / "unet3d_xs_seed_1_best.pth", weights_only=True)["state_dict"]
    one = torch.load(tmp_path / "one" / "unet3d_xs_seed_1_best.pth", weights_only=True)
    b = one["state_dict"]
    seed_everything(1)  # the job's initial weights, as the runner builds them
    init = create_model("unet3d_xs", **one["model_kwargs"]).state_dict()
    update = max(float((b[k].float() - init[k].float()).abs().max()) for k in b)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    # equal up to float summation order (oneDNN at 1 thread per rank vs 2 threads: ~1e-4 of the update on an
    # AVX2 EPYC); gradients summed instead of averaged, or not reduced at all, differ by the order of the update
    assert update > 1e-3 and diff < 1e-3 * update, (diff, update)


def test_job_parallel_ranks_take_disjoint_jobs(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "jobs"
    log = finish(launch(flags(out, cache_dir, "--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "1",
                              "--epochs", "1", "--parallel", "jobs"), nproc=2))
    assert "rank 0 of 2 (jobs) runs 1" in log and "rank 1 of 2 (jobs) runs 1" in log
    runs = pd.read_csv(out / RUNS_CSV)
    assert sorted(runs["model"]) == ["unet3d_stride_xs", "unet3d_xs"] and (runs["status"] == "ok").all()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    finish(launch(grid_flags(out, cache_dir)))
    return out


def grid_flags(out: Path, cache: Path, *extra: str) -> list[str]:
    """A 2-job grid (2 models x 1 seed, 2 epochs) on 7 phantoms: the sweep that is sharded and killed."""
    return flags(out, cache, "--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "1", "--epochs", "2", *extra,
                 cases=7)


def assert_same_rows(out: Path, reference: Path) -> None:
    for name in (RUNS_CSV, EPOCHS_CSV, PER_CASE_CSV):
        pd.testing.assert_frame_equal(comparable(pd.read_csv(out / name)), comparable(pd.read_csv(reference / name)),
                                      check_exact=False, rtol=1e-6, obj=name)


def test_two_shards_at_once_give_the_rows_of_one_process(tmp_path: Path, cache_dir: Path, reference: Path) -> None:
    out = tmp_path / "shared"
    shards = [launch(grid_flags(out, cache_dir, "--shard", f"{k}/2")) for k in (0, 1)]
    logs = [finish(p) for p in shards]
    assert all("runs 1;" in log for log in logs)  # 2 jobs, 1 each (index 0 and index 1)
    assert evaluate_experiment.main(["--results_dir", str(out), "--aggregate"]) == 0
    assert_same_rows(out, reference)


def _no_corrupt_files(out: Path, allow_tmp: bool = False) -> None:
    """Every checkpoint loads and every CSV parses; without ``allow_tmp`` (a SIGKILL inside a write may
    leave its temporary file, never a broken target) no temporary file is left either."""
    for path in out.rglob("*.pth"):
        torch.load(path, weights_only=True)
    for path in out.rglob("*.csv"):
        pd.read_csv(path)
    assert allow_tmp or not list(out.rglob("*.tmp")), "a temporary file outlived its write"


def test_sigterm_stops_with_a_resumable_state(tmp_path: Path, cache_dir: Path, reference: Path) -> None:
    out = tmp_path / "term"
    proc = launch(grid_flags(out, cache_dir))
    folder = JobFolder(out / JOBS_DIR / "unet3d_xs_seed_1")
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not folder.table_path("epochs").is_file():
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, log[-2000:]
    assert "continue with --resume" in log
    state = torch.load(folder.latest_checkpoint, weights_only=True)
    assert state["progress"]["epoch"] >= 1
    _no_corrupt_files(out)
    finish(launch(grid_flags(out, cache_dir, "--resume")))
    assert_same_rows(out, reference)


KILL_ON_WRITE = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
suffix, nth = sys.argv[1], int(sys.argv[2])
real_replace, seen = os.replace, [0]

def replace(src, dst):  # SIGKILL this process inside its nth atomic write of a *suffix file
    if str(dst).endswith(suffix):
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

os.replace = replace
import integrated_experiment
sys.exit(integrated_experiment.main(sys.argv[3:]))
"""


def test_sigkill_at_random_moments_then_resume_loses_and_duplicates_nothing(tmp_path: Path, cache_dir: Path,
                                                                            reference: Path) -> None:
    out = tmp_path / "killed"
    launcher = tmp_path / "kill_on_write.py"
    launcher.write_text(KILL_ON_WRITE)
    rng = random.Random(2026)
    kills = 0
    for suffix in (".pth", ".csv"):  # inside the write of a checkpoint, then of a CSV
        proc = subprocess.Popen([sys.executable, str(launcher), suffix, str(rng.randint(1, 4)),
                                 *grid_flags(out, cache_dir, "--resume")], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
        proc.wait(timeout=300)
        kills += proc.returncode == -signal.SIGKILL
        _no_corrupt_files(out, allow_tmp=True)
    for trial in range(2):  # at seeded random moments
        proc = launch(grid_flags(out, cache_dir, "--resume"))
        time.sleep(rng.uniform(3.0, 9.0))  # start-up is ~4 s; jobs write checkpoints and CSVs every epoch
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=120)
        _no_corrupt_files(out, allow_tmp=True)
    assert kills >= 3, "the sweep ended before most kills"
    finish(launch(grid_flags(out, cache_dir, "--resume")))
    assert_same_rows(out, reference)
    runs = pd.read_csv(out / RUNS_CSV)
    assert not runs.duplicated(["model", "seed"]).any() and len(runs) == 2
    assert not list((out / JOBS_DIR).rglob("*.tmp")), "a resumed job cleans what killed writes left behind"


def test_lesion_models_train_under_ddp_and_score_each_case_once(tmp_path: Path) -> None:
    # RetinaNet and DetSeg3D route their training targets through forward(), so DDP synchronises their gradients
    out = tmp_path / "ich"
    finish(launch(["--dataset_version", "synthetic_ich", "--synthetic_cases", "10", "--synthetic_size", "32", "32",
                   "16", "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(out), "--tiny", "--epochs", "1",
                   "--samples_per_volume", "2", "--num_workers", "0", "--skip_efficiency", "--deterministic",
                   "--models", "retinanet", "detseg3d"], nproc=2))
    runs = pd.read_csv(out / RUNS_CSV)
    assert runs["status"].tolist() == ["ok", "ok"]
    test_ids = json.loads((out / "splits.json").read_text())["test"]
    per_case = pd.read_csv(out / PER_CASE_CSV)
    for model in ("retinanet", "detseg3d"):
        assert sorted(per_case[per_case["model"] == model]["case_id"]) == sorted(test_ids)
    assert evaluate_experiment.main(["--results_dir", str(out), "--output_dir", str(tmp_path / "eval")]) == 0
    again = pd.read_csv(tmp_path / "eval" / RUNS_CSV).set_index("model")
    for model, row in runs.set_index("model").iterrows():  # the gathered dataset-level metrics equal one process's
        for column in ("map", "mar", "froc_cpm", "lesions_found", "fp_components"):
            assert again.at[model, column] == pytest.approx(row[column], rel=1e-6, nan_ok=True), (model, column)
