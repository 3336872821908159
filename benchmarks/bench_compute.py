"""Benchmark: compute efficiency of batch-1 CPU training steps, with volbench's depth split against PyTorch's own convs.

Usage: python benchmarks/bench_compute.py [--quick] [--threads 2] [--models unet3d_xs unet3d_stride_xs ...]
       [--size 32] [--repeats 5]

In one run, per conv U-Net at batch 1 on a size^3 patch (4 input channels, 4 classes; the dual-branch model 2):
  (a) routing: how many convolution calls of a training step PyTorch sends to a slow native kernel
      (``slow_conv3d``, ``slow_conv_transpose3d``), for the plain model and with ``utils.cpu_conv``'s depth split;
  (b) training step (forward, cross-entropy, backward, AdamW step) and inference latency, plain vs split,
      timed alternately (median of the repeats), and the split's speed-up;
  (c) achieved FLOP/s of the split training step (``FlopCounterMode`` FLOPs of forward + backward / median time)
      against the machine's own Conv3d throughput on the *same convolution shapes*: every convolution call of
      the step timed alone, forward + backward, on the faster of PyTorch's own path and the split (target >= 50%);
      and against one large well-shaped Conv3d (64->64, 3^3, 2 x 64 x 32^3, oneDNN) as the machine's peak;
  (d) the split step's top operators by self CPU time (torch.profiler);
  (e) options volbench does not apply by default, measured on the split step: channels_last_3d, and (not in
      --quick) bfloat16 autocast on the CPU.
The machine's load (1-minute load average per core) and this process's CPU share are printed; a figure taken
while other processes held the cores is flagged "busy".
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import CpuClock, machine_busy, quick_threads_parser  # noqa: E402
from metrics.efficiency import machine_load, measure_latency  # noqa: E402
from models import create_model, model_info  # noqa: E402
from utils.cpu_conv import apply_depth_split_convs, native_convs, slow_kernel  # noqa: E402

CONV_TYPES = (nn.Conv3d, nn.ConvTranspose3d)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = quick_threads_parser(__doc__.splitlines()[0],
                             "3 repeats (convolutions alone: 1 after a warm-up), no bf16 row (a few minutes on 2 cores)")
    p.add_argument("--models", nargs="+", default=["unet3d_xs", "unet3d_stride_xs", "dualbranch_01_unet_xs"])
    p.add_argument("--size", type=int, default=32, help="cubic patch edge in voxels (divisible by 16)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    return args


def alternate(fns: list[Callable[[], object]], repeats: int, timer: CpuClock, best: bool = False) -> list[float]:
    """Median (``best``: minimum) seconds of each function, called in turn ``repeats`` times after one untimed
    warm-up each. The minimum is the least disturbed figure when other processes come and go."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(timer.time(fn))
    timer.last_best = [min(t) for t in times]
    return [min(t) if best else statistics.median(t) for t in times]


