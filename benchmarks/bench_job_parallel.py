"""Throughput of job-parallel sweeps: the same grid by one process and by 2 torchrun ranks (--parallel jobs).

    python benchmarks/bench_job_parallel.py [--ranks 2]

Both runs train the same tiny grid (2 models x 2 seeds, 2 epochs, 7 synthetic 32^3 phantoms, cache
built beforehand) into fresh folders; the script prints the wall time of each and the ratios (jobs per
second with N ranks / with 1 process). References: one process using every core for its threads (what a
user runs), and one process with 1 thread (the per-rank compute of torchrun, which sets OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRID = ["--models", "unet3d_xs", "unet3d_stride_xs", "--seeds", "1", "2", "--epochs", "2", "--synthetic_cases", "7",
        "--synthetic_size", "32", "32", "32", "--samples_per_volume", "4", "--num_workers", "0", "--skip_efficiency",
        "--model_kwargs", json.dumps({"unet3d_xs": {"base": 4}, "unet3d_stride_xs": {"base": 4}})]


def timed(cmd: list[str], threads: int | None = None) -> float:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="torchrun ranks of the job-parallel run (default 2)")
    args = parser.parse_args()
    from engine.options.data_options import DataOptions

    with tempfile.TemporaryDirectory() as tmp:
        cache = ["--cache_dir", str(Path(tmp) / "cache")]
        DataOptions(synthetic_cases=7, synthetic_size=(32, 32, 32), cache_dir=cache[1]).load_cases()
        script = str(ROOT / "integrated_experiment.py")
        one = timed([sys.executable, script, *GRID, *cache, "--output_dir", str(Path(tmp) / "one")])
        one_thread = timed([sys.executable, script, *GRID, *cache, "--output_dir", str(Path(tmp) / "one_t1")], 1)
        many = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}",
                      script, *GRID, *cache, "--parallel", "jobs", "--output_dir", str(Path(tmp) / "many")])
    print(f"# bench_job_parallel {datetime.now():%Y-%m-%d %H:%M}  {platform.platform()}  cpus={os.cpu_count()}")
    print("grid: 2 models x 2 seeds = 4 jobs (2 epochs each), wall time including start-up")
    print(f"1 process, all cores:          {one:7.1f} s")
    print(f"1 process, 1 thread:           {one_thread:7.1f} s")
    print(f"{args.ranks} ranks (1 thread each), jobs: {many:7.1f} s")
    print(f"throughput ratio vs 1 process, all cores: {one / many:.2f}")
    print(f"throughput ratio vs 1 process, 1 thread:  {one_thread / many:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
