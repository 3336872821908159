"""Benchmark: whole-case sliding-window evaluation, volbench's inference settings vs MONAI's defaults.

Usage:
    python benchmarks/bench_sliding_window.py --quick   # a few minutes on 2 cores: 96x96x64 case, 64^3 windows
    python benchmarks/bench_sliding_window.py           # one 240x240x155 case (BraTS size), 128^3 windows
    options: --base 8 (unet3d_xs width) --train_steps 30 --train_patch 32 --threads N --tol 0.01 --workdir DIR

One synthetic four-modality phantom (dataio.synthetic) goes through volbench's cache (z-score, crop to the
brain box). A small registry model (``unet3d_xs``, ``--base`` channels at the first level) is trained for a
few steps on patches of that case, so that its predictions are not trivial. Then, in one process, each
configuration predicts the case and is timed (wall and process CPU time):

  (R)  MONAI ``sliding_window_inference`` defaults (overlap 0.25, sw_batch_size 1, mode "constant", fp32)
       under ``torch.no_grad``, on the whole 240x240x155 volume as a MONAI tutorial evaluates it;
  (R') the same defaults on volbench's brain-cropped case (settings alone, same input);
  (V)  volbench: ``engine.inference.predict_logits`` with the settings ``experiment_runner`` builds (overlap
       ``--val_overlap`` default 0.1, Gaussian blending, sw_batch_size 1, fp16 autocast only on CUDA,
       ``torch.no_grad``) on the cropped case, pasted back into the full volume as the evaluation does;
  (V+) variants of (V): ``torch.inference_mode``, 2 and 4 windows per batch, channels-last-3d (1 and 2
       windows per batch), bf16 autocast (on a CPU without native bf16 only a one-window probe outside
       --quick); on CUDA every (V) row runs under fp16 autocast, as volbench's evaluation does.

"Equal Dice": every configuration's argmax prediction is scored against the phantom's label (WT = labels
> 0, and the mean over classes 1-3) and against (R)'s prediction; ``WT = (R)`` / ``WT = (V)`` say whether
its WT Dice is within ``--tol`` of (R)'s / (V)'s, ``bitwise = (V)`` whether its logits equal (V)'s exactly.
Numerical settings (grad mode, windows per batch, memory format, autocast) are judged against (V); the
window geometry (overlap, blending, crop) against (R). A briefly trained model is sensitive to where the
windows fall, so the geometry check is meaningful on the full-size case (with ``--quick`` the 30-step
model's WT Dice moves by tenths between window placements).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._workdir import run_in_workdir  # noqa: E402
from dataio.adapters import discover_cases  # noqa: E402
from dataio.cache import PreprocessedCache  # noqa: E402
from dataio.sampling import PatchDataset  # noqa: E402
from dataio.synthetic import ensure_synthetic_brats  # noqa: E402
from dataio.types import MODALITY_ORDER  # noqa: E402
from engine.inference import InferenceSettings, case_tensor  # noqa: E402
from engine.inference import predict_logits  # noqa: E402
import engine.tasks  # noqa: E402,F401  (sets create_model's default out_channels per model kind)
from models import create_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 96x96x64 case and 64^3 windows (minutes on 2 cores)")
    p.add_argument("--size", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                   help="phantom size in voxels (default 240 240 155; --quick 96 96 64)")
    p.add_argument("--roi", type=int, default=None, help="cubic window = training patch edge (default 128; --quick 64)")
    p.add_argument("--base", type=int, default=8, help="unet3d_xs first-level width (registry default 16)")
    p.add_argument("--train_steps", type=int, default=30, help="brief training steps (batch 2) before evaluating")
    p.add_argument("--train_patch", type=int, default=32, help="cubic training patch edge in voxels")
    p.add_argument("--val_overlap", type=float, default=0.1, help="volbench's --val_overlap (its default: 0.1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--tol", type=float, default=0.01, help="equal-Dice tolerance on WT Dice (absolute)")
    p.add_argument("--workdir", type=Path, default=None, help="keep data and cache here (default: temp dir)")
    args = p.parse_args(argv)
    args.size = tuple(args.size or ((96, 96, 64) if args.quick else (240, 240, 155)))
    args.roi = args.roi or (64 if args.quick else 128)
    return args


def windows(shape: tuple[int, ...], roi: int, overlap: float) -> int:
    """Number of windows MONAI's sliding_window_inference visits (its scan interval and start rule)."""
    n = 1
    for s in shape:
        if s <= roi:
            continue
        interval = max(int(roi * (1 - overlap)), 1)
        n *= len({min(k * interval, s - roi) for k in range(math.ceil(s / interval))})
    return n