def build(name: str, size: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded model, a batch-1 input and a label map for it."""
    info = model_info(name)
    channels = len(info.modalities) or 4
    torch.manual_seed(0)
    model = create_model(name, in_channels=channels, out_channels=4)
    x = torch.randn(1, channels, size, size, size)
    label = torch.randint(0, 4, (1, size, size, size))
    return model, x, label


def step_fn(model: nn.Module, x: torch.Tensor, label: torch.Tensor,
            autocast: bool = False) -> Callable[[], None]:
    """One training step: forward, cross-entropy, backward, AdamW step (lr 1e-6: the weights barely move)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
        with ctx:
            out = model(x)
        F.cross_entropy(out.float(), label).backward()
        opt.step()
    return step


def conv_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """(module, input shape) of every convolution call of one forward."""
    calls: list[tuple[nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: calls.append((m, tuple(a[0].shape))))
             for m in model.modules() if isinstance(m, CONV_TYPES)]
    with torch.no_grad(), native_convs():
        model.eval()(x)
    for h in hooks:
        h.remove()
    model.train()
    return calls


def slow_calls(calls: list[tuple[nn.Module, tuple[int, ...]]], split: bool) -> int:
    """How many of ``calls`` PyTorch runs on a slow native kernel (with the split: those it cannot reroute)."""
    count = 0
    for m, shape in calls:
        double_slow = slow_kernel(m, torch.empty(2, *shape[1:]))
        count += slow_kernel(m, torch.empty(shape)) and not (split and not double_slow and _splittable(m, shape))
    return count


def _splittable(m: nn.Module, shape: tuple[int, ...]) -> bool:
    from utils.cpu_conv import MIN_OUT_DEPTH, DepthSplitConvTranspose3d

    if isinstance(m, nn.ConvTranspose3d):
        return DepthSplitConvTranspose3d._splittable(m) and shape[2] >= MIN_OUT_DEPTH // 2  # type: ignore[arg-type]
    span = m.dilation[0] * (m.kernel_size[0] - 1) + 1
    return (shape[2] + 2 * m.padding[0] - span) // m.stride[0] + 1 >= MIN_OUT_DEPTH


def step_flops(model: nn.Module, x: torch.Tensor, label: torch.Tensor) -> float:
    """FlopCounterMode FLOPs of forward + backward (convolutions, transposed convolutions, matmuls)."""
    model.train()
    with native_convs(), FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x).float(), label).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def same_shape_conv_rate(calls: list[tuple[nn.Module, tuple[int, ...]]], repeats: int, timer: CpuClock
                         ) -> tuple[float, float]:
    """(FLOPs, seconds) of the step's convolutions, each timed alone (fwd + bwd, faster of plain and split)."""
    flops = seconds = 0.0
    for m, shape in calls:
        plain = copy.deepcopy(m)
        split = copy.deepcopy(m)
        apply_depth_split_convs(split)
        x = torch.randn(shape, requires_grad=True)

        def run(conv: nn.Module) -> Callable[[], None]:
            return lambda: conv(x).sum().backward()
        with native_convs(), FlopCounterMode(display=False) as counter:
            run(plain)()
        flops += counter.get_total_flops()
        seconds += min(alternate([run(plain), run(split)], repeats, timer))
    return flops, seconds


