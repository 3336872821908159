"""Benchmark: volbench's trainer and whole job against the bare model compute, side by side in one run.

Usage: python benchmarks/bench_runner_overhead.py [--quick] [--threads 2] [--steps 8] [--repeats 5]

Part 1, runner overhead per step: training steps per second of ``engine.trainer.train_one_epoch`` (the
task's loss, gradient clipping, finite check, progress bar, hooks, loss bookkeeping) against a bare PyTorch
loop doing the same maths (forward, the same loss object, backward, ``clip_grad_norm_`` 12, AdamW step,
``zero_grad``) on copies of the same model over the same in-memory batches; epochs alternate between the two
and the median epoch counts (target: trainer / bare >= 0.95). Models: ``unet3d_xs`` (32^3, as built by
``ModelSetup``, i.e. with the batch-1 CPU depth split) and UNETR in its tiny test configuration (hidden 32).

Part 2, a whole tiny job: ``experiment_runner.run_integrated_experiment`` (train, validate every epoch, test,
job folder, sweep tables, charts) on 7 synthetic 32^3 phantoms (cache built beforehand, efficiency skipped),
against its model compute alone: every forward the job made (counted by a hook, train and inference apart)
replayed with the bare loop on the same shapes. Then the same job under cProfile: where the rest goes.
The machine's load and this process's CPU share are printed; a busy machine is flagged.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import datetime
import logging
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataio.types import DatasetInfo  # noqa: E402
from engine.options.config import parse_config  # noqa: E402
from engine.model_setup import ModelSetup, setup_model  # noqa: E402
from engine.tasks import task_for  # noqa: E402
from engine.train_state import TrainState  # noqa: E402
from engine.trainer import Optimisation, TrainerSettings, train_one_epoch  # noqa: E402
from benchmarks._timing import CpuClock, machine_busy, quick_threads_parser  # noqa: E402
from metrics.efficiency import machine_load  # noqa: E402
from models import model_info  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = quick_threads_parser(__doc__.splitlines()[0], "3 repeats of 6 steps, a 1-epoch job (minutes on 2 cores)")
    p.add_argument("--steps", type=int, default=8, help="training steps (batches) per timed epoch")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs of each loop (median)")
    p.add_argument("--batch", type=int, default=1, help="batch size (the CLI's default is 1)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the tiny job in part 2")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.epochs = min(args.repeats, 3), min(args.steps, 6), 1
    return args


BRATS = DatasetInfo(name="synthetic")
MODELS = {"unet3d_xs": {}, "unetr": dict(model_info("unetr").tiny_kwargs)}


def make_batches(setup: ModelSetup, n: int, batch: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    c = setup.model_kwargs["in_channels"]
    return [{"image": torch.randn(batch, c, *setup.patch_size, generator=g),
             "label": torch.randint(0, 4, (batch, *setup.patch_size), generator=g), "case_id": ["x"] * batch}
            for _ in range(n)]


def bare_epoch(model: nn.Module, batches: list[dict[str, Any]], loss_fn: nn.Module, opt: torch.optim.Optimizer,
               clip: float | None) -> None:
    """The reference loop: forward, loss, backward, clip, step, zero_grad (no bookkeeping)."""
    model.train()
    for batch in batches:
        loss = loss_fn(model(batch["image"]).float(), batch["label"])
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)


def trainer_vs_bare(name: str, args: argparse.Namespace, clock: CpuClock) -> dict[str, Any]:
    setup = setup_model(name, available_modalities=BRATS.channels, n_classes=4, requested_patch=(32, 32, 32),
                        data_extent=(32, 32, 32), overrides=MODELS[name])
    task = task_for(model_info(name), BRATS)
    settings = TrainerSettings()
    seed_everything(0)
    ours = setup.build()
    ref = copy.deepcopy(ours)
    batches = make_batches(setup, args.steps, args.batch)
    opt_ours = Optimisation(torch.optim.AdamW(ours.parameters(), lr=settings.lr, weight_decay=settings.weight_decay),
                            None, None, settings.grad_accum, settings.max_grad_norm)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    state = TrainState()

    def run_ours() -> None:
        train_one_epoch(ours, batches, task, opt_ours, device=torch.device("cpu"), state=state, desc="bench")

    def run_ref() -> None:
        bare_epoch(ref, batches, task.loss_fn, opt_ref, settings.max_grad_norm)
    run_ours(), run_ref()  # warm-up
    t_ours, t_ref = [], []
    for i in range(args.repeats):  # ABBA order: neither loop always runs first
        pair = ((t_ours, run_ours), (t_ref, run_ref))
        for times, fn in (pair if i % 2 == 0 else pair[::-1]):
            times.append(clock.time(fn))
    so, sr = args.steps / statistics.median(t_ours), args.steps / statistics.median(t_ref)
    return dict(model=name, patch="x".join(map(str, setup.patch_size)), ours=so, ref=sr, ratio=so / sr)


def job_flags(out: Path, cache: Path, epochs: int) -> list[str]:
    return ["--models", "unet3d_xs", "--seeds", "1", "--epochs", str(epochs), "--synthetic_cases", "7",
            "--synthetic_size", "32", "32", "32", "--patch_size", "32", "32", "32", "--samples_per_volume", "2",
            "--num_workers", "0", "--skip_efficiency", "--cache_dir", str(cache), "--output_dir", str(out)]


class ForwardCounter:
    """Counts the forwards of every model ModelSetup builds, by (training flag, input shape)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[bool, tuple[int, ...]]] = Counter()
        self.setup: ModelSetup | None = None
        self._build = ModelSetup.build

    def __enter__(self) -> "ForwardCounter":
        counter = self

        def build(setup: ModelSetup) -> nn.Module:
            model = counter._build(setup)
            counter.setup = setup
            model.register_forward_pre_hook(
                lambda m, a: counter.calls.update([(m.training and torch.is_grad_enabled(), tuple(a[0].shape))]))
            return model
        ModelSetup.build = build  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        ModelSetup.build = self._build  # type: ignore[method-assign]


