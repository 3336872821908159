"""Seeded ``--deterministic`` reference sweeps whose CSVs are kept under ``tests/golden/``.

The engine must keep producing the same rows and metric values (relative 1e-6; losses 1e-4) for these
commands; ``tests/test_golden_results.py`` re-runs them and compares. The sweeps run single-threaded; their
``--deterministic`` pins the CPU kernels to AVX2 on x86 (``utils.portable_kernels``; the variables are removed from
the environment here, so the test checks that the script pins them): PyTorch, oneDNN and MKL otherwise pick
AVX-512/AMX code where the CPU has it, and the float32 rounding of the losses then depends on the machine. Regenerate only when a change alters the
numbers on purpose, in the same commit, saying why:

    python tests/golden_sweeps.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from utils.portable_kernels import PORTABLE_KERNELS  # noqa: E402
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
TABLES = ("integrated_experiment_results.csv", "all_epochs_results.csv", "per_case_results.csv",
          "model_comparison.csv", "stage_wise_pam_results.csv", "confusion_matrices.csv")
# columns that measure time or name paths: not compared
# prefixes: timings, machine load, paths, and the latency Pareto front (two models of near-equal latency swap)
VOLATILE = ("train_time_s", "epoch_time_s", "latency_", "pareto_latency", "checkpoint")
TINY = json.dumps({"unet3d_xs": {"base": 2}, "unet3d_stride_xs": {"base": 2}})
COMMON = ("--synthetic_cases", "7", "--synthetic_size", "32", "32", "32", "--epochs", "2",
          "--samples_per_volume", "1", "--num_workers", "0", "--model_kwargs", TINY, "--deterministic",
          "--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "1", "2")
SWEEPS: dict[str, tuple[str, ...]] = {
    "holdout": COMMON + ("--pam_runs", "1", "--latency_runs", "1"),
    "fivefold": COMMON + ("--use_5fold", "--skip_efficiency"),
}


def run_sweep(name: str, output_dir: Path, cache_dir: Path) -> int:
    """Run golden sweep ``name`` in a fresh single-threaded process (its ``--deterministic`` pins the kernels:
    the pinning variables are taken out of the environment); returns its exit code."""
    argv = [sys.executable, str(ROOT / "integrated_experiment.py"), *SWEEPS[name],
            "--output_dir", str(output_dir), "--cache_dir", str(cache_dir)]
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_KERNELS}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    return subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate tests/golden/")
    args = parser.parse_args()
    if not args.write:
        parser.error("pass --write to regenerate the golden CSVs")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        for name in SWEEPS:
            out = Path(tmp) / name
            if run_sweep(name, out, Path(tmp) / "cache") != 0:
                raise SystemExit(f"golden sweep {name} failed")
            target = GOLDEN_DIR / name
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for table in TABLES:
                if (out / table).is_file():
                    shutil.copy(out / table, target / table)
    (GOLDEN_DIR / "SOURCE.json").write_text(json.dumps(
        {"commit": commit, "sweeps": {k: list(v) for k, v in SWEEPS.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
