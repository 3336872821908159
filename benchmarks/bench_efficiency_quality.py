"""Benchmark: quality of volbench's efficiency figures (latency, CPU PAM, FLOPs, CUDA PAM), each beside a reference.

Usage: python benchmarks/bench_efficiency_quality.py [--quick] [--threads 2] [--size 64]

In one run:
  1. Latency at batch 1 (32^3) of the README's three models: the sweep's former measurement (PyTorch's own
     convolutions, mean of 10 after 3 warm-ups) beside today's ``measure_latency`` (depth-split convolutions,
     garbage collector paused, threads pinned) with its median, coefficient of variation (target < 5% on an
     idle machine), load per core, CPU share and flag; and how many convolution calls PyTorch sends to its
     slow native kernel (which explains most of the spread between the models).
  2. CPU PAM (bytes saved for backward; peak live activations) beside the measured RSS growth of the process
     (peak resident set over a train step via /proc/self/clear_refs + VmHWM; RSS with the graph alive after
     the forward; peak over a no_grad forward) for 3 models at ``--size``^3 (glibc's mmap threshold fixed at
     64 KiB so that freed tensors leave the RSS).
  3. FLOPs of one model per registry family (its smallest size in its tiny test configuration, batch 1, on the
     meta device): thop (2 x MACs) beside ``FlopCounterMode``, with the difference split into its causes:
     transposed convolutions (thop x stride^3), matmuls outside ``nn.Linear`` (attention: thop misses them),
     and the norm/activation/pooling/upsampling operations that thop counts and FlopCounterMode does not.
  4. CUDA: allocator-peak PAM beside ``torch.cuda.max_memory_allocated`` of a plain training step; says
     "skipped" without CUDA.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataio.types import MODALITY_ORDER  # noqa: E402
from benchmarks._timing import quick_threads_parser  # noqa: E402
from engine.model_setup import setup_model  # noqa: E402
from metrics.efficiency import MB, machine_load, measure_latency, measure_pam  # noqa: E402
from metrics.efficiency_memory import cuda_plain_step_peak_mb  # noqa: E402
from models import create_model, list_models, model_info  # noqa: E402
from utils.cpu_conv import apply_depth_split_convs, native_convs, slow_kernel  # noqa: E402

README_MODELS = ("unet3d_stride_xs", "unet3d_xs", "dualbranch_01_unet_xs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = quick_threads_parser(__doc__.splitlines()[0], "fewer latency runs, PAM at 48^3 (minutes on 2 cores)",
                             "torch intra-op threads for the latency part")
    p.add_argument("--size", type=int, default=64, help="cubic input edge of the PAM part (divisible by 16)")
    args = p.parse_args(argv)
    if args.quick:
        args.size = min(args.size, 48)
    return args


def readme_model(name: str, **kwargs: Any) -> tuple[nn.Module, tuple[int, ...]]:
    channels = len(model_info(name).modalities)
    torch.manual_seed(0)
    return create_model(name, in_channels=channels, out_channels=4, **kwargs), (1, channels, 32, 32, 32)


def slow_conv_calls(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(calls on a slow native kernel, all conv calls) of one batch-1 forward with PyTorch's own choice."""
    seen: list[bool] = []

    def hook(m: nn.Module, args: tuple) -> None:
        seen.append(slow_kernel(m, args[0]))
    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d,
                                                                                           nn.ConvTranspose3d))]
    with torch.no_grad(), native_convs():
        model.eval()(torch.randn(shape))
    for h in handles:
        h.remove()
    return sum(seen), len(seen)


