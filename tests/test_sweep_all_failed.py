"""A sweep whose every job fails still writes its tables: one failed row per job with its error, and the
model comparison with no ok run; no chart is drawn from nothing and the CLI finishes normally."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import integrated_experiment
from sweep_helpers import tiny_flags
from utils.schema import COMPARISON_CSV, RUNS_CSV

BROKEN = json.dumps({"unet3d_xs": {"base": 2, "norm": "no_such_norm"},
                     "unet3d_stride_xs": {"base": 2, "norm": "no_such_norm"}})


def test_sweep_whose_jobs_all_fail_writes_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    flags = tiny_flags(out, tmp_path / "cache", "--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "1", "2",
                       "--epochs", "1")
    flags[flags.index("--model_kwargs") + 1] = BROKEN
    assert integrated_experiment.main(flags) == 1  # exit code 1: no job succeeded (the tables are written)
    runs = pd.read_csv(out / RUNS_CSV)
    assert sorted(zip(runs["model"], runs["seed"])) == sorted(
        (m, s) for m in ("unet3d_xs", "unet3d_stride_xs") for s in (1, 2))
    assert set(runs["status"]) == {"failed"} and runs["error"].str.contains("no_such_norm").all()
    comparison = pd.read_csv(out / COMPARISON_CSV).set_index("model")
    assert sorted(comparison.index) == ["unet3d_stride_xs", "unet3d_xs"]
    assert (comparison["n_runs"] == 2).all() and (comparison["n_ok"] == 0).all()
    assert not list(out.glob("*.png")) and not list(out.glob("*.pth"))
    assert (out / "config.json").is_file() and (out / "splits.json").is_file()
