"""Benchmark: augmented training patches per second, volbench's cache + PatchDataset vs MONAI pipelines.

Usage:
    python benchmarks/bench_input_pipeline.py --quick   # a few minutes on 2 cores: 4 cases of 96x96x64, 64^3
    python benchmarks/bench_input_pipeline.py           # 4 cases of 240x240x155 (BraTS size), 128^3 patches
    options: --cases 4 --patches 36 --rounds 3 --threads 1 --gpu_step_s 0.1 --gpu_batch 2 --workdir DIR

In one process, interleaved in rounds (so load changes hit every method alike), on the same synthetic
four-modality NIfTI phantoms (dataio.synthetic, written to a temporary folder), every method serving
patches of the same size with one third centred on foreground and the same augmentations
(``dataio.augment.build_augmentation``: flips, 90-degree rotations, intensity scale/shift, contrast, noise):

  (a)  volbench: PreprocessedCache (memory-mapped .npy) -> PatchDataset (crop, then augment; fast path)
  (a0) volbench crop + the MONAI ``Compose`` of the same augmentations (PatchDataset before the fast path;
       the outputs are bitwise equal, see tests/test_augment_stats.py)
  (a-) volbench with augmentation off (I/O and cropping only)
  (b)  MONAI tutorial: CacheDataset[LoadImaged -> EnsureChannelFirstd -> ConcatItemsd ->
       NormalizeIntensityd(nonzero, channel_wise)] -> RandCropByPosNegLabeld(pos 1, neg 2) -> the
       augmentations; ``copy_cache=True`` (the default: the cached case is deep-copied per patch), and
       the foreground/background indices recomputed on the whole case for every patch
  (c)  MONAI tuned: (b) with ``copy_cache=False`` and the indices cached (FgBgToIndicesd)

Times are wall clock and process CPU time; with ``--threads 1`` (torch intra-op threads) CPU seconds are
core-seconds, so patches per CPU-second is the rate one DataLoader worker (one core) sustains. The
one-off cache builds are printed separately. Files were just written, so all read from the page cache.
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
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._workdir import run_in_workdir  # noqa: E402
from dataio.adapters import discover_cases  # noqa: E402
from dataio.augment import build_augmentation  # noqa: E402
from dataio.cache import PreprocessedCache  # noqa: E402
from dataio.sampling import PatchDataset, crop_patch, sample_patch_center  # noqa: E402
from dataio.synthetic import ensure_synthetic_brats  # noqa: E402
from dataio.types import MODALITY_ORDER  # noqa: E402

TARGET_TUTORIAL, TARGET_TUNED = 5.0, 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 cases of 96x96x64 and 64^3 patches (minutes on 2 cores)")
    p.add_argument("--cases", type=int, default=4, help="number of synthetic cases")
    p.add_argument("--size", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                   help="phantom size in voxels (default 240 240 155; --quick 96 96 64)")
    p.add_argument("--patch", type=int, default=None, help="cubic patch edge in voxels (default 128; --quick 64)")
    p.add_argument("--patches", type=int, default=None, help="patches per method, all rounds (default 36; --quick 48)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the methods")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = per-core figures)")
    p.add_argument("--gpu_step_s", type=float, default=0.1,
                   help="ASSUMED GPU training step time in s of a 3D U-Net at 128^3 with AMP (not measured here)")
    p.add_argument("--gpu_batch", type=int, default=2, help="patches per assumed GPU training step")
    p.add_argument("--workdir", type=Path, default=None, help="keep data and caches here (default: temp dir)")
    args = p.parse_args(argv)
    args.size = tuple(args.size or ((96, 96, 64) if args.quick else (240, 240, 155)))
    args.patch = args.patch or (64 if args.quick else 128)
    args.patches = args.patches or (48 if args.quick else 36)
    for flag in ("cases", "patch", "patches", "rounds", "threads", "gpu_batch"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    return args


def volbench_servers(files: list, workdir: Path, patch: tuple[int, int, int], per_round: int
                     ) -> tuple[dict[str, Callable[[int, int], torch.Tensor]], Callable[[int, int], int], float]:
    """(a), (a0) and (a-) as ``serve(round, i) -> image``, the augmentation seed of each patch of (a), and
    the one-off cache build time in s."""
    t0 = time.perf_counter()
    cached = PreprocessedCache(workdir / "cache").get_or_create(
        files, "bench_input_pipeline", {"clip_percentiles": [0.5, 99.5]}, progress=False)
    build_s = time.perf_counter() - t0
    spv = math.ceil(per_round / len(cached))
    fast = PatchDataset(cached, MODALITY_ORDER, patch, samples_per_volume=spv, augment=True, seed=0)
    plain = PatchDataset(cached, MODALITY_ORDER, patch, samples_per_volume=spv, augment=False, seed=0)
    monai_aug = build_augmentation(3, patch)

    def serve_monai_aug(r: int, i: int) -> torch.Tensor:
        _, case, rng, fg = fast._resolve((r, i))
        img, lab = crop_patch(case.image, case.label, sample_patch_center(case.label.shape, patch, rng, fg), patch,
                              fast.channel_idx)
        monai_aug.set_random_state(seed=int(rng.integers(2**32)))
        out = monai_aug({"image": torch.from_numpy(img), "label": torch.from_numpy(lab.astype(np.int64))[None]})
        return out["image"].as_tensor().float().contiguous()

    def seed_of(r: int, i: int) -> int:
        """The augmentation seed PatchDataset uses for patch (epoch r, index i)."""
        _, case, rng, fg = fast._resolve((r, i))
        sample_patch_center(case.label.shape, patch, rng, fg)
        return int(rng.integers(2**32))

    servers = {"(a) volbench cache + PatchDataset, fast augmentation": lambda r, i: fast[(r, i)]["image"],
               "(a0) volbench crop + MONAI Compose augmentation": serve_monai_aug,
               "(a-) volbench cache + PatchDataset, augmentation off": lambda r, i: plain[(r, i)]["image"]}
    return servers, seed_of, build_s


def monai_servers(files: list, patch: tuple[int, int, int], seed_of: Callable[[int, int], int]
                  ) -> tuple[dict[str, Callable[[int, int], torch.Tensor]], dict[str, float]]:
    """(b) tutorial and (c) tuned MONAI pipelines as ``serve(round, i) -> image``, and their cache build times.

    Before patch (r, i) the augmentation transforms inside each pipeline are seeded with ``seed_of(r, i)``,
    the seed (a) uses for that patch, so every method makes the same augmentation draws (the same flips,
    rotations, intensity changes and noise draws): the comparison is not at the mercy of how many of the
    costly contrast and noise draws each method happens to make.
    """
    from monai.data import CacheDataset
    from monai.transforms import (Compose, ConcatItemsd, DeleteItemsd, EnsureChannelFirstd, FgBgToIndicesd,
                                  LoadImaged, NormalizeIntensityd, RandCropByPosNegLabeld)
    from monai.utils import set_determinism

    set_determinism(seed=0)
    mods = list(MODALITY_ORDER)
    data = [dict({m: str(c.images[m]) for m in mods}, label=str(c.label)) for c in files]
    load = [LoadImaged(keys=mods + ["label"], image_only=True), EnsureChannelFirstd(keys=mods + ["label"]),
            ConcatItemsd(keys=mods, name="image", dim=0), DeleteItemsd(keys=mods),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]
    crop = dict(keys=["image", "label"], label_key="label", spatial_size=patch, pos=1, neg=2, num_samples=1,
                image_key="image", image_threshold=0.0)
    servers, builds = {}, {}
    for name, tuned in (("(b) MONAI tutorial (CacheDataset, copy_cache=True)", False),
                        ("(c) MONAI tuned (copy_cache=False, cached FgBgToIndicesd)", True)):
        aug = build_augmentation(3, patch)  # its transform objects run inside the pipeline below
        sampler = ([FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
                    RandCropByPosNegLabeld(**crop, fg_indices_key="label_fg_indices",
                                           bg_indices_key="label_bg_indices")]
                   if tuned else [RandCropByPosNegLabeld(**crop)])
        t0 = time.perf_counter()
        ds = CacheDataset(data, Compose(load + sampler + list(aug.transforms)), cache_rate=1.0, num_workers=0,
                          copy_cache=not tuned, progress=False)
        builds[name] = time.perf_counter() - t0

        def serve(r: int, i: int, ds: CacheDataset = ds, aug: Compose = aug) -> torch.Tensor:
            aug.set_random_state(seed=seed_of(r, i))
            return ds[(r * 7919 + i) % len(ds)][0]["image"].as_tensor()

        servers[name] = serve
    return servers, builds


def time_rounds(servers: dict[str, Callable[[int, int], torch.Tensor]], per_round: int, rounds: int,
                shape: tuple[int, ...]) -> tuple[dict[str, tuple[float, float]], list[float]]:
    """(wall s, CPU s) per method over all rounds, interleaved; and the 1-min load average at each round start."""
    totals = {name: [0.0, 0.0] for name in servers}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for name, serve in servers.items():
            serve(r + 1000, 0)  # warm-up (first touch), not timed
            w0, c0 = time.perf_counter(), time.process_time()
            for i in range(per_round):
                out = serve(r, i)
                assert tuple(out.shape) == shape, (name, tuple(out.shape))
            totals[name][0] += time.perf_counter() - w0
            totals[name][1] += time.process_time() - c0
    loads.append(os.getloadavg()[0])
    return {k: (v[0], v[1]) for k, v in totals.items()}, loads


def report(args: argparse.Namespace, times: dict[str, tuple[float, float]], loads: list[float],
           builds: dict[str, float], n: int) -> None:
    """Print the table, the ratios against the targets and the GPU-feeding estimate."""
    ours = "(a) volbench cache + PatchDataset, fast augmentation"
    busy = max(loads) > args.threads + 0.5
    flag = "  -> BUSY: other processes shared the cores; wall times are pessimistic, CPU times less so"
    print(f"load average (1 min) at each round start and the end: {', '.join(f'{x:.2f}' for x in loads)}"
          f"{flag if busy else '  (quiet)'}")
    print("one-off cache builds: " + "; ".join(f"{k.split(' ')[0]} {v:.1f} s" for k, v in builds.items()))
    print()
    print("| method | patches | wall s | CPU s | patches/s (wall) | patches per CPU-second | CPU time / (a) |")
    print("|---|---|---|---|---|---|---|")
    for name, (wall, cpu) in times.items():
        print(f"| {name} | {n} | {wall:.2f} | {cpu:.2f} | {n / wall:.2f} | {n / cpu:.2f} | "
              f"{cpu / times[ours][1]:.2f} |")
    print()
    for ref, target in (("(b)", TARGET_TUTORIAL), ("(c)", TARGET_TUNED), ("(a0)", None)):
        name = next(k for k in times if k.startswith(ref))
        r_cpu, r_wall = times[name][1] / times[ours][1], times[name][0] / times[ours][0]
        verdict = "" if target is None else (f"  target >= {target:.0f}x: {'met' if r_cpu >= target else 'MISSED'}")
        print(f"ratio {ref}/(a): {r_cpu:.2f}x by CPU time, {r_wall:.2f}x by wall time{verdict}")
    per_core = n / times[ours][1]
    need = args.gpu_batch / args.gpu_step_s
    print()
    print(f"GPU feeding (ASSUMED step, not measured: {args.gpu_step_s * 1000:.0f} ms per training step of batch "
          f"{args.gpu_batch} at 128^3 -> {need:.1f} patches/s): volbench gives {per_core:.2f} patches/s per CPU core"
          f" at {args.patch}^3, so {math.ceil(need / per_core)} worker core(s) keep that GPU fed"
          + ("" if args.patch == 128 else f" (patches here are {args.patch}^3, not 128^3: run without --quick)"))


def run(args: argparse.Namespace, workdir: Path) -> None:
    torch.set_num_threads(args.threads)
    patch = (args.patch,) * 3
    per_round = math.ceil(args.patches / args.rounds)
    n = per_round * args.rounds
    t0 = time.perf_counter()
    files = discover_cases(ensure_synthetic_brats(workdir / "data", args.cases, args.size, 0), "synthetic")
    data_s = time.perf_counter() - t0
    ours, seed_of, build_a = volbench_servers(files, workdir, patch, per_round)
    monai, builds = monai_servers(files, patch, seed_of)
    times, loads = time_rounds({**ours, **monai}, per_round, args.rounds, (len(MODALITY_ORDER), *patch))
    import monai as monai_pkg

    print(f"# bench_input_pipeline  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpu_count {os.cpu_count()} | torch {torch.__version__} (threads {torch.get_num_threads()}) | "
          f"monai {monai_pkg.__version__} | "
          f"numpy {np.__version__} | python {platform.python_version()}")
    print(f"data: {args.cases} synthetic cases of {args.size} voxels, 4 modalities (written in {data_s:.1f} s); "
          f"{n} patches of {patch} per method in {args.rounds} interleaved rounds; one third foreground-centred")
    report(args, times, loads, {"(a)": build_a, **builds}, n)


def main(argv: list[str] | None = None) -> None:
    run_in_workdir(run, parse_args(argv))


if __name__ == "__main__":
    main()