def replay(counter: ForwardCounter, clock: CpuClock, repeats: int) -> tuple[float, list[tuple[str, int, float]]]:
    """Seconds the counted forwards (and the backward + AdamW step of each training forward) take bare."""
    setup = counter.setup
    assert setup is not None
    task = task_for(setup.info, BRATS)
    seed_everything(0)
    model = setup.build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    total, parts = 0.0, []
    for (train, shape), n in sorted(counter.calls.items()):
        batch = [{"image": torch.randn(shape), "label": torch.randint(0, 4, (shape[0], *shape[2:]))}]
        if train:
            fn = lambda: bare_epoch(model, batch, task.loss_fn, opt, 12.0)  # noqa: E731
        else:
            def fn() -> None:
                model.eval()
                with torch.no_grad():
                    model(batch[0]["image"])
        fn()
        per_call = statistics.median(clock.time(fn) for _ in range(repeats))
        key = f"{'train step' if train else 'inference'} {'x'.join(map(str, shape))}"
        parts.append((key, n, per_call * n))
        total += per_call * n
    return total, parts


def whole_job(args: argparse.Namespace, clock: CpuClock, tmp: Path) -> dict[str, Any]:
    from experiment_runner import run_integrated_experiment

    cache = tmp / "cache"
    parse_config(job_flags(tmp / "warm", cache, args.epochs)).load()  # phantoms + cache built outside the timing
    with ForwardCounter() as counter:
        config = parse_config(job_flags(tmp / "job", cache, args.epochs))
        wall = clock.time(lambda: run_integrated_experiment(config))
    compute, parts = replay(counter, clock, args.repeats)
    profiler = cProfile.Profile()
    config = parse_config(job_flags(tmp / "profiled", cache, args.epochs))
    profiler.runcall(run_integrated_experiment, config)
    return dict(wall=wall, compute=compute, parts=parts, stats=pstats.Stats(profiler))


