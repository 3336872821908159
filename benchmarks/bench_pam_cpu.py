"""CPU PAM and FLOP counters checked side by side, in one run.

1. MONAI UNet (16..256, 2 residual units) at 64^3: volbench's CPU train PAM (bytes saved for
   backward) beside the process RSS growth over a train-mode forward with its graph alive (RSS from
   /proc/self/statm), and their ratio, for the first (cold) and second (warm) forward. glibc's mmap
   threshold is fixed at 64 KiB so that freed tensors leave the RSS (its dynamic threshold otherwise
   keeps freed memory in the heap and inflates the growth).
2. FlopCounterMode vs thop (2 x MACs) for ``unet3d_xs`` at 128^3 and UNETR at 96^3 (counted on the
   meta device: shapes only, no arithmetic), with the ratio.

Usage: ``python benchmarks/bench_pam_cpu.py [--size 64]``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import os
import platform
import sys
from pathlib import Path

import torch
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metrics.efficiency import MB, count_flops, measure_pam  # noqa: E402
import engine.tasks  # noqa: E402,F401  (sets create_model's default out_channels per model kind)
from models import create_model  # noqa: E402


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def return_freed_memory_to_os() -> bool:
    """glibc only: serve every allocation >= 64 KiB by mmap, so freed tensors leave the RSS at once."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024) == 1  # -3 = M_MMAP_THRESHOLD
    except OSError:
        return False


def forward_rss_growth(model: torch.nn.Module, x: torch.Tensor) -> float:
    """RSS growth in MB over one train-mode forward, with the graph (saved tensors) still alive."""
    gc.collect()
    before = rss_bytes()
    out = model(x).float().mean()
    growth = (rss_bytes() - before) / MB
    del out
    gc.collect()
    return growth


def pam_vs_rss(size: int) -> None:
    fixed_threshold = return_freed_memory_to_os()
    torch.manual_seed(0)
    model = UNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(16, 32, 64, 128, 256),
                 strides=(2, 2, 2, 2), num_res_units=2).train()
    x = torch.randn(1, 4, size, size, size)
    cold = forward_rss_growth(model, x)  # includes one-time set-up (oneDNN primitives, thread pools)
    warm = forward_rss_growth(model, x)
    shape = (1, 4, size, size, size)
    pam, _ = measure_pam(model, shape, device="cpu", mode="train", runs=1)
    infer, _ = measure_pam(model, shape, device="cpu", mode="infer", runs=1)
    print(f"\n[1] MONAI UNet(16..256, 2 res units), train mode, input 1x4x{size}^3 "
          f"(glibc mmap threshold 64 KiB: {'set' if fixed_threshold else 'NOT set, RSS keeps freed memory'})")
    print(f"    volbench CPU train PAM (saved for backward)   : {pam:8.1f} MB")
    print(f"    RSS growth over the 1st forward (cold)        : {cold:8.1f} MB   PAM/RSS = {pam / cold:.2f}")
    print(f"    RSS growth over the 2nd forward (warm)        : {warm:8.1f} MB   PAM/RSS = {pam / warm:.2f}")
    print(f"    volbench CPU infer PAM (peak live activations): {infer:8.1f} MB")


def flops_side_by_side() -> None:
    cases = [("unet3d_xs", dict(), (1, 4, 128, 128, 128)),
             ("unetr", dict(img_size=(96, 96, 96)), (1, 4, 96, 96, 96)),
             ("unetr (tiny: hidden 32, 2 heads, feature 4)",
              dict(img_size=(32, 32, 32), hidden_size=32, mlp_dim=64, num_heads=2, feature_size=4), (1, 4, 32, 32, 32))]
    print("\n[2] forward FLOPs at batch 1: torch FlopCounterMode vs thop (2 x MACs)")
    print(f"    {'model':46s} {'input':16s} {'torch GFLOP':>12s} {'thop GFLOP':>11s} {'thop/torch':>10s}")
    for label, kwargs, shape in cases:
        model = create_model(label.split()[0], **kwargs)
        f = count_flops(model, shape, device="meta")
        print(f"    {label:46s} {f['flops_input']:16s} {f['flops_torch'] / 1e9:12.3f} {f['flops_thop'] / 1e9:11.3f} "
              f"{f['flops_thop'] / f['flops_torch']:10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="cubic input size for part 1 (divisible by 16)")
    args = parser.parse_args()
    print(f"bench_pam_cpu  {datetime.datetime.now().isoformat(timespec='seconds')}  {platform.node()}  "
          f"{platform.processor() or platform.machine()}  cpus={os.cpu_count()} threads={torch.get_num_threads()}  "
          f"torch {torch.__version__}  python {platform.python_version()}")
    pam_vs_rss(args.size)
    flops_side_by_side()


if __name__ == "__main__":
    main()
