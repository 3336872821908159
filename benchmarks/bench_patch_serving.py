"""Benchmark: serving training patches from the memory-mapped cache vs re-reading NIfTI per patch.

Usage: python benchmarks/bench_patch_serving.py [--cases 6 --size 96 --patch 64 --patches 48]

In one run, on the same synthetic BraTS-like phantoms (written to a temporary folder):
  (a) cache:  PreprocessedCache -> PatchDataset (augment off, so only I/O + cropping is timed);
  (b) nifti:  for every patch, preprocess_case() on the case's NIfTI files, then the same sampler.
Both draw the same number of patches per case with the same foreground/uniform rule. The one-off
cost of building the cache is printed separately. Files were just written, so both read from the
OS page cache (a warm-cache comparison).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._workdir import run_in_workdir  # noqa: E402
from dataio.adapters import discover_cases  # noqa: E402
from dataio.cache import PreprocessedCache  # noqa: E402
from dataio.preprocess import preprocess_case  # noqa: E402
from dataio.sampling import PatchDataset  # noqa: E402
from dataio.synthetic import ensure_synthetic_brats  # noqa: E402
from dataio.types import MODALITY_ORDER  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=6, help="number of synthetic cases")
    p.add_argument("--size", type=int, default=96, help="phantom edge length in voxels (cubic)")
    p.add_argument("--patch", type=int, default=64, help="patch edge length in voxels (cubic)")
    p.add_argument("--patches", type=int, default=48, help="number of patches served by each method")
    p.add_argument("--workdir", type=Path, default=None, help="keep data and cache here (default: temp dir)")
    args = p.parse_args(argv)
    for flag in ("cases", "size", "patch", "patches"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    return args


def serve_from_cache(cached: list, patch: tuple[int, int, int], spv: int, n: int) -> float:
    ds = PatchDataset(cached, MODALITY_ORDER, patch, samples_per_volume=spv, augment=False, seed=0)
    start = time.perf_counter()
    for i in range(n):
        sample = ds[i]
        assert sample["image"].shape == (len(MODALITY_ORDER), *patch)
    return time.perf_counter() - start


def serve_from_nifti(files: list, patch: tuple[int, int, int], spv: int, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        case = preprocess_case(files[i // spv])
        ds = PatchDataset([case], MODALITY_ORDER, patch, samples_per_volume=spv, augment=False, seed=0)
        sample = ds[i % spv]
        assert sample["image"].shape == (len(MODALITY_ORDER), *patch)
    return time.perf_counter() - start


def run(args: argparse.Namespace, workdir: Path) -> None:
    size, patch = (args.size,) * 3, (args.patch,) * 3
    spv = math.ceil(args.patches / args.cases)
    files = discover_cases(ensure_synthetic_brats(workdir / "data", args.cases, size, 0), "synthetic")
    t0 = time.perf_counter()
    cached = PreprocessedCache(workdir / "cache").get_or_create(
        files, "bench_patch_serving", {"clip_percentiles": [0.5, 99.5]}, progress=False)
    build_s = time.perf_counter() - t0
    same = np.array_equal(np.asarray(cached[0].image), preprocess_case(files[0]).image)

    t_cache = serve_from_cache(cached, patch, spv, args.patches)
    t_nifti = serve_from_nifti(files, patch, spv, args.patches)

    print(f"# bench_patch_serving  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpu_count {os.cpu_count()} | torch {torch.__version__} (threads {torch.get_num_threads()}) | "
          f"python {platform.python_version()}")
    print(f"data: {args.cases} synthetic cases of {size} voxels, 4 modalities; {args.patches} patches of {patch} "
          f"({spv} per case, every third foreground-forced), augment off")
    print(f"cache build (one-off, {args.cases} cases): {build_s:.2f} s; cached arrays == fresh preprocessing: {same}")
    print()
    print("| method | patches | total s | ms/patch | patches/s |")
    print("|---|---|---|---|---|")
    for name, t in (("(a) memory-mapped cache + PatchDataset", t_cache),
                    ("(b) NIfTI read + preprocess per patch", t_nifti)):
        print(f"| {name} | {args.patches} | {t:.3f} | {1000 * t / args.patches:.2f} | {args.patches / t:.1f} |")
    print()
    print(f"ratio (b)/(a): {t_nifti / t_cache:.1f}x faster from the cache")


def main(argv: list[str] | None = None) -> None:
    run_in_workdir(run, parse_args(argv))


if __name__ == "__main__":
    main()
