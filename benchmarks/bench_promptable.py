"""Benchmark: SAM-Med3D's interactive evaluation cost per click and its fine-tuning step, on the CPU.

Usage:
    python benchmarks/bench_promptable.py --quick   # minutes on 2 cores: encoder depth 2 for both parts
    python benchmarks/bench_promptable.py           # clicks: the full vit_b_ori encoder (depth 12); steps: depth 2
    options: --depth D (click part's encoder depth) --train_depth D --clicks N --whole_clicks M --steps R --threads N

Both parts build ``sam_med3d`` at its released width (128^3 window, patch 16, embed 768, 12 heads, window 14, neck
384, the released prompt encoder and decoder) with random weights (timing does not depend on the values); a
reduced ``depth`` keeps the released global-attention blocks below it (2, 5, 8, 11), else the last block.

(1) Seconds per evaluated click, one 128^3 window, batch 1, no_grad, eval mode:
  (E)  volbench's interactive evaluation, ``engine.tasks.interactive.click_masks`` on a 128^3 case (one window:
       every face is the volume's border): the window is encoded once per target and the embedding reused for
       ``--clicks`` N clicks (each decodes all clicks so far with the previous low-res logits);
       seconds per click = the whole call / N;
  (W)  the whole model per click: ``encode`` + ``decode`` of the same window for each of ``--whole_clicks`` M
       clicks; seconds per click = total / M.
  Also printed: one encode and the median decode alone, the ratio W / E, and both per-click figures computed from
  those two components (``encode / N + decode`` and ``encode + decode``: less sensitive to load changing between
  the timed calls).

(2) One prompt-free fine-tuning step (SAM-Med3D's loss, AdamW, forward + backward + optimiser step), batch 1,
    128^3 input, ``--train_depth`` blocks: unfrozen encoder (the reference), ``--freeze_encoder`` (no gradient,
    eval mode: ``engine.fine_tuning.freeze_encoder``), ``--gradient_checkpointing`` (each ViT block recomputed in
    the backward pass). Per configuration, after one warm-up step, the best of ``--steps`` step times, the peak
    RSS growth over a step (Linux: ``/proc/self/clear_refs`` then ``VmHWM``, minus the RSS before the step) and
    the bytes autograd saves for backward (distinct storages, parameters excluded: the CPU PAM of
    ``metrics.efficiency``).

The CPU share (process CPU seconds / (wall seconds x threads)) is printed: below ~0.8 other processes took the
cores and the timings are flagged "busy".
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import CpuClock, quick_threads_parser  # noqa: E402
from dataio.types import CachedCase, CropBox  # noqa: E402
from engine.fine_tuning import enable_gradient_checkpointing, freeze_encoder  # noqa: E402
from engine.inference import InferenceSettings  # noqa: E402
from engine.tasks.interactive import ClickPlan, click_masks  # noqa: E402
from losses import create_loss  # noqa: E402
from metrics.efficiency_common import storage_key  # noqa: E402
from metrics.efficiency_trackers import SavedTensorRecorder  # noqa: E402
from models.sam_med3d import build_sam_med3d  # noqa: E402

SIZE = 128
MB = 2 ** 20


def build(depth: int) -> nn.Module:
    """``sam_med3d`` at the released width with ``depth`` encoder blocks (module docstring), random weights."""
    torch.manual_seed(0)
    glob = tuple(i for i in (2, 5, 8, 11) if i < depth) or (depth - 1,)
    return build_sam_med3d(img_size=SIZE, depth=depth, global_attn_indexes=glob)


def phantom() -> tuple[CachedCase, np.ndarray]:
    """A 128^3 one-channel case with a bright ellipsoid (the click target) in noise."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"))
    target = (((grid - np.array([60, 70, 64])[:, None, None, None]) / np.array([18, 12, 15])[:, None, None, None])
              ** 2).sum(0) <= 1.0
    image = (rng.normal(0, 1, (1, SIZE, SIZE, SIZE)) + 2.0 * target).astype(np.float32)
    case = CachedCase("bench", "bench", image, target.astype(np.uint8), (1.0, 1.0, 1.0), np.eye(4), (SIZE,) * 3,
                      CropBox((0, 0, 0), (SIZE,) * 3), "internal", channel_names=("ct",))
    return case, target


