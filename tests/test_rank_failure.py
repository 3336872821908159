"""A rank that raises inside a DDP job does not hold the others in a collective: 2 CPU ranks (gloo) under torchrun,
an exception injected on rank 1 inside a training forward of epoch 2 of the first job (and, separately, inside its
test phase): one failed row naming rank 1, the second job ok, the launch ends normally within 60 s of the fault.
Also: the agreement itself on hand-made failures (utils.rank_agreement), in a 2-process gloo group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.rank_agreement import RankFailed, agree, announce
from utils.schema import RUNS_CSV

ROOT = Path(__file__).resolve().parent.parent
KWARGS = json.dumps({"unet3d_xs": {"base": 2}})
DRIVER = """
import os, sys, time
sys.path.insert(0, {root!r})
import torch
import experiment_runner
import integrated_experiment
from engine import trainer
from engine.model_setup import ModelSetup

where, fault_file, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
armed = [os.environ["RANK"] == "1"]  # rank 1 of the first job only
phase = dict(epoch=0, test=False)


def fault():
    armed[0] = False
    with open(fault_file, "w") as fh:
        fh.write(str(time.time()))
    raise RuntimeError(f"injected fault in {{where}} on rank {{os.environ['RANK']}}")


real_build = ModelSetup.build


def build(self, *args, **kwargs):
    model = real_build(self, *args, **kwargs)
    real_forward = model.forward

    def forward(*a, **k):  # inside the network's forward (DDP calls it after its own pre-forward work)
        if armed[0] and where == "forward" and model.training and phase["epoch"] == 2:
            fault()
        if armed[0] and where == "test" and phase["test"] and not model.training:
            fault()
        return real_forward(*a, **k)

    model.forward = forward
    return model


real_epoch = trainer.train_one_epoch


def train_one_epoch(*args, **kwargs):
    phase["epoch"] += 1
    return real_epoch(*args, **kwargs)


real_evaluate = experiment_runner.evaluate_model


def evaluate_model(*args, **kwargs):  # the test phase
    phase["test"] = True
    return real_evaluate(*args, **kwargs)


trainer.train_one_epoch = train_one_epoch
ModelSetup.build = build
experiment_runner.evaluate_model = evaluate_model
sys.exit(integrated_experiment.main(argv))
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("where", ["forward", "test"])
def test_a_failing_rank_fails_its_job_once_and_the_launch_goes_on(where: str, tmp_path: Path,
                                                                  cache_dir: Path) -> None:
    driver, fault_file, out = tmp_path / "driver.py", tmp_path / "fault.txt", tmp_path / "out"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    flags = ["--synthetic_cases", "16", "--synthetic_size", "32", "32", "32", "--cache_dir", str(cache_dir),
             "--output_dir", str(out), "--samples_per_volume", "2", "--num_workers", "0", "--skip_efficiency",
             "--model_kwargs", KWARGS, "--models", "unet3d_xs", "--seeds", "1", "2", "--epochs", "2"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
               where, str(fault_file), *flags]
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)  # before the fix the ranks waited for each other until killed
    ended = time.time()
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert fault_file.is_file(), "the fault was never injected"
    assert ended - float(fault_file.read_text()) < 60, "the ranks took too long after the fault"
    runs = pd.read_csv(out / RUNS_CSV).set_index("seed")
    assert len(runs) == 2 and runs.loc[2, "status"] == "ok", runs[["status", "error"]]
    assert runs.loc[1, "status"] == "failed"
    assert f"rank 1 failed: RuntimeError: injected fault in {where} on rank 1" in runs.loc[1, "error"]


def _agreement_worker(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out = [agree(flag=rank == 1)]  # no failure: the flag of rank 1 reaches both
        try:
            if rank == 1:
                raise announce(ValueError("bad case on rank 1"))  # rank 1 raised outside an agreement
            agree()  # rank 0 meets it at its next agreement
        except RankFailed as exc:
            out.append(exc.failures)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_agreement_pairs_an_announced_failure_with_the_next_agreement(tmp_path: Path) -> None:
    results = mp.Manager().dict()
    mp.spawn(_agreement_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    expected = [True, [(1, "ValueError: bad case on rank 1")]]
    assert results[0] == expected and results[1] == expected