def peak_conv_rate(repeats: int, timer: CpuClock) -> float:
    """FLOP/s of one large Conv3d forward + backward (64->64, 3^3, batch 2, 32^3: oneDNN)."""
    conv = nn.Conv3d(64, 64, 3, padding=1, bias=False)
    x = torch.randn(2, 64, 32, 32, 32, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        conv(x).sum().backward()
    (t,) = alternate([lambda: conv(x).sum().backward()], repeats, timer)
    return counter.get_total_flops() / t


def top_ops(step: Callable[[], None], n: int = 8) -> list[tuple[str, float, float]]:
    """(operator, self CPU ms, share of the step) of the ``n`` costliest operators of one step."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [(e.key, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total) for e in events[:n]]


def bench_model(name: str, args: argparse.Namespace, timer: CpuClock) -> dict:
    plain, x, label = build(name, args.size)
    split = copy.deepcopy(plain)
    n_swapped = apply_depth_split_convs(split)
    calls = conv_calls(plain, x)
    t_plain, t_split = alternate([step_fn(plain, x, label), step_fn(split, x, label)], args.repeats, timer)
    b_plain, b_split = timer.last_best
    lat = {k: measure_latency(m, tuple(x.shape), device="cpu", warmup=2, runs=max(args.repeats, 5))
           for k, m in (("plain", plain), ("split", split))}
    flops = step_flops(plain, x, label)
    conv_flops, conv_s = same_shape_conv_rate(calls, 1 if args.quick else args.repeats, timer)
    return dict(name=name, swapped=n_swapped, calls=len(calls), slow_plain=slow_calls(calls, False),
                slow_split=slow_calls(calls, True), t_plain=t_plain, t_split=t_split, b_plain=b_plain, b_split=b_split, lat=lat, flops=flops,
                conv_flops=conv_flops, conv_s=conv_s, ops=top_ops(step_fn(split, x, label)),
                options=options(split, x, label, args, timer, t_split))


def options(split: nn.Module, x: torch.Tensor, label: torch.Tensor, args: argparse.Namespace, timer: CpuClock,
            t_split: float) -> dict[str, float]:
    """Split-step time ratio (option / default) of channels_last_3d and (full runs) bf16 autocast."""
    cl = copy.deepcopy(split).to(memory_format=torch.channels_last_3d)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    fns = [step_fn(split, x, label), step_fn(cl, x_cl, label)]
    if not args.quick:
        fns.append(step_fn(copy.deepcopy(split), x, label, autocast=True))
    base, *rest = alternate(fns, args.repeats, timer)
    keys = ["channels_last_3d", "bf16 autocast"][:len(rest)]
    return {k: t / base for k, t in zip(keys, rest)}


def report(rows: list[dict], peak: float, args: argparse.Namespace, loads: tuple[float, float],
           timer: CpuClock) -> None:
    share = timer.share()
    busy = machine_busy(loads, share)
    print(f"# bench_compute  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | cpu_count {os.cpu_count()} | torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}, oneDNN {torch.backends.mkldnn.is_available()}) | python "
          f"{platform.python_version()}")
    print(f"load per core before/after: {loads[0]:.2f}/{loads[1]:.2f}; CPU share while timing {share:.2f}"
          f"{'  ** BUSY: other processes held the cores; times are pessimistic **' if busy else '  (quiet)'}")
    print(f"input 1 x C x {args.size}^3, median of {args.repeats} alternating repeats\n")
    print("| model | conv calls | slow native (plain -> split) | train step s plain | split | speed-up | (best of: "
          "plain, split, speed-up) | latency ms plain | split | speed-up | latency cv plain/split |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lp, ls = r["lat"]["plain"], r["lat"]["split"]
        print(f"| {r['name']} | {r['calls']} | {r['slow_plain']} -> {r['slow_split']} | {r['t_plain']:.3f} | "
              f"{r['t_split']:.3f} | **{r['t_plain'] / r['t_split']:.2f}x** | {r['b_plain']:.3f}, {r['b_split']:.3f}, "
              f"{r['b_plain'] / r['b_split']:.2f}x | {lp['latency_ms_median']:.1f} | "
              f"{ls['latency_ms_median']:.1f} | **{lp['latency_ms_median'] / ls['latency_ms_median']:.2f}x** | "
              f"{100 * lp['latency_cv']:.1f}% / {100 * ls['latency_cv']:.1f}% |")
    print(f"\nmachine peak Conv3d (64->64, 3^3, 2x64x32^3, fwd+bwd): {peak / 1e9:.1f} GFLOP/s\n")
    print("| model | step GFLOP (fwd+bwd) | achieved GFLOP/s (split step) | same-shape convs alone GFLOP/s "
          "| achieved / same-shape | achieved / peak |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        achieved, same = r["flops"] / r["t_split"], r["conv_flops"] / r["conv_s"]
        print(f"| {r['name']} | {r['flops'] / 1e9:.2f} | {achieved / 1e9:.1f} | {same / 1e9:.1f} | "
              f"**{100 * achieved / same:.0f}%** | {100 * achieved / peak:.0f}% |")
    for r in rows:
        print(f"\n{r['name']} split step, top operators by self CPU time:")
        for key, ms, frac in r["ops"]:
            print(f"    {key:44s} {ms:9.1f} ms  {100 * frac:5.1f}%")
        print("    options (step time / default): " + ", ".join(f"{k} {v:.2f}" for k, v in r["options"].items()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    timer = CpuClock()
    before = machine_load()
    rows = [bench_model(name, args, timer) for name in args.models]
    peak = peak_conv_rate(args.repeats, timer)
    report(rows, peak, args, (before, machine_load()), timer)


if __name__ == "__main__":
    main()
