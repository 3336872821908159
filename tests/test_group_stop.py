"""A stop signal sent to the whole process group (SLURM pre-emption, ``scancel``, Ctrl-C in a terminal) also kills
the DataLoader workers; their death is part of the stop: the sweep exits 143 / 130, the job is not recorded as
failed and ``--resume`` ends with the rows of an uninterrupted sweep.

The sweep runs with ``--num_workers 2`` in its own session (``setsid``); a driver sends the signal to its process
group from inside a training step's backward pass, from a DataLoader worker while the main process waits for its batch,
or inside validation, at a call drawn from a seeded generator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.options.config import parse_config
from engine.results.job_results import JobFolder
from engine.trainer import TrainerHooks
from experiment_runner import run_integrated_experiment
from sweep_helpers import comparable, tiny_flags
from utils.signals import SweepStopped, stop_on_signals, stop_requested
from utils.schema import EPOCHS_CSV, JOBS_DIR, PER_CASE_CSV, RUNS_CSV

ROOT = Path(__file__).resolve().parent.parent
JOB = ("--models", "unet3d_xs", "--seeds", "1", "--epochs", "2", "--samples_per_volume", "4", "--num_workers", "2")
# stop moments: (where, signal, the call of the patched function that sends it, drawn from [low, high])
MOMENTS = {"backward_sigterm": ("backward", signal.SIGTERM, (2, 5)),
           "loading_sigterm": ("loading", signal.SIGTERM, (2, 6)),
           "validation_sigint": ("validation", signal.SIGINT, (1, 2))}
DRIVER = """
import os, sys
sys.path.insert(0, {root!r})
import torch
import integrated_experiment
import engine.tasks.segmentation as segmentation

where, signum, nth, argv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
calls = [0]


def stop():
    os.killpg(os.getpgrp(), signum)  # the whole group: this process and its DataLoader workers


if where == "backward":
    real_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            self.register_hook(lambda grad: (stop(), grad)[1])  # runs inside the backward pass
        return real_backward(self, *args, **kwargs)

    torch.Tensor.backward = backward
elif where == "loading":
    import dataio.sampling as sampling
    real_item = sampling.PatchDataset.__getitem__

    def getitem(self, index):  # in a DataLoader worker, while the main process waits for the batch
        calls[0] += 1
        if calls[0] == nth:
            stop()
        return real_item(self, index)

    sampling.PatchDataset.__getitem__ = getitem
else:
    real_logits = segmentation.case_logits

    def case_logits(*args, **kwargs):  # validation's whole-case prediction (epoch 1 validates first)
        calls[0] += 1
        if calls[0] == nth:
            stop()
        return real_logits(*args, **kwargs)

    segmentation.case_logits = case_logits
sys.exit(integrated_experiment.main(argv))
"""


def run(argv: list[str], *driver_args: str) -> subprocess.CompletedProcess:
    """The sweep in a new session (its own process group); through the stop driver when ``driver_args``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", DRIVER.format(root=str(ROOT)), *driver_args, *argv] if driver_args else \
        [sys.executable, str(ROOT / "integrated_experiment.py"), *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          start_new_session=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    done = run(tiny_flags(out, cache_dir, *JOB))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_a_signal_to_the_process_group_is_a_stop_not_a_failure(moment: str, tmp_path: Path, cache_dir: Path,
                                                               reference: Path) -> None:
    where, signum, (low, high) = MOMENTS[moment]
    nth = int(np.random.default_rng(sorted(MOMENTS).index(moment)).integers(low, high + 1))
    out = tmp_path / "out"
    flags = tiny_flags(out, cache_dir, *JOB)
    stopped = run(flags, where, str(int(signum)), str(nth))
    log = stopped.stderr
    assert stopped.returncode == 128 + signum, log[-3000:]
    assert f"stopped by signal {signum.name}: every job keeps its last completed epoch" in log, log[-3000:]
    folder = JobFolder(out / JOBS_DIR / "unet3d_xs_seed_1")
    assert folder.run_row() is None, "the stopped job was recorded as finished or failed"
    assert not (out / RUNS_CSV).is_file() or (pd.read_csv(out / RUNS_CSV)["status"] == "ok").all()
    resumed = run([*flags, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in (RUNS_CSV, EPOCHS_CSV, PER_CASE_CSV):
        pd.testing.assert_frame_equal(comparable(pd.read_csv(out / name)), comparable(pd.read_csv(reference / name)),
                                      check_exact=False, rtol=1e-6, obj=name)


class WorkerErrorReplacesStop(TrainerHooks):
    """The race seen under SLURM: the stop signal raises SweepStopped, and while it unwinds the DataLoader reports
    its killed workers, so a RuntimeError replaces it (made deterministic here by raising it from the stop)."""

    def on_train_step(self, state, step, losses) -> None:  # type: ignore[no-untyped-def]
        try:
            signal.raise_signal(signal.SIGTERM)
        except SweepStopped:
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.") from None


def test_an_error_met_while_stopping_is_the_stop(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "out"
    config = parse_config(tiny_flags(out, cache_dir, "--models", "unet3d_xs", "--seeds", "1", "--epochs", "1"))
    with pytest.raises(SweepStopped) as info, stop_on_signals():
        run_integrated_experiment(config, hooks=[WorkerErrorReplacesStop()])
    assert info.value.signum == signal.SIGTERM and isinstance(info.value.__cause__, RuntimeError)
    assert JobFolder(out / JOBS_DIR / "unet3d_xs_seed_1").run_row() is None  # not recorded as failed
    assert stop_requested() is None  # the next sweep in this process starts with no stop recorded
