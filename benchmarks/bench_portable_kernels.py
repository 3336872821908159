"""What pinning portable CPU kernels costs: training-step time of ``unet3d_xs`` with ``--deterministic``'s AVX2 pin
against the machine's own kernels (AVX-512 where present), each in a fresh process, in ABBA order.

    python benchmarks/bench_portable_kernels.py [--steps 20] [--threads 2] [--rounds 2]

Each process builds ``unet3d_xs`` (seed 0), runs 3 warm-up steps and then ``--steps`` AdamW steps on a random batch of
2 x 4 x 64^3 under ``torch.use_deterministic_algorithms(True)``, and prints its median step time. The ratio pinned /
native is what ``--deterministic`` costs on this machine (1.0 on a machine whose best ISA is AVX2).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.portable_kernels import PORTABLE_KERNELS  # noqa: E402

STEP = """
import statistics, sys, time, torch
sys.path.insert(0, {root!r})
from models import create_model
torch.set_num_threads({threads}); torch.manual_seed(0); torch.use_deterministic_algorithms(True)
model = create_model("unet3d_xs", in_channels=4, out_channels=4)
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(2, 4, 64, 64, 64), torch.randint(0, 4, (2, 64, 64, 64))
times = []
for i in range({steps} + 3):
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if i >= 3: times.append(time.perf_counter() - t)
print(torch.backends.cpu.get_cpu_capability(), statistics.median(times))
"""


def run(pinned: bool, steps: int, threads: int) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_KERNELS}
    if pinned:
        env.update(PORTABLE_KERNELS)
    code = STEP.format(root=str(ROOT), threads=threads, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    capability, seconds = out.split()[-2:]
    return capability, float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each runs both settings twice)")
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    names: dict[bool, str] = {}
    for _ in range(args.rounds):
        for pinned in (False, True, True, False):
            names[pinned], seconds = run(pinned, args.steps, args.threads)
            times[pinned].append(seconds)
    native, pinned = statistics.median(times[False]), statistics.median(times[True])
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, unet3d_xs 2x4x64^3 train step")
    print(f"| kernels | capability | median step s |\n|---|---|---|\n| native | {names[False]} | {native:.3f} |\n"
          f"| pinned (--deterministic) | {names[True]} | {pinned:.3f} |")
    print(f"ratio pinned / native: {pinned / native:.2f}")


if __name__ == "__main__":
    main()
