"""Benchmark: train-step time and memory of the strong baselines beside volbench's U-Net, at one patch.

Usage: python benchmarks/bench_baselines.py [--quick] [--threads 2] [--size 64] [--steps 3]
       [--models resenc_unet dynunet segresnet mednext_s unet3d_s]

Every model is built as a sweep builds it (``engine.model_setup.setup_model``: 4 input channels, 4 classes, the
patch ``size``^3, so resenc_unet and dynunet are planned for that patch; the batch-1 CPU depth split of
``utils.cpu_conv`` on, as in a sweep) and trained as the segmentation task trains it: batch 1, volbench's default
loss (nnU-Net-style Dice + CE; the deep-supervision sum for the models that return scales), backward, and the
optimiser of the model's own recipe (``train_defaults``: SGD for the nnU-Net baselines, else AdamW). Columns:
  - step s: median wall seconds of ``--steps`` training steps after one warm-up step (best: the fastest);
  - CPU s per step: this process's CPU seconds per step (median): on a shared machine the steadier figure, up to
    threads x the wall time of a quiet one;
  - PAM train MB: volbench's CPU activation memory (``metrics.efficiency.measure_pam``: bytes of the distinct
    tensors saved for backward in one training forward, the network's own convolutions; deep-supervision heads
    included, since they run in that forward);
  - peak RSS step MB: growth of the process's resident high-water mark (``VmHWM`` after resetting it through
    ``/proc/self/clear_refs``; glibc's mmap threshold fixed at 64 KiB) over one step after the warm-up, above the
    RSS before it: activations, their gradients, operator workspaces (the optimiser state already exists);
  - GFLOP fwd: ``FlopCounterMode`` forward FLOPs at batch 1 (training mode: deep-supervision heads included).
The machine's load per core and this process's CPU share are printed; a figure taken while other processes held
the cores is flagged busy: compare its models with each other, not with another run.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import CpuClock, machine_busy, quick_threads_parser  # noqa: E402
import engine.tasks  # noqa: E402,F401  (sets create_model's default out_channels per model kind)
from engine.model_setup import setup_model  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.trainer_settings import TrainerSettings  # noqa: E402
from losses import create_loss  # noqa: E402
from losses.deep_supervision import deep_supervision_loss  # noqa: E402
from metrics.efficiency import MB, machine_load, measure_pam  # noqa: E402
from models import model_info  # noqa: E402
from utils.cpu_conv import native_convs  # noqa: E402

MODALITIES = ("t1", "t1ce", "t2", "flair")
N_CLASSES = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = quick_threads_parser(__doc__.splitlines()[0], "2 timed steps per model (a few minutes on 2 cores)")
    p.add_argument("--models", nargs="+", default=["resenc_unet", "dynunet", "segresnet", "mednext_s", "unet3d_s"])
    p.add_argument("--size", type=int, default=64, help="cubic patch edge in voxels (a multiple of 32)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per model (median)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 2)
    return args


def build(name: str, size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model as a sweep builds it for a ``size``^3 patch, and its trainer settings (its own recipe)."""
    setup = setup_model(name, available_modalities=MODALITIES, n_classes=N_CLASSES, requested_patch=(size,) * 3,
                        data_extent=(size,) * 3)
    if setup.patch_size != (size,) * 3:
        raise SystemExit(f"{name}: --size {size} is not a multiple of its divisibility {setup.info.divisibility}")
    torch.manual_seed(0)
    model = setup.build()
    settings = TrainerSettings.for_model(TrainerSettings(), model_info(name).train_defaults)
    return model, dict(optimizer=settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                       momentum=settings.momentum)


def step_fn(model: torch.nn.Module, recipe: dict[str, Any], size: int) -> Callable[[], None]:
    """One training step as the segmentation task makes it (see the module docstring)."""
    loss_fn = create_loss("nnunet")
    opt = build_optimizer(recipe["optimizer"], model.parameters(), lr=recipe["lr"],
                          weight_decay=recipe["weight_decay"], momentum=recipe["momentum"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, len(MODALITIES), size, size, size, generator=g)
    label = torch.randint(0, N_CLASSES, (1, size, size, size), generator=g)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = deep_supervision_loss(loss_fn, out, label) if isinstance(out, list) else loss_fn(out.float(), label)
        loss.backward()
        opt.step()
    return step


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_step_rss_mb(step: Callable[[], None]) -> float:
    """MB the resident high-water mark rises over ``step()`` above the RSS before it (Linux; NaN elsewhere)."""
    gc.collect()
    base = rss_bytes()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return float("nan")
    step()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    return (peak - base) / MB


def forward_gflop(model: torch.nn.Module, size: int) -> float:
    with native_convs(), FlopCounterMode(display=False) as counter, torch.no_grad():
        model.train()(torch.zeros(1, len(MODALITIES), size, size, size))
    return counter.get_total_flops() / 1e9


def bench_model(name: str, args: argparse.Namespace, timer: CpuClock) -> dict[str, Any]:
    model, recipe = build(name, args.size)
    step = step_fn(model, recipe, args.size)
    step()  # warm-up: optimiser state, oneDNN primitives
    rss = peak_step_rss_mb(step)
    times, cpu = [], []
    for _ in range(args.steps):
        start = time.process_time()
        times.append(timer.time(step))
        cpu.append(time.process_time() - start)
    pam, _ = measure_pam(model, (1, len(MODALITIES), *(args.size,) * 3), device="cpu", mode="train", runs=1)
    params = sum(p.numel() for p in model.parameters())
    return dict(name=name, params=params, step=statistics.median(times), best=min(times),
                cpu=statistics.median(cpu), pam=pam, rss=rss,
                gflop=forward_gflop(model, args.size), optimizer=recipe["optimizer"])


def report(rows: list[dict[str, Any]], args: argparse.Namespace, loads: tuple[float, float], timer: CpuClock) -> None:
    share = timer.share()
    busy = machine_busy(loads, share)
    print(f"# bench_baselines  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | cpu_count "
          f"{os.cpu_count()} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"load per core before/after: {loads[0]:.2f}/{loads[1]:.2f}; CPU share while timing {share:.2f}"
          f"{'  ** BUSY: other processes held the cores; times are pessimistic **' if busy else '  (quiet)'}")
    print(f"input 1 x {len(MODALITIES)} x {args.size}^3, {N_CLASSES} classes, batch 1; median of {args.steps} "
          "steps after 1 warm-up\n")
    print("| model | params | optimiser | GFLOP fwd | train step s (median) | best | CPU s per step | "
          "PAM train MB | peak RSS step MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['optimizer']} | {r['gflop']:.1f} | {r['step']:.2f} | "
              f"{r['best']:.2f} | {r['cpu']:.2f} | {r['pam']:.0f} | {r['rss']:.0f} |")


def fix_mmap_threshold() -> bool:
    """glibc's mmap threshold fixed at 64 KiB (as ``bench_pam_cpu.py`` does): freed tensors then leave the RSS
    instead of staying in the heap, so the high-water mark of a step measures that step."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024) == 1  # M_MMAP_THRESHOLD
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not fix_mmap_threshold():
        print("glibc mallopt unavailable: peak RSS figures may miss memory reused from the heap")
    timer = CpuClock()
    before = machine_load()
    rows = [bench_model(name, args, timer) for name in args.models]
    report(rows, args, (before, machine_load()), timer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