def click_costs(depth: int, clicks: int, whole_clicks: int, clock: CpuClock) -> dict[str, float]:
    """Part (1): seconds per click with the embedding reused (E) and with the whole model per click (W)."""
    net = build(depth).eval()
    case, target = phantom()
    settings = InferenceSettings(modalities=("ct",), roi_size=(SIZE,) * 3, overlap=0.1, device=torch.device("cpu"))
    plan = ClickPlan(counts=(clicks,), mode="random", seed=0)
    image = torch.from_numpy(case.image)[None]
    with torch.no_grad():
        net.decode(net.encode(image), torch.zeros(1, 1, 3), torch.ones(1, 1, dtype=torch.int64), None)  # warm-up
        reuse = clock.time(lambda: click_masks(net, case, target, settings, plan, "lesion"))
        kept: dict[str, torch.Tensor] = {}
        encode = clock.time(lambda: kept.setdefault("embedding", net.encode(image)))
        embedding = kept["embedding"]
        points, labels = torch.tensor([[[60.0, 70.0, 64.0]]]), torch.ones(1, 1, dtype=torch.int64)
        decodes = [clock.time(lambda: net.decode(embedding, points, labels, None)) for _ in range(3)]

        def whole() -> None:
            low_res = None
            for k in range(whole_clicks):
                out = net.decode(net.encode(image), points.expand(1, k + 1, 3), labels.expand(1, k + 1), low_res)
                low_res = out.low_res

        whole_s = clock.time(whole)
    return dict(encode_s=encode, decode_s=float(np.median(decodes)), reuse_per_click_s=reuse / clicks,
                whole_per_click_s=whole_s / whole_clicks)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_over(fn: Callable[[], Any]) -> float | None:
    """MB of peak RSS growth during ``fn()`` (Linux; None where ``clear_refs`` cannot be written)."""
    gc.collect()
    base = rss_bytes()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        fn()
        return None
    fn()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    return (peak - base) / MB


def step_costs(depth: int, mode: str, steps: int, clock: CpuClock) -> dict[str, float | None]:
    """Part (2): one configuration's step time (best of ``steps``), peak RSS growth, bytes saved for backward."""
    net = build(depth).train()
    if mode == "frozen":
        freeze_encoder(net, "sam_med3d")
    elif mode == "checkpointing":
        enable_gradient_checkpointing(net, "sam_med3d")
    optimiser = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    loss_fn = create_loss("sam_med3d")
    torch.manual_seed(1)
    image = torch.randn(1, 1, SIZE, SIZE, SIZE)
    label = torch.zeros(1, SIZE, SIZE, SIZE, dtype=torch.int64)
    label[0, 40:80, 50:90, 44:84] = 1

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        logits, iou = net(image, with_iou=True)
        loss_fn(logits, label, iou).backward()
        optimiser.step()

    step()  # warm-up, allocates the optimiser state
    times = [clock.time(step) for _ in range(steps)]
    peak = peak_rss_over(step)
    recorder = SavedTensorRecorder({storage_key(p)[0] for p in net.parameters()})
    with recorder.recording():
        logits, iou = net(image, with_iou=True)
        loss_fn(logits, label, iou)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return dict(step_s=min(times), peak_rss_mb=peak, saved_mb=recorder.total / MB, trainable_m=trainable / 1e6)


def main(argv: list[str] | None = None) -> None:
    p = quick_threads_parser(__doc__.splitlines()[0], "encoder depth 2 in the click part too (minutes on 2 cores)")
    p.add_argument("--depth", type=int, default=12, help="click part: encoder blocks (default: 12, vit_b_ori)")
    p.add_argument("--train_depth", type=int, default=2, help="step part: encoder blocks (default: 2)")
    p.add_argument("--clicks", type=int, default=5, help="clicks per target, embedding reused (default: 5)")
    p.add_argument("--whole_clicks", type=int, default=2, help="clicks timed with the whole model (default: 2)")
    p.add_argument("--steps", type=int, default=2, help="timed fine-tuning steps per configuration (default: 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    depth = 2 if args.quick else args.depth
    clock = CpuClock()
    print(f"# bench_promptable {datetime.date.today()} {platform.machine()} {platform.processor() or ''} "
          f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    costs = click_costs(depth, args.clicks, args.whole_clicks, clock)
    print(f"\n(1) sam_med3d, 128^3 window, encoder depth {depth}{' (vit_b_ori)' if depth == 12 else ' (reduced)'}: "
          f"encode {costs['encode_s']:.2f} s, decode {costs['decode_s']:.3f} s")
    print("| mode | s / click | ratio to (E) |\n|---|---|---|")
    print(f"| (E) encode once per target, {args.clicks} clicks | {costs['reuse_per_click_s']:.2f} | 1.00 |")
    print(f"| (W) whole model per click | {costs['whole_per_click_s']:.2f} | "
          f"{costs['whole_per_click_s'] / costs['reuse_per_click_s']:.2f} |")
    reuse, whole = costs["encode_s"] / args.clicks + costs["decode_s"], costs["encode_s"] + costs["decode_s"]
    print(f"from the components (encode / N + decode, encode + decode): (E) {reuse:.2f}, (W) {whole:.2f}, "
          f"ratio {whole / reuse:.2f}")
    print(f"\n(2) fine-tuning step, 128^3, batch 1, encoder depth {args.train_depth}, SAM-Med3D loss, AdamW")
    print("| configuration | trainable M params | s / step | peak RSS growth MB | saved for backward MB |")
    print("|---|---|---|---|---|")
    for mode in ("unfrozen", "frozen", "checkpointing"):
        row = step_costs(args.train_depth, mode, args.steps, clock)
        peak = "n/a" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f}"
        print(f"| {mode} | {row['trainable_m']:.1f} | {row['step_s']:.2f} | {peak} | {row['saved_mb']:.0f} |")
    share = clock.share()
    print(f"\nCPU share {share:.2f}{' (busy: other processes took the cores)' if share < 0.8 else ''}, "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