def train_briefly(model: nn.Module, cases: list, patch: int, steps: int, lr: float = 1e-2) -> None:
    """A few Adam steps of volbench's standard Dice + CE loss on ``patch``^3 patches (batch 2, half of them
    centred on foreground, augmentation off)."""
    from losses import create_loss

    ds = PatchDataset(cases, MODALITY_ORDER, (patch,) * 3, samples_per_volume=2 * steps, foreground_fraction=0.5,
                      augment=False, seed=0)
    loss_fn = create_loss("standard")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = [ds[2 * step], ds[2 * step + 1]]
        loss = loss_fn(model(torch.stack([b["image"] for b in batch])), torch.stack([b["label"] for b in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def dice(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(WT Dice of labels > 0, mean Dice over classes 1-3 present in either map); NaN-free: empty-empty = 1."""
    def d(p: np.ndarray, g: np.ndarray) -> float:
        s = p.sum() + g.sum()
        return 1.0 if s == 0 else 2.0 * float(np.logical_and(p, g).sum()) / float(s)
    return d(pred > 0, ref > 0), float(np.mean([d(pred == c, ref == c) for c in (1, 2, 3)]))


def sliding(model: nn.Module, x: torch.Tensor, roi: int, *, overlap: float, sw_batch: int, mode: str,
            device: torch.device, autocast: torch.dtype | None = None, grad: Callable[[], Any] = torch.no_grad,
            channels_last: bool = False) -> torch.Tensor:
    """MONAI ``sliding_window_inference`` of one (C, *spatial) image with the given settings: float32 CPU logits."""
    from monai.inferers import sliding_window_inference

    predictor: Callable[[torch.Tensor], torch.Tensor] = model
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
        predictor = lambda w: model(w.contiguous(memory_format=torch.channels_last_3d))  # noqa: E731
    cast = torch.autocast(device_type=device.type, dtype=autocast) if autocast is not None else nullcontext()
    try:
        with grad(), cast:
            out = sliding_window_inference(x[None].to(device), roi_size=(roi,) * 3, sw_batch_size=sw_batch,
                                           predictor=predictor, overlap=overlap, mode=mode)[0]
    finally:
        model.to(memory_format=torch.contiguous_format)
    return out.float().cpu()


def configurations(model: nn.Module, case: Any, args: argparse.Namespace, device: torch.device
                   ) -> list[tuple[str, dict[str, Any], Callable[[], torch.Tensor]]]:
    """(name, settings shown in the table, run() -> logits over the full volume or the crop)."""
    crop = case_tensor(case, MODALITY_ORDER)
    full = torch.zeros((crop.shape[0], *case.original_shape))
    full[(slice(None),) + case.crop.slices()] = crop
    settings = InferenceSettings(modalities=MODALITY_ORDER, roi_size=(args.roi,) * 3, overlap=args.val_overlap,
                                 device=device, amp=True)  # as experiment_runner.inference_settings (amp default on)
    monai = dict(overlap=0.25, sw_batch=1, mode="constant", device=device)
    ours = dict(overlap=args.val_overlap, mode="gaussian", device=device)
    half = torch.float16 if device.type == "cuda" else None
    rows: list[tuple[str, dict[str, Any], Callable[[], torch.Tensor]]] = [
        ("(R) MONAI defaults, full volume", dict(monai, input="full"), lambda: sliding(model, full, args.roi, **monai)),
        ("(R') MONAI defaults, volbench crop", dict(monai, input="crop"),
         lambda: sliding(model, crop, args.roi, **monai)),
        ("(V) volbench predict_logits", dict(ours, sw_batch=1, input="crop", autocast=half),
         lambda: predict_logits(model, crop, settings)),
        ("(V+) inference_mode", dict(ours, sw_batch=1, input="crop", grad="inference_mode", autocast=half),
         lambda: sliding(model, crop, args.roi, sw_batch=1, autocast=half, grad=torch.inference_mode, **ours)),
    ]
    for sw in (2, 4):
        rows.append((f"(V+) {sw} windows per batch", dict(ours, sw_batch=sw, input="crop", autocast=half),
                     lambda sw=sw: sliding(model, crop, args.roi, sw_batch=sw, autocast=half, **ours)))
    for sw in (1, 2):
        rows.append((f"(V+) channels-last-3d, {sw} per batch",
                     dict(ours, sw_batch=sw, input="crop", channels_last=True, autocast=half),
                     lambda sw=sw: sliding(model, crop, args.roi, sw_batch=sw, autocast=half, channels_last=True,
                                           **ours)))
    if args.quick or device.type == "cuda":  # without native bf16 the CPU emulates it (~20x slower): probed instead
        rows.append(("(V+) bf16 autocast", dict(ours, sw_batch=1, input="crop", autocast=torch.bfloat16),
                     lambda: sliding(model, crop, args.roi, sw_batch=1, autocast=torch.bfloat16, **ours)))
    return rows


def bf16_probe(model: nn.Module, roi: int, device: torch.device) -> str:
    """Wall time of one ``roi``^3 window forward in fp32 and under bf16 autocast (one line of text)."""
    x = torch.randn(1, len(MODALITY_ORDER), roi, roi, roi, device=device)
    times = []
    for cast in (nullcontext(), torch.autocast(device_type=device.type, dtype=torch.bfloat16)):
        with torch.no_grad(), cast:
            model(x)  # warm-up
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return (f"bf16 autocast probe, one {roi}^3 window at batch 1: fp32 {times[0]:.2f} s, bf16 {times[1]:.2f} s "
            f"({times[0] / times[1]:.2f}x); the whole-case bf16 row runs with --quick or on CUDA")


def run(args: argparse.Namespace, workdir: Path) -> None:
    from dataio.preprocess import paste_back

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    files = discover_cases(ensure_synthetic_brats(workdir / "data", 1, args.size, 0), "synthetic")
    case = PreprocessedCache(workdir / "cache").get_or_create(
        files, "bench_sliding_window", {"clip_percentiles": [0.5, 99.5]}, progress=False)[0]
    model = create_model("unet3d_xs", base=args.base)
    t0 = time.perf_counter()
    train_briefly(model, [case], args.train_patch, args.train_steps)
    train_s = time.perf_counter() - t0
    model.to(device).eval()
    reference = paste_back(np.asarray(case.label), case.crop, case.original_shape, fill=0)
    rows = []
    for name, shown, fn in configurations(model, case, args, device):
        load = os.getloadavg()[0]
        w0, c0 = time.perf_counter(), time.process_time()
        logits = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        on_crop = tuple(logits.shape[1:]) != tuple(case.original_shape)
        labels = logits.argmax(0).numpy().astype(np.uint8)
        labels = paste_back(labels, case.crop, case.original_shape, fill=0) if on_crop else labels
        rows.append(dict(name=name, shown=shown, wall=wall, cpu=cpu, load=load, labels=labels,
                         logits=logits if name.startswith("(V)") else None, raw=logits,
                         n_win=windows(case.image.shape[1:] if on_crop else case.original_shape, args.roi,
                                       shown["overlap"])))
        print(f"  {name}: {wall:.1f} s", flush=True)
    probe = None if args.quick or device.type == "cuda" else bf16_probe(model, min(args.roi, 64), device)
    header(args, case, device, train_s)
    table(rows, reference, args.tol)
    if probe:
        print(probe)


def header(args: argparse.Namespace, case: Any, device: torch.device, train_s: float) -> None:
    import monai

    print(f"# bench_sliding_window  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | cpu_count {os.cpu_count()}"
          f" | device {device} | torch {torch.__version__} (threads {torch.get_num_threads()})"
          f" | monai {monai.__version__}"
          f" | python {platform.python_version()}")
    print(f"case: synthetic phantom {tuple(case.original_shape)}, brain crop {tuple(case.image.shape[1:])}; windows "
          f"{args.roi}^3; model unet3d_xs(base={args.base}), trained {args.train_steps} steps of batch 2 at "
          f"{args.train_patch}^3 ({train_s:.0f} s)")


def table(rows: list[dict[str, Any]], reference: np.ndarray, tol: float) -> None:
    """Print timings, settings and the equal-Dice check against (R)."""
    ref_row = rows[0]
    v_logits = next(r["logits"] for r in rows if r["logits"] is not None)
    ref_wt, _ = dice(ref_row["labels"], reference)
    v_wt, _ = dice(next(r for r in rows if r["logits"] is not None)["labels"], reference)
    busy = max(r["load"] for r in rows) > torch.get_num_threads() + 0.5
    loads = ", ".join(f"{r['load']:.2f}" for r in rows)
    print(f"load average (1 min) before each configuration: {loads}"
          f"{'  -> BUSY: other processes shared the cores; timings are pessimistic' if busy else '  (quiet)'}")
    print()
    print("| configuration | input | overlap | windows | per batch | blend | autocast | grad mode | wall s | CPU s |"
          " speed-up vs (R) | WT Dice | mean Dice | Dice vs (R) pred | WT = (R) | WT = (V) | bitwise = (V) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sh = r["shown"]
        wt, mean = dice(r["labels"], reference)
        _, agree = dice(r["labels"], ref_row["labels"])
        same = tuple(r["raw"].shape) == tuple(v_logits.shape) and torch.equal(r["raw"], v_logits)
        cast = {None: "none", torch.float16: "fp16", torch.bfloat16: "bf16"}[sh.get("autocast")]
        cast += " (channels-last)" if sh.get("channels_last") else ""
        print(f"| {r['name']} | {sh['input']} | {sh['overlap']} | {r['n_win']} | {sh['sw_batch']} | {sh['mode']} | "
              f"{cast} | {sh.get('grad', 'no_grad')} | {r['wall']:.1f} | {r['cpu']:.1f} | "
              f"{ref_row['wall'] / r['wall']:.2f} | {wt:.4f} | {mean:.4f} | {agree:.4f} | "
              f"{'yes' if abs(wt - ref_wt) <= tol else 'NO'} | {'yes' if abs(wt - v_wt) <= tol else 'NO'} | "
              f"{'yes' if same else 'no'} |")
    v = next(r for r in rows if r["name"].startswith("(V)"))
    print()
    print(f"ratio (R)/(V): {ref_row['wall'] / v['wall']:.2f}x by wall time, "
          f"{ref_row['cpu'] / v['cpu']:.2f}x by CPU time "
          f"(WT Dice {dice(v['labels'], reference)[0]:.4f} vs {ref_wt:.4f}, tolerance {tol})")


def main(argv: list[str] | None = None) -> None:
    run_in_workdir(run, parse_args(argv))


if __name__ == "__main__":
    main()