# (label, path suffix, function name) of the profile's named parts; cumulative times, so nested parts overlap
PARTS = [("training epochs (train_one_epoch)", "engine/trainer.py", "train_one_epoch"),
         ("  model forward, training (task.train_step)", "engine/tasks/segmentation.py", "train_step"),
         ("  backward", "", "<method 'run_backward' of 'torch._C._EngineBase' objects>"),
         ("  AdamW step", "torch/optim/adam.py", "step"),
         ("  gradient clipping", "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
         ("  next training batch (sampling + augmentation)", "torch/utils/data/dataloader.py", "__next__"),
         ("validation + test (evaluate_cases)", "engine/evaluation.py", "evaluate_cases"),
         ("  sliding-window inference", "engine/inference.py", "predict_logits"),
         ("best checkpoint + resumable train state", "engine/train_state.py", "save_train_state"),
         ("  best checkpoint", "utils/checkpoint.py", "save_checkpoint"),
         ("data preparation (read cache, split)", "engine/sweep_plan.py", "prepare_data"),
         ("model plans + checks", "engine/sweep_plan.py", "plan_models"),
         ("config/environment/splits files", "engine/results/sweep_files.py", "write_sweep_files"),
         ("sweep tables (incremental reducer)", "engine/results/reducer.py", "add_job"),
         ("final reduce", "engine/results/reducer.py", "reduce_results"),
         ("charts", "experiment_runner.py", "_draw_charts")]


def named_parts(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Cumulative seconds of each of :data:`PARTS` in the profile (0 when a part did not run)."""
    out = []
    for label, suffix, func in PARTS:
        total = sum(cum for (path, _, name), (_, _, _, cum, _) in stats.stats.items()  # type: ignore[attr-defined]
                    if name == func and path.replace(os.sep, "/").endswith(suffix))
        out.append((label, total))
    return out


def profile_summary(stats: pstats.Stats, n: int = 18) -> list[tuple[str, float, float, int]]:
    """(function, cumulative s, own s, calls) of the ``n`` volbench, torch and MONAI functions with the most
    cumulative time, leaving out thin wrappers whose time is all in one callee listed anyway."""
    rows = []
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = path.replace(str(ROOT) + os.sep, "")
        if "site-packages" in short:
            short = short.split("site-packages" + os.sep, 1)[1]
        if short.startswith("~") or short.startswith("<"):
            short = func
        else:
            short = f"{short}:{line}({func})"
        rows.append((short, cumtime, tottime, ncalls))
    rows.sort(key=lambda r: r[1], reverse=True)
    keep = [r for r in rows if not any(s in r[0] for s in ("_call_impl", "_wrapped_call_impl", "runcall",
                                                           "decorate_context", "contextlib"))]
    return keep[:n]


def report(overhead: list[dict[str, Any]], job: dict[str, Any], args: argparse.Namespace,
           loads: tuple[float, float], clock: CpuClock) -> None:
    share = clock.share()
    busy = machine_busy(loads, share)
    print(f"# bench_runner_overhead  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | cpu_count {os.cpu_count()} | torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}) | python {platform.python_version()}")
    print(f"load per core before/after: {loads[0]:.2f}/{loads[1]:.2f}; CPU share while timing {share:.2f}"
          f"{'  ** BUSY: other processes held the cores **' if busy else '  (quiet)'}\n")
    print(f"## 1. trainer vs bare loop ({args.steps} steps of batch {args.batch} per epoch, median of "
          f"{args.repeats} alternating epochs)\n")
    print("| model | patch | trainer steps/s | bare steps/s | ratio |")
    print("|---|---|---|---|---|")
    for r in overhead:
        print(f"| {r['model']} | {r['patch']} | {r['ours']:.2f} | {r['ref']:.2f} | **{r['ratio']:.3f}** |")
    print(f"\n## 2. whole tiny job (unet3d_xs, {args.epochs} epoch(s), 7 phantoms of 32^3) vs its model compute\n")
    print(f"job wall time: {job['wall']:.2f} s; model compute alone (replayed): {job['compute']:.2f} s; "
          f"compute / job = **{job['compute'] / job['wall']:.2f}**")
    for key, n, seconds in job["parts"]:
        print(f"    {key}: {n} calls, {seconds:.2f} s")
    total = max(cum for _, cum, _, _ in profile_summary(job["stats"], 1))
    print(f"\ncProfile of the same job (a second run, {total:.2f} s under the profiler, which slows Python-heavy "
          "parts); named parts, cumulative (indented parts lie inside the one above):\n")
    print("| part | s | share of job |")
    print("|---|---|---|")
    for label, seconds in named_parts(job["stats"]):
        print(f"| {label.replace('  ', '&nbsp;&nbsp;')} | {seconds:.2f} | {100 * seconds / total:.1f}% |")
    print("\ntop functions by cumulative time:\n")
    print("| function | cumulative s | own s | calls |")
    print("|---|---|---|---|")
    for name, cum, own, calls in profile_summary(job["stats"]):
        print(f"| `{name}` | {cum:.2f} | {own:.2f} | {calls} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("VOLBENCH_PROGRESS", "0")
    clock = CpuClock()
    before = machine_load()
    overhead = [trainer_vs_bare(name, args, clock) for name in MODELS]
    with tempfile.TemporaryDirectory(prefix="volbench_overhead_") as tmp:
        job = whole_job(args, clock, Path(tmp))
    report(overhead, job, args, (before, machine_load()), clock)


if __name__ == "__main__":
    main()