def latency_part(args: argparse.Namespace) -> None:
    runs = 10 if args.quick else 20
    print(f"\n## 1. latency at batch 1, 32^3, {args.threads} threads ({runs} runs; former: PyTorch's convs, mean of 10)\n")
    print("| model | slow conv calls | former mean ms | former cv | now mean ms | now median ms | now cv "
          "| load/core | CPU share | flag | former / now |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in README_MODELS:
        model, shape = readme_model(name)
        slow, calls = slow_conv_calls(model, shape)
        split = copy.deepcopy(model)
        apply_depth_split_convs(split)
        with native_convs():
            old = measure_latency(model, shape, device="cpu", warmup=3, runs=10, threads=args.threads)
        new = measure_latency(split, shape, device="cpu", warmup=3, runs=runs, threads=args.threads)
        print(f"| {name} | {slow}/{calls} | {old['latency_ms']:.1f} | {100 * old['latency_cv']:.1f}% | "
              f"{new['latency_ms']:.1f} | {new['latency_ms_median']:.1f} | {100 * new['latency_cv']:.1f}% | "
              f"{new['latency_load']:.2f} | {new['latency_cpu_share']:.2f} | {new['latency_flag'] or 'clean'} | "
              f"{old['latency_ms'] / new['latency_ms']:.2f}x |")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) of this process to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_growths(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """MB of RSS growth: peak over a train step (forward + mean + backward), with the graph alive after the
    forward, and peak over a no_grad eval forward (each after one warm-up of the same kind)."""
    out: dict[str, float] = {}
    model.train()
    for key in ("warm", "step"):
        gc.collect()
        base = rss_bytes()
        reset_peak_rss()
        model(x).float().mean().backward()
        if key == "step":
            out["train_peak"] = (peak_rss_bytes() - base) / MB
        model.zero_grad(set_to_none=False)  # gradient buffers exist before the measured step, as in a run
    gc.collect()
    base = rss_bytes()
    loss = model(x).float().mean()
    out["graph_alive"] = (rss_bytes() - base) / MB
    del loss
    model.eval()
    with torch.no_grad():
        model(x)
        gc.collect()
        base = rss_bytes()
        reset_peak_rss()
        model(x)
        out["infer_peak"] = (peak_rss_bytes() - base) / MB
    return out


def pam_part(args: argparse.Namespace) -> None:
    try:
        fixed = ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024) == 1  # M_MMAP_THRESHOLD
    except OSError:
        fixed = False
    s = args.size
    print(f"\n## 2. CPU PAM vs RSS growth, input {s}^3 (mmap threshold fixed: {fixed}; peak RSS reset: "
          f"{reset_peak_rss()})\n")
    print("| model | PAM train MB | RSS graph alive MB | PAM/RSS | peak RSS train step MB | PAM/peak "
          "| PAM infer MB | peak RSS infer MB | PAM/peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    cases = [("unet3d_xs", {}), ("dualbranch_01_unet_xs", {}),
             ("unetr", dict(img_size=(s, s, s), hidden_size=96, mlp_dim=192, num_heads=4, feature_size=8))]
    for name, kwargs in cases:
        channels = len(model_info(name).modalities)
        torch.manual_seed(0)
        model = create_model(name, in_channels=channels, out_channels=4, **kwargs)
        shape = (1, channels, s, s, s)
        train, _ = measure_pam(model, shape, device="cpu", mode="train", runs=1)
        infer, _ = measure_pam(model, shape, device="cpu", mode="infer", runs=1)
        with native_convs():
            r = rss_growths(model, torch.randn(shape))
        print(f"| {name} | {train:.1f} | {r['graph_alive']:.1f} | {train / r['graph_alive']:.2f} | "
              f"{r['train_peak']:.1f} | {train / r['train_peak']:.2f} | {infer:.1f} | {r['infer_peak']:.1f} | "
              f"{infer / r['infer_peak']:.2f} |")


ELEMENTWISE = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.ReLU, nn.LeakyReLU, nn.PReLU,
               nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softmax, nn.Hardswish, nn.ReLU6, nn.ELU, nn.Tanh,
               nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
               nn.Upsample, nn.Dropout)


