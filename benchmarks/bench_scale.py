"""Scale: how sweep time, memory and result writing grow with the number of jobs and of cached cases.

    python benchmarks/bench_scale.py --quick     # jobs 1, 5, 20; cases 10, 100, 300 (a few minutes on 2 cores)
    python benchmarks/bench_scale.py             # jobs 1, 10, 100; cases 10, 100, 1000

Jobs: one real sweep per size (``integrated_experiment.main`` in a fresh subprocess): ``unet3d_xs`` at base 2,
one seed per job, 1 epoch, 7 synthetic 32^3 phantoms (cache built beforehand), no efficiency figures, no tracker;
printed: wall time, time per job, peak RSS of the process, the sweep folder's size, and the time of a full
reduce (``evaluate_experiment.py --aggregate``) afterwards. A second line at the middle size with the default
TensorBoard tracker shows what it costs. Cases: per size a fresh cache of small 24^3 phantoms (fresh subprocess):
time to write and preprocess them (first open), to open the cache again, to make the 5-fold splits and to draw
one training patch of every case, and the peak RSS. The reference is linear growth: the last column divides the
per-item time at each size by the per-item time at the smallest size (about 1 or less = linear; growing with size
= worse than linear). Each figure is one measurement; the 1-minute load average is printed with it.
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
TINY = json.dumps({"unet3d_xs": {"base": 2}})

_JOB_SCRIPT = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import integrated_experiment, evaluate_experiment
flags = json.loads(sys.argv[1])
start = time.perf_counter()
rc = integrated_experiment.main(flags)
wall = time.perf_counter() - start
out = flags[flags.index("--output_dir") + 1]
start = time.perf_counter()
rc_reduce = evaluate_experiment.main(["--results_dir", out, "--aggregate"])
reduce_s = time.perf_counter() - start
print("RESULT " + json.dumps(dict(rc=rc, rc_reduce=rc_reduce, wall_s=wall, reduce_s=reduce_s,
                                  rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""

_CASE_SCRIPT = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from dataio.cache import open_dataset
from dataio.sampling import PatchDataset
from dataio.splits import make_splits
n, cache = int(sys.argv[1]), Path(sys.argv[2])
kwargs = dict(cache_root=cache, synthetic_cases=n, synthetic_size=(24, 24, 24), progress=False)
start = time.perf_counter(); data = open_dataset(None, "synthetic", **kwargs); first = time.perf_counter() - start
start = time.perf_counter(); data = open_dataset(None, "synthetic", **kwargs); again = time.perf_counter() - start
ids = [c.case_id for c in data.cases]
start = time.perf_counter(); make_splits(ids, [c.patient_id for c in data.cases], use_5fold=True)
splits = time.perf_counter() - start
dataset = PatchDataset(data.cases, list(data.info.channels), (16, 16, 16), samples_per_volume=1, augment=True, seed=0)
start = time.perf_counter()
for i in range(len(dataset)):
    dataset[i]
patches = time.perf_counter() - start
print("RESULT " + json.dumps(dict(first_s=first, again_s=again, splits_s=splits, patches_s=patches,
                                  rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def _run(script: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", VOLBENCH_PROGRESS="0")
    done = subprocess.run([sys.executable, "-c", script.format(root=str(ROOT)), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def sweep_flags(out: Path, cache: Path, jobs: int, tracker: str) -> list[str]:
    return ["--models", "unet3d_xs", "--seeds", *[str(s) for s in range(1, jobs + 1)], "--epochs", "1",
            "--synthetic_cases", "7", "--synthetic_size", "32", "32", "32", "--cache_dir", str(cache),
            "--output_dir", str(out), "--samples_per_volume", "1", "--num_workers", "0", "--model_kwargs", TINY,
            "--skip_efficiency", "--deterministic", "--tracker", tracker]


def bench_jobs(sizes: list[int], work: Path) -> None:
    cache = work / "cache"
    _run(_JOB_SCRIPT, json.dumps(sweep_flags(work / "warmup", cache, 1, "none")))  # builds the cache
    print("| jobs | tracker | wall s | s per job | peak RSS MB | folder MB | full reduce s | load | per-job vs smallest |")
    print("|---|---|---|---|---|---|---|---|---|")
    middle = sizes[len(sizes) // 2]
    base = None
    for jobs, tracker in [*((n, "none") for n in sizes), (middle, "tensorboard")]:
        out = work / f"sweep_{jobs}_{tracker}"
        load = os.getloadavg()[0]
        res = _run(_JOB_SCRIPT, json.dumps(sweep_flags(out, cache, jobs, tracker)))
        if res["rc"] != 0 or res["rc_reduce"] != 0:
            raise RuntimeError(f"sweep of {jobs} jobs ended with {res['rc']} / {res['rc_reduce']}")
        per_job = res["wall_s"] / jobs
        base = per_job if base is None else base
        print(f"| {jobs} | {tracker} | {res['wall_s']:.1f} | {per_job:.2f} | {res['rss_mb']:.0f} | "
              f"{_folder_mb(out):.1f} | {res['reduce_s']:.2f} | {load:.2f} | {per_job / base:.2f} |", flush=True)


def bench_cases(sizes: list[int], work: Path) -> None:
    print("| cases | write + preprocess s | reopen s | 5-fold splits ms | one patch per case s | peak RSS MB | load "
          "| per-case (write) vs smallest |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for n in sizes:
        load = os.getloadavg()[0]
        res = _run(_CASE_SCRIPT, str(n), str(work / f"cases_{n}"))
        per_case = res["first_s"] / n
        base = per_case if base is None else base
        print(f"| {n} | {res['first_s']:.1f} | {res['again_s']:.2f} | {1000 * res['splits_s']:.1f} | "
              f"{res['patches_s']:.2f} | {res['rss_mb']:.0f} | {load:.2f} | {per_case / base:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="jobs 1, 5, 20 and cases 10, 100, 300")
    parser.add_argument("--part", choices=("jobs", "cases", "both"), default="both", help="what to measure")
    args = parser.parse_args(argv)
    jobs, cases = ([1, 5, 20], [10, 100, 300]) if args.quick else ([1, 10, 100], [10, 100, 1000])
    import torch

    print(f"# bench_scale  {datetime.now().isoformat(timespec='seconds')}  ({'quick' if args.quick else 'full'})")
    print(f"machine: {platform.platform()} | cpu_count {os.cpu_count()} | torch {torch.__version__} | "
          f"python {platform.python_version()} | load average {os.getloadavg()[0]:.2f}\n")
    with tempfile.TemporaryDirectory(prefix="volbench_scale_") as tmp:
        if args.part in ("jobs", "both"):
            bench_jobs(jobs, Path(tmp))
            print()
        if args.part in ("cases", "both"):
            bench_cases(cases, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
