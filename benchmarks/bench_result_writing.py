"""Cost of result writing as a sweep grows: per-job incremental updates and the full reduce, for 1, 10, 100
(and with --full, 1000) finished jobs.

    python benchmarks/bench_result_writing.py [--full]

Each job folder holds what a BraTS job writes (a run row, 10 epoch rows, 10 per-case rows, 16 confusion
rows); every model has 5 runs. Reference: rewriting every sweep table from all rows after each job (what a single in-memory
store does), which is O(N) per job and O(N^2) per sweep. Printed per size: the mean time of one
incremental update after the last job, the full reduce, the rewrite-everything reference after the last
job, and the ratio reference / incremental (how much the O(1) update saves at that size).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.results.job_results import JobFolder  # noqa: E402
from engine.results.reducer import IncrementalReducer, collect_tables, reduce_results, write_tables  # noqa: E402
from utils.schema import JOBS_DIR  # noqa: E402


def write_job(root: Path, index: int, rng: np.random.Generator) -> JobFolder:
    model, seed = f"model_{index // 5}", index % 5  # 5 runs per model (e.g. 5 folds or seeds)
    folder = JobFolder.of(root / JOBS_DIR, model, seed, None)
    keys = dict(model=model, seed=seed, fold=None)
    folder.write_job(dict(keys, index=index))
    folder.write_table("epochs", [dict(keys, epoch=e, train_loss=rng.random(), val_loss=rng.random(),
                                       val_dice_wt=rng.random(), val_dice_mean=rng.random(), lr=1e-3,
                                       epoch_time_s=1.0) for e in range(1, 11)])
    folder.write_table("per_case", [dict(keys, case_id=f"case_{c:03d}", dice_wt=rng.random(), dice_tc=rng.random(),
                                         dice_et=rng.random(), dice_mean=rng.random(), hd95_wt=rng.random() * 10)
                                    for c in range(10)])
    folder.write_table("confusion", [dict(keys, reference=r, prediction=p, voxels=int(rng.integers(1000)))
                                     for r in range(4) for p in range(4)])
    folder.write_table("runs", [dict(keys, status="ok", error="", epochs=10, best_epoch=7, best_val_dice=0.8,
                                     dice_wt=rng.random(), dice_mean=rng.random(), params=1000, train_time_s=9.0,
                                     checkpoint="x.pth")])
    return folder


def measure(n_jobs: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = [write_job(root, i, rng) for i in range(n_jobs - 1)]
        if folders:
            reduce_results(root)
        last = write_job(root, n_jobs - 1, rng)
        prefix = last.path.name.split("_seed_")[0] + "_seed_"
        model_jobs = [f for f in [*folders, last] if f.path.name.startswith(prefix)]
        start = time.perf_counter()
        IncrementalReducer(root).add_job(last, model_jobs)
        incremental = time.perf_counter() - start
        start = time.perf_counter()
        reduce_results(root)
        full = time.perf_counter() - start
        start = time.perf_counter()
        write_tables(root, collect_tables(root))  # the reference: everything rewritten after each job
        reference = time.perf_counter() - start
        shutil.rmtree(root / JOBS_DIR)
    return incremental, full, reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 1000 jobs (about a minute)")
    args = parser.parse_args()
    sizes = [1, 10, 100] + ([1000] if args.full else [])
    print(f"# bench_result_writing {datetime.now():%Y-%m-%d %H:%M}  {platform.platform()}")
    print("| finished jobs | incremental update (ms) | full reduce (ms) | rewrite-all reference (ms) | ratio |")
    print("|---|---|---|---|---|")
    for n in sizes:
        inc, full, ref = measure(n)
        print(f"| {n} | {inc * 1e3:.1f} | {full * 1e3:.1f} | {ref * 1e3:.1f} | {ref / inc:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