def thop_by_kind(model: nn.Module, x: torch.Tensor) -> dict[str, float] | str:
    """thop FLOPs (2 x MACs) by module kind: conv, conv_transpose (with its stride^3 excess), linear, elementwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import importlib

            import thop

            rules = importlib.import_module("thop.profile").register_hooks  # exact module classes thop counts
            net = copy.deepcopy(model)
            skipped = [0.0]

            def skipped_conv(m: nn.Module, a: tuple, o: torch.Tensor) -> None:
                k = float(torch.tensor(m.kernel_size).prod())
                if isinstance(m, nn.modules.conv._ConvTransposeNd):
                    skipped[0] += 2.0 * a[0].numel() * m.out_channels / m.groups * k
                else:
                    skipped[0] += 2.0 * o.numel() * m.in_channels / m.groups * k
            out_numel: dict[nn.Module, int] = {}
            hooks = [m.register_forward_hook(lambda m, a, o: out_numel.__setitem__(m, out_numel.get(m, 0) + o.numel()))
                     for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.bias is not None]
            hooks += [m.register_forward_hook(skipped_conv) for m in net.modules()
                      if isinstance(m, nn.modules.conv._ConvNd) and type(m) not in rules]
            total, _, layers = thop.profile(net, inputs=(x,), verbose=False, ret_layer_info=True)
            for h in hooks:
                h.remove()
    except Exception as err:  # noqa: BLE001 - report the failure in the table
        return f"thop failed: {type(err).__name__}"
    kinds = dict(conv=0.0, conv_transpose=0.0, conv_transpose_excess=0.0, bias=0.0, linear=0.0, elementwise=0.0,
                 other=0.0)

    def walk(prefix: str, tree: dict) -> None:
        for name, (ops, _, children) in tree.items():
            module = net.get_submodule(prefix + name)
            if children:
                walk(prefix + name + ".", children)
                continue
            ops = 2.0 * float(ops)
            bias = 2.0 * out_numel.get(module, 0)  # thop adds one MAC per output element for a bias
            kinds["bias"] += bias
            if isinstance(module, nn.modules.conv._ConvTransposeNd):  # thop: output size x in x k^3
                kinds["conv_transpose"] += ops
                kinds["conv_transpose_excess"] += (ops - bias) * (1 - 1 / float(torch.tensor(module.stride).prod()))
            elif isinstance(module, nn.modules.conv._ConvNd):
                kinds["conv"] += ops
            elif isinstance(module, nn.Linear):
                kinds["linear"] += ops
            elif isinstance(module, ELEMENTWISE):
                kinds["elementwise"] += ops
            else:
                kinds["other"] += ops
    walk("", layers)
    kinds["total"], kinds["skipped"] = 2.0 * float(total), skipped[0]
    return kinds


def torch_by_op(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """FlopCounterMode FLOPs split into convolutions, nn.Linear matmuls and the other (functional) matmuls."""
    linear_shapes = []
    hooks = [m.register_forward_hook(lambda m, a, o: linear_shapes.append(2.0 * a[0].numel() * m.out_features))
             for m in model.modules() if isinstance(m, nn.Linear)]
    with FlopCounterMode(display=False) as counter:
        model(x)
    for h in hooks:
        h.remove()
    by_op = {str(k): float(v) for k, v in counter.get_flop_counts()["Global"].items()}
    conv = sum(v for k, v in by_op.items() if "convolution" in k)
    total = float(counter.get_total_flops())
    linear = min(sum(linear_shapes), total - conv)
    return dict(total=total, conv=conv, linear=linear, other_matmul=total - conv - linear)


def count_both(setup: Any, shape: tuple[int, ...]) -> tuple[dict[str, float], dict[str, float] | str]:
    """Both counters on a meta build, or on a CPU build where the meta device fails (SwinUNETR's ``.item()``
    while building, DetSeg3D's ``nonzero`` in the forward)."""
    for device in ("meta", "cpu"):
        torch.manual_seed(0)
        try:
            with torch.device(device):
                model = setup.build().eval()
            x = torch.randn(shape, device=device)
            with torch.no_grad(), native_convs():
                return torch_by_op(model, x), thop_by_kind(model, x)
        except (RuntimeError, NotImplementedError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def family_models() -> list[tuple[str, str]]:
    """(family, smallest model) of every registry family, plus swin_unetr beside unetr."""
    by_family: dict[str, list[str]] = {}
    for name in list_models():
        by_family.setdefault(model_info(name).family, []).append(name)
    order = {"xs": 0, "s": 1, "m": 2, "l": 3}
    picks = [(f, min(names, key=lambda n: (order.get(n.rsplit("_", 1)[-1], 0), len(n), n)))
             for f, names in by_family.items()]
    extra = [("monai_transformers", n) for n in ("unetr", "swin_unetr") if n not in {p for _, p in picks}]
    return sorted(picks + extra)


def flops_part() -> None:
    print("\n## 3. forward FLOPs at batch 1 (tiny test configuration; meta device, else CPU): thop vs FlopCounterMode\n")
    print("| family | model | input | torch GFLOP | thop GFLOP | thop/torch | thop convT excess | thop elementwise "
          "| thop bias | matmuls thop misses | conv subclasses thop skips | explained thop/torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for family, name in family_models():
        info = model_info(name)
        try:
            setup = setup_model(name, available_modalities=MODALITY_ORDER, n_classes=1 if info.task != "segmentation"
                                else 4, requested_patch=info.test_patch_size, data_extent=(128, 128, 128),
                                overrides=dict(info.tiny_kwargs), cpu_conv=False)
            shape = setup.efficiency_input
            t, h = count_both(setup, shape)
        except Exception as err:  # noqa: BLE001 - one model's failure is a row, not the end
            print(f"| {family} | {name} | - | n/a: {type(err).__name__}: {str(err)[:60]} | | | | | | | | |")
            continue
        if isinstance(h, str):
            print(f"| {family} | {name} | {'x'.join(map(str, shape))} | {t['total'] / 1e9:.3f} | {h} | | | | | | | |")
            continue
        explained = (h["total"] - h["conv_transpose_excess"] - h["bias"] - h["elementwise"] - h["other"]
                     + t["other_matmul"] + h["skipped"])
        print(f"| {family} | {name} | {'x'.join(map(str, shape))} | {t['total'] / 1e9:.3f} | {h['total'] / 1e9:.3f} "
              f"| {h['total'] / t['total']:.3f} | {h['conv_transpose_excess'] / 1e9:+.3f} | "
              f"{(h['elementwise'] + h['other']) / 1e9:+.3f} | {h['bias'] / 1e9:+.3f} | {-t['other_matmul'] / 1e9:+.3f} | {-h['skipped'] / 1e9:+.3f} | "
              f"{explained / t['total']:.3f} |")
    print("\nexplained thop/torch = (thop - its convT excess - its bias adds - its elementwise/other ops + the matmuls "
          "it misses + the conv subclasses it skips) / torch: 1.000 when these five causes account for the whole "
          "difference. thop finds its rules by exact class, so a subclass of nn.Conv3d (e.g. OutConv3D) counts 0.")


def cuda_part() -> None:
    print("\n## 4. CUDA allocator-peak PAM vs torch.cuda.max_memory_allocated of a plain training step\n")
    if not torch.cuda.is_available():
        print("skipped: CUDA is not available on this machine (tests/test_efficiency_quality.py's CUDA test is "
              "skipped likewise)")
        return
    print("| model | input | PAM train MB (volbench) | plain step peak - before MB | ratio |")
    print("|---|---|---|---|---|")
    for name, size in (("unet3d_xs", 64), ("dualbranch_01_unet_xs", 64)):
        model, _ = readme_model(name)
        model = model.cuda()
        shape = (1, len(model_info(name).modalities), size, size, size)
        pam, _ = measure_pam(model, shape, device="cuda", mode="train", runs=3)
        plain = cuda_plain_step_peak_mb(model, shape)
        print(f"| {name} | {size}^3 | {pam:.1f} | {plain:.1f} | {pam / plain:.3f} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    before = machine_load()
    print(f"# bench_efficiency_quality  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | cpu_count {os.cpu_count()} | torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}) | python {platform.python_version()} | load per core {before:.2f}")
    latency_part(args)
    pam_part(args)
    flops_part()
    cuda_part()
    print(f"\nload per core at the end: {machine_load():.2f}")


if __name__ == "__main__":
    main()
