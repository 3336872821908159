"""Writes that cannot complete: a disk that fills up during a checkpoint, a job's CSV or a sweep table stops the
sweep with an error naming the file (exit 74), leaves no truncated file and no temporary, and ``--resume`` after
the space is freed ends with the rows of an uninterrupted sweep. Stale temporaries of the results root are removed
at the next start, fresh ones never."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch

import integrated_experiment
from engine.results.sweep_files import STALE_TMP_AGE_S, remove_stale_temporaries
from sweep_helpers import comparable, tiny_flags
from utils.atomic import OutputWriteError, atomic_write_text
from utils.schema import EPOCHS_CSV, LATEST_CHECKPOINT, PER_CASE_CSV, RUNS_CSV

JOB = ("--models", "unet3d_xs", "--seeds", "1", "--epochs", "2", "--samples_per_volume", "2")
TABLES = (RUNS_CSV, EPOCHS_CSV, PER_CASE_CSV)


class FullDisk:
    """``os.fsync`` stand-in: the ``nth`` sync of a temporary whose target name passes ``hits`` finds the disk full:
    the temporary is cut to half its size (a write that stopped midway) and ENOSPC is raised."""

    def __init__(self, hits: Callable[[str], bool], nth: int) -> None:
        self.hits, self.nth, self.seen, self.fired = hits, nth, 0, False
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not self.fired and path.endswith(".tmp") and self.hits(Path(path).name):
            self.seen += 1
            if self.seen == self.nth:
                self.fired = True
                os.truncate(path, os.path.getsize(path) // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(fd)


MOMENTS = {
    # the training state of epoch 2 of 2 (the job resumes from epoch 1's)
    "checkpoint": (lambda name: name.startswith(f".{LATEST_CHECKPOINT}."), 2),
    "job_csv": (lambda name: name.startswith(".per_case.csv."), 1),  # the job's per-case test rows
    "sweep_table": (lambda name: name.startswith(f".{RUNS_CSV}."), 1),  # the sweep's run table
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert integrated_experiment.main(tiny_flags(out, cache_dir, *JOB)) == 0
    return out


def assert_nothing_half_written(out: Path) -> None:
    assert not [p for p in out.rglob("*.tmp")], "a temporary was left behind"
    for csv in out.rglob("*.csv"):
        pd.read_csv(csv)  # parses: no truncated table
    for pth in out.rglob("*.pth"):
        torch.load(pth, weights_only=True)  # loads: no truncated checkpoint


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_a_full_disk_stops_cleanly_and_resume_loses_nothing(moment: str, tmp_path: Path, cache_dir: Path,
                                                           uninterrupted: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    disk = FullDisk(*MOMENTS[moment])
    monkeypatch.setattr(os, "fsync", disk)
    with caplog.at_level(logging.ERROR, logger="volbench"):
        code = integrated_experiment.main(tiny_flags(out, cache_dir, *JOB))
    monkeypatch.setattr(os, "fsync", disk.real)  # space freed
    assert disk.fired and code == integrated_experiment.EXIT_WRITE_FAILED
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"cannot write {out}" in message and "No space left on device" in message and "--resume" in message
    assert_nothing_half_written(out)
    assert integrated_experiment.main(tiny_flags(out, cache_dir, *JOB, "--resume")) == 0
    for name in TABLES:
        got, want = comparable(pd.read_csv(out / name)), comparable(pd.read_csv(uninterrupted / name))
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6, obj=name)
    assert pd.read_csv(out / EPOCHS_CSV)["epoch"].tolist() == [1, 2]


def test_a_failed_write_names_the_file_and_keeps_the_old_content(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "table.csv"
    atomic_write_text(target, "old\n")
    monkeypatch.setattr(os, "fsync", FullDisk(lambda name: True, 1))
    with pytest.raises(OutputWriteError) as info:
        atomic_write_text(target, "new\n" * 1000)
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value) and "--resume" in str(info.value)
    assert isinstance(info.value, OSError)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    unwritable = tmp_path / "file_not_folder"
    unwritable.write_text("")
    with pytest.raises(OutputWriteError, match="cannot write .*file_not_folder/x.csv"):
        atomic_write_text(unwritable / "x.csv", "x")


def test_stale_temporaries_of_the_results_root_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    stale, fresh = tmp_path / ".runs.csv.abc.tmp", tmp_path / ".model_seed_1_best.pth.def.tmp"
    for path in (stale, fresh):
        path.write_text("partial")
    old = time.time() - STALE_TMP_AGE_S - 60
    os.utime(stale, (old, old))
    keep = tmp_path / "runs.csv"
    keep.write_text("a\n")
    os.utime(keep, (old, old))
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and fresh.exists() and keep.exists()
