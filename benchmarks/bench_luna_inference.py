"""Benchmark: whole-volume inference of the 2.5D ``unet2d_luna`` on a chest CT, slice batches against one slice
at a time, and against ``unet3d_xs``'s 3D sliding window on the same volume.

Usage:
    python benchmarks/bench_luna_inference.py                 # one 512 x 512 x 300 CT (LUNA16's typical size)
    python benchmarks/bench_luna_inference.py --size 256 256 120 --repeats 1   # a quicker run
    options: --threads N, --patch3d 64 (unet3d_xs window), --repeats R (best of R)

The volume is random HU-windowed noise in [0, 1] (inference time does not depend on the values). Each
configuration runs under ``torch.no_grad`` in eval mode through ``engine.inference.predict_logits``, the function
volbench's validation and test call, and is timed by wall clock (best of ``--repeats`` after one warm-up call on
a small volume):

  (S8)  unet2d_luna, volbench's setting: every axial slice with its 3 neighbours on each side (7 channels), whole
        slices (512 x 512 windows), 8 slices per forward pass;
  (S1)  the same, one slice per forward pass (the chapter's per-slice loop);
  (3D)  unet3d_xs, 3D sliding window of --patch3d^3 voxels, overlap 0.1, Gaussian blending, 1 window per pass.

Printed: seconds per volume, and the ratios S1 / S8 (what slice batching saves) and 3D / S8.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine.tasks  # noqa: E402,F401  (sets create_model's default out_channels per model kind)
from engine.inference import InferenceSettings, predict_logits  # noqa: E402
from models import create_model  # noqa: E402


def _time(model: torch.nn.Module, image: torch.Tensor, settings: InferenceSettings, batch: int,
          repeats: int) -> float:
    """Best wall time (s) of ``repeats`` whole-volume predictions, ``batch`` windows or slices per pass."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict_logits(model, image, settings, sw_batch_size=batch, slice_batch=batch)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"))
    parser.add_argument("--patch3d", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = tuple(args.size)
    image = torch.rand((1, *size), dtype=torch.float32)
    cpu = torch.device("cpu")
    luna = create_model("unet2d_luna").eval()
    unet = create_model("unet3d_xs", in_channels=1, out_channels=2).eval()
    slices = InferenceSettings(modalities=("ct",), roi_size=size[:2], overlap=0.1, device=cpu, spatial_dims=2,
                               context_slices=3)
    windows = InferenceSettings(modalities=("ct",), roi_size=(args.patch3d,) * 3, overlap=0.1, device=cpu)
    warm = torch.rand((1, 64, 64, 16))
    predict_logits(luna, warm, InferenceSettings(("ct",), (64, 64), 0.1, cpu, 2, 3))
    predict_logits(unet, torch.rand((1, 64, 64, 64)), windows)
    s8 = _time(luna, image, slices, 8, args.repeats)
    s1 = _time(luna, image, slices, 1, args.repeats)
    d3 = _time(unet, image, windows, 1, args.repeats)
    print(f"# bench_luna_inference {datetime.date.today()} {platform.processor() or platform.machine()} "
          f"threads {torch.get_num_threads()} torch {torch.__version__} volume {size}")
    print(f"(S8) unet2d_luna, 8 slices per pass      {s8:8.1f} s/volume")
    print(f"(S1) unet2d_luna, 1 slice per pass       {s1:8.1f} s/volume   S1/S8 = {s1 / s8:.2f}x")
    print(f"(3D) unet3d_xs, {args.patch3d}^3 sliding window     {d3:8.1f} s/volume   3D/S8 = {d3 / s8:.2f}x")


if __name__ == "__main__":
    main()
