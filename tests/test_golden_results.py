"""The engine redesign keeps results identical: the golden sweeps (tests/golden_sweeps.py) re-run and
give the same rows and metric values as the CSVs recorded under tests/golden/ (relative 1e-6, losses 1e-4;
timing, latency and path columns excepted; new columns allowed)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from golden_sweeps import GOLDEN_DIR, SWEEPS, TABLES, VOLATILE, run_sweep
from utils.portable_kernels import PINNED_CAPABILITY, cpu_has_avx2
from utils.schema import ENVIRONMENT_JSON, RUNS_CSV, VAL_PER_CASE_CSV

# a loss is a float32 sum over voxels and batches whose rounding follows the CPU's kernels (seen: 7e-6
# relative between two machines while every metric of the predictions was bit-equal)
LOSS_RTOL = 1e-4
KEYS = ("model", "seed", "fold", "epoch", "case_id", "stage", "reference", "prediction")


def _volatile(column: str) -> bool:
    return any(column.startswith(v) for v in VOLATILE)


def assert_same_table(expected: pd.DataFrame, actual: pd.DataFrame, name: str) -> None:
    """Same columns (a superset is allowed), same rows in the same order, equal values."""
    missing = [c for c in expected.columns if c not in actual.columns]
    assert not missing, f"{name}: columns {missing} disappeared"
    assert len(actual) == len(expected), f"{name}: {len(actual)} rows, expected {len(expected)}"
    keys = [k for k in KEYS if k in expected.columns]
    pd.testing.assert_frame_equal(actual[keys].reset_index(drop=True), expected[keys].reset_index(drop=True),
                                  check_dtype=False, obj=f"{name} keys")
    for column in expected.columns:
        if _volatile(column) or column in keys:
            continue
        want, got = expected[column], actual[column]
        if pd.api.types.is_numeric_dtype(want) and pd.api.types.is_numeric_dtype(got):
            rtol = LOSS_RTOL if column.endswith("_loss") else 1e-6
            np.testing.assert_allclose(got.to_numpy(float), want.to_numpy(float), rtol=rtol, atol=1e-12,
                                       equal_nan=True, err_msg=f"{name}: column {column}")
        else:
            assert got.fillna("").astype(str).tolist() == want.fillna("").astype(str).tolist(), \
                f"{name}: column {column}"


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_golden_sweep_reproduces_recorded_results(sweep: str, tmp_path: Path) -> None:
    source = json.loads((GOLDEN_DIR / "SOURCE.json").read_text())
    assert source["sweeps"][sweep] == list(SWEEPS[sweep]), "the golden command changed: regenerate the fixtures"
    out = tmp_path / "out"
    assert run_sweep(sweep, out, tmp_path / "cache") == 0
    recorded = sorted(p.name for p in (GOLDEN_DIR / sweep).glob("*.csv"))
    assert recorded, f"no golden tables for {sweep}"
    for table in TABLES:
        golden = GOLDEN_DIR / sweep / table
        if not golden.is_file():
            continue
        assert (out / table).is_file(), f"{sweep}: {table} was not written"
        assert_same_table(pd.read_csv(golden), pd.read_csv(out / table), f"{sweep}/{table}")
    if sweep == "fivefold":
        assert_out_of_fold_coverage(out)
    if platform.machine().lower() in ("x86_64", "amd64") and cpu_has_avx2():  # --deterministic pinned the kernels
        assert json.loads((out / ENVIRONMENT_JSON).read_text())["cpu_capability"] == PINNED_CAPABILITY


def assert_out_of_fold_coverage(out: Path) -> None:
    """Every non-test case has exactly one validation row per model and seed (its fold's best epoch)."""
    splits = json.loads((out / "splits.json").read_text())
    non_test = sorted(c for fold in splits["folds"] for c in fold["val"])
    val = pd.read_csv(out / VAL_PER_CASE_CSV)
    for (model, seed), rows in val.groupby(["model", "seed"]):
        assert sorted(rows["case_id"]) == non_test, (model, seed)
        best = pd.read_csv(out / RUNS_CSV).set_index(["model", "seed", "fold"])["best_epoch"]
        assert all(rows["epoch"] == [best[(model, seed, f)] for f in rows["fold"]])
