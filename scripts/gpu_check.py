"""GPU check: volbench's CUDA path run once on a machine with a GPU, every figure against a reference.

    python scripts/gpu_check.py                          # CUDA: table on stdout, gpu_check.json; exit 1 on a failure
    python scripts/gpu_check.py --self_test              # the same checks' logic on the CPU (bf16 autocast, gloo)
    python scripts/gpu_check.py --checks amp_bf16 pam    # a subset (names: --help)

Checks (tolerances are the module constants below; the CPU self-test uses its own, looser, ones):

* ``amp_fp16`` / ``amp_bf16``: one epoch of ``unet3d_xs`` and ``retinanet`` on tiny synthetic CT phantoms with
  fp16 AMP (volbench's default on CUDA: autocast + grad scaler) and with bf16 autocast, each against ``--no_amp``
  fp32: epoch losses (relative) and Dice (absolute) close. volbench has no bf16 flag: the check runs the sweep in
  this process with ``--no_amp`` and the trainer's and the inference's no-AMP context replaced by bf16 autocast
  (:func:`autocast_everywhere`), and fails if that replacement never took effect.
* ``pam``: volbench's train and inference PAM (:func:`metrics.efficiency_memory.measure_pam`) against
  ``torch.cuda.max_memory_allocated`` around a plain training step / ``no_grad`` forward.
* ``latency``: volbench's latency (wall clock, synchronised) against the same forward timed with CUDA events.
* ``collectives_N``: N processes under ``torchrun --standalone`` start an NCCL process group, all-reduce and
  all-gather (N = 1, and 2 with two GPUs).
* ``ddp_sweep_N``: a sweep of both models under torchrun with N processes (N = 1, and 2 with two GPUs): every job
  ok, each test case scored exactly once per run, the backend in the log.
* ``deterministic``: the default-precision sweep (fp16 AMP on CUDA, fp32 on the CPU) run again under
  ``--deterministic``: equal; on CUDA differences within :data:`RERUN_TOLERANCE_CUDA` pass as the documented ones.
* ``jobs_throughput``: ``--parallel jobs`` under torchrun (one rank per GPU, at most 2) against one process, same
  grid of 4 jobs.

Without CUDA (and without ``--self_test``) it says so and exits 0. The pure ``compare_*`` functions take measured
numbers and return ``(passed, detail)``; ``tests/test_gpu_check.py`` feeds them perturbed results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class AmpTolerance:
    """How far a run may be from its reference: ``loss_rtol`` relative on every epoch loss (``train_loss*``,
    ``val_loss``), ``dice_atol`` absolute on every Dice (validation and test)."""

    loss_rtol: float
    dice_atol: float


# CUDA: one epoch from the same seeded weights and samples; fp16 keeps 10 mantissa bits, bf16 7
AMP_TOLERANCE = {"fp16": AmpTolerance(loss_rtol=0.05, dice_atol=0.05),
                 "bf16": AmpTolerance(loss_rtol=0.10, dice_atol=0.10)}
# CPU self-test: tiny models (4-16 channels) round more of their sums in bf16
AMP_TOLERANCE_CPU = {"bf16": AmpTolerance(loss_rtol=0.15, dice_atol=0.15)}
PAM_RTOL = 0.10  # volbench's PAM vs the allocator's peak of a plain step (CPU: an independent count of saved bytes)
LATENCY_RTOL, LATENCY_ATOL_MS = 0.25, 0.2  # wall-clock median vs CUDA-event median: |a - b| <= max(rtol*b, atol)
LATENCY_RTOL_CPU, LATENCY_ATOL_MS_CPU = 0.5, 1.0  # CPU self-test: two wall-clock medians on shared cores
RERUN_TOLERANCE_CUDA = AmpTolerance(loss_rtol=0.01, dice_atol=0.02)  # README: CUDA reruns agree closely, not bitwise
JOBS_MIN_RATIO_PER_RANK = 0.5  # --parallel jobs: throughput / one process's >= 0.5 x ranks (start-up included)
JOBS_MIN_RATIO_PER_RANK_CPU = 0.25  # CPU self-test: ranks share 2 busy cores with the rest of the machine
LOSS_FLOOR = 1e-3  # relative loss differences are taken against max(|reference|, LOSS_FLOOR)

MODELS = ("unet3d_xs", "retinanet")
CASES = 26  # 3 test cases (10 %): odd, so a 2-rank split that pads would score one twice
JOB_SEEDS = ("1", "2", "3", "4")  # --parallel jobs grid: unet3d_xs x 4 seeds
TIMING = ("train_time_s", "epoch_time_s", "latency", "checkpoint", "eval_time")  # columns that differ run to run
EXIT_FAILED = 1


@dataclass(frozen=True)
class Profile:
    """Sizes and tolerances of the check on one kind of device."""

    device: str
    tiny: bool
    size: tuple[int, int, int]  # synthetic CT phantoms, voxels (also the training patch)
    samples_per_volume: int
    batch_size: int  # the CPU trains at batch 2: batch-1 CPU 3D convolutions take PyTorch's slow native path
    model_shape: tuple[int, ...]  # PAM and latency input of unet3d_xs
    amp: dict[str, AmpTolerance]
    latency: tuple[float, float]  # (rtol, atol_ms)
    rerun: AmpTolerance | None  # None: reruns must be bit-equal
    jobs_min_ratio_per_rank: float


CUDA_PROFILE = Profile("cuda", tiny=False, size=(64, 64, 16), samples_per_volume=4, batch_size=1,
                       model_shape=(1, 4, 96, 96, 96), amp=AMP_TOLERANCE, latency=(LATENCY_RTOL, LATENCY_ATOL_MS),
                       rerun=RERUN_TOLERANCE_CUDA, jobs_min_ratio_per_rank=JOBS_MIN_RATIO_PER_RANK)
CPU_PROFILE = Profile("cpu", tiny=True, size=(32, 32, 16), samples_per_volume=1, batch_size=2,
                      model_shape=(1, 4, 32, 32, 32), amp=AMP_TOLERANCE_CPU,
                      latency=(LATENCY_RTOL_CPU, LATENCY_ATOL_MS_CPU), rerun=None,
                      jobs_min_ratio_per_rank=JOBS_MIN_RATIO_PER_RANK_CPU)

# ---------------------------------------------------------------------------------------------------- comparisons

Metrics = dict[str, dict[str, Any]]  # model -> {"status": ..., metric: value}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def compare_amp(reference: Metrics, candidate: Metrics, tol: AmpTolerance) -> tuple[bool, str]:
    """Every model of ``reference`` ok in both, its losses within ``tol.loss_rtol`` (relative) and its Dice within
    ``tol.dice_atol`` (absolute) of the reference; a value missing or non-finite on one side only fails."""
    problems: list[str] = []
    worst = {"loss": 0.0, "dice": 0.0}
    for model, ref in reference.items():
        cand = candidate.get(model)
        if cand is None:
            problems.append(f"{model}: no result")
            continue
        for side, run in (("reference", ref), ("run", cand)):
            if run.get("status", "ok") != "ok":
                problems.append(f"{model}: {side} status {run.get('status')}")
        for key, r in ref.items():
            kind = "loss" if key.startswith(("train_loss", "val_loss")) else "dice" if "dice" in key else None
            if kind is None:
                continue
            c = cand.get(key)
            if _is_nan(r) and _is_nan(c):
                continue
            if not (_finite(r) and _finite(c)):
                problems.append(f"{model} {key}: {c} vs {r}")
                continue
            diff = abs(c - r) / max(abs(r), LOSS_FLOOR) if kind == "loss" else abs(c - r)
            limit = tol.loss_rtol if kind == "loss" else tol.dice_atol
            worst[kind] = max(worst[kind], diff)
            if diff > limit:
                what = "relative" if kind == "loss" else "absolute"
                problems.append(f"{model} {key}: {c:.4g} vs {r:.4g} ({what} {diff:.3g} > {limit})")
    if problems:
        return False, "; ".join(problems)
    return True, f"max loss diff {worst['loss']:.2%}, max Dice diff {worst['dice']:.4f}"


def compare_memory(volbench_mb: dict[str, float], reference_mb: dict[str, float], rtol: float) -> tuple[bool, str]:
    """Per mode (train, infer): volbench's PAM within ``rtol`` of the reference peak, both positive."""
    problems, parts = [], []
    for mode, ref in reference_mb.items():
        ours = volbench_mb.get(mode)
        if not (_finite(ours) and _finite(ref)) or ours <= 0 or ref <= 0:
            problems.append(f"{mode}: {ours} MB vs {ref} MB")
            continue
        rel = abs(ours - ref) / ref
        parts.append(f"{mode} {ours:.1f} vs {ref:.1f} MB ({rel:.1%})")
        if rel > rtol:
            problems.append(f"{mode}: {ours:.1f} MB vs {ref:.1f} MB ({rel:.1%} > {rtol:.0%})")
    return (False, "; ".join(problems)) if problems else (True, ", ".join(parts))


def compare_latency(volbench_ms: float, reference_ms: float, rtol: float, atol_ms: float) -> tuple[bool, str]:
    """volbench's latency within ``max(rtol x reference, atol_ms)`` of the reference."""
    if not (_finite(volbench_ms) and _finite(reference_ms)) or volbench_ms <= 0 or reference_ms <= 0:
        return False, f"{volbench_ms} ms vs {reference_ms} ms"
    diff, limit = abs(volbench_ms - reference_ms), max(rtol * reference_ms, atol_ms)
    text = f"{volbench_ms:.3f} ms vs {reference_ms:.3f} ms (diff {diff:.3f}, limit {limit:.3f})"
    return diff <= limit, text


def compare_collectives(reports: list[dict[str, Any]], world_size: int, backend: str) -> tuple[bool, str]:
    """Every rank reported once, with ``backend``, the all-reduced sum 1 + ... + N and all N ranks gathered;
    CUDA ranks each on their own device."""
    problems = []
    ranks = sorted(r.get("rank", -1) for r in reports)
    if ranks != list(range(world_size)):
        problems.append(f"ranks {ranks}, expected 0..{world_size - 1}")
    expected_sum = world_size * (world_size + 1) // 2
    for r in reports:
        if r.get("backend") != backend:
            problems.append(f"rank {r.get('rank')}: backend {r.get('backend')}, expected {backend}")
        if r.get("sum") != expected_sum:
            problems.append(f"rank {r.get('rank')}: all-reduce {r.get('sum')}, expected {expected_sum}")
        if sorted(r.get("gathered", [])) != list(range(world_size)):
            problems.append(f"rank {r.get('rank')}: gathered {r.get('gathered')}")
    devices = [r.get("device") for r in reports]
    if backend == "nccl" and len(set(devices)) != len(devices):
        problems.append(f"ranks share a device: {devices}")
    if problems:
        return False, "; ".join(problems)
    return True, f"{world_size} rank(s), {backend}, devices {', '.join(map(str, devices))}"


def compare_case_counts(runs: list[dict[str, Any]], per_case: list[dict[str, Any]], test_ids: Sequence[str],
                        backend: tuple[str | None, str | None]) -> tuple[bool, str]:
    """Every run ok; in the per-case table each (model, seed, fold, case_id) exactly once and each run's cases
    exactly ``test_ids``; ``backend`` = (seen in the log, expected)."""
    problems = [f"{r['model']} seed {r['seed']}: {r.get('status')} {r.get('error') or ''}".strip()
                for r in runs if r.get("status") != "ok"]
    if not runs:
        problems.append("no run rows")
    keys = Counter((r["model"], r["seed"], _fold(r.get("fold")), r["case_id"]) for r in per_case)
    twice = [k for k, n in keys.items() if n > 1]
    if twice:
        problems.append(f"scored more than once: {twice}")
    for r in runs:
        run_key = (r["model"], r["seed"], _fold(r.get("fold")))
        cases = sorted(k[3] for k in keys if k[:3] == run_key)
        if cases != sorted(test_ids):
            problems.append(f"{r['model']} seed {r['seed']}: cases {cases}, expected {sorted(test_ids)}")
    seen, expected = backend
    if seen != expected:
        problems.append(f"process group backend {seen}, expected {expected}")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(runs)} runs ok, {len(keys)} case rows, each once ({len(test_ids)} test cases per run)" \
        + (f", backend {seen}" if seen else ", world size 1 (no process group)")


def compare_reruns(first: dict[str, list[dict[str, Any]]], second: dict[str, list[dict[str, Any]]],
                   tolerance: AmpTolerance | None) -> tuple[bool, str]:
    """Two runs of one deterministic sweep: every table equal row for row (timing columns aside); with
    ``tolerance`` (CUDA) unequal values still pass when losses and Dice are within it (the documented
    differences), and the detail says how many values differed."""
    differing: list[str] = []
    for name, rows in first.items():
        other = second.get(name, [])
        if len(rows) != len(other):
            return False, f"{name}: {len(rows)} rows vs {len(other)}"
        for a, b in zip(_sorted_rows(rows), _sorted_rows(other)):
            for key in sorted(set(a) | set(b)):
                if key.startswith(TIMING):
                    continue
                va, vb = a.get(key), b.get(key)
                if not (va == vb or (_is_nan(va) and _is_nan(vb))):
                    differing.append(f"{name} {a.get('model')} {key}: {va!r} vs {vb!r}")
    if not differing:
        return True, "bit-equal"
    if tolerance is None:
        return False, f"{len(differing)} values differ: " + "; ".join(differing[:5])
    passed, detail = compare_amp(amp_metrics(first), amp_metrics(second), tolerance)
    return passed, f"not bit-equal ({len(differing)} values differ); {detail}"


def compare_throughput(one_process_s: float, parallel_s: float, ranks: int, min_ratio_per_rank: float
                       ) -> tuple[bool, str]:
    """Throughput of ``ranks`` job-parallel ranks over one process's (= its wall time / theirs) at least
    ``min_ratio_per_rank x ranks``."""
    if not (_finite(one_process_s) and _finite(parallel_s)) or one_process_s <= 0 or parallel_s <= 0:
        return False, f"times {one_process_s} s and {parallel_s} s"
    ratio, need = one_process_s / parallel_s, min_ratio_per_rank * ranks
    text = f"1 process {one_process_s:.1f} s, {ranks} rank(s) {parallel_s:.1f} s: ratio {ratio:.2f} (>= {need:.2f})"
    return ratio >= need, text


def _fold(value: Any) -> Any:
    return None if _is_nan(value) or value == "" else value


def _sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("model", "seed", "fold", "epoch", "case_id")
    return sorted(rows, key=lambda r: tuple(str(r.get(k)) for k in keys))

# ---------------------------------------------------------------------------------------------------- result files


def read_tables(out: Path) -> dict[str, list[dict[str, Any]]]:
    """The runs, epochs and per-case tables of a sweep folder as lists of rows (floats read back exactly)."""
    import pandas as pd

    from utils.schema import EPOCHS_CSV, PER_CASE_CSV, RUNS_CSV

    return {name: pd.read_csv(out / file).to_dict("records")
            for name, file in (("runs", RUNS_CSV), ("epochs", EPOCHS_CSV), ("per_case", PER_CASE_CSV))}


def amp_metrics(tables: dict[str, list[dict[str, Any]]]) -> Metrics:
    """Per model (one run each): status, the last epoch's losses and validation Dice, the test Dice."""
    out: Metrics = {}
    for row in tables["runs"]:
        out[row["model"]] = dict(status=row["status"], **{f"test_{k}": v for k, v in row.items()
                                                         if k.startswith("dice_")})
    last: dict[str, dict[str, Any]] = {}
    for row in tables["epochs"]:
        if row["model"] not in last or row["epoch"] >= last[row["model"]]["epoch"]:
            last[row["model"]] = row
    for model, row in last.items():
        out.setdefault(model, {"status": "missing"}).update(
            {k: v for k, v in row.items() if k.startswith(("train_loss", "val_loss", "val_dice"))})
    return out

# ---------------------------------------------------------------------------------------------------- running sweeps


@contextmanager
def autocast_everywhere(device_type: str, dtype: Any) -> Iterator[list[int]]:
    """Run volbench's training steps and sliding-window inference under ``torch.autocast(device_type, dtype)``.

    volbench's own AMP is fp16 with a grad scaler, on CUDA only. With ``--no_amp`` the trainer opens
    ``engine.trainer.nullcontext()`` around each step and inference opens ``engine.inference._autocast(...)``;
    both are replaced here (in this process, for the duration). The yielded list counts the contexts opened:
    0 afterwards means the seams moved and the run was not what it claims.
    """
    import torch

    import engine.inference
    import engine.trainer

    opened = [0]

    def make(*_args: Any, **_kwargs: Any) -> Any:
        opened[0] += 1
        return torch.autocast(device_type, dtype=dtype)

    seams = [(engine.trainer, "nullcontext"), (engine.inference, "_autocast")]
    saved = [getattr(module, name) for module, name in seams]  # AttributeError: the seam is gone
    for module, name in seams:
        setattr(module, name, make)
    try:
        yield opened
    finally:
        for (module, name), value in zip(seams, saved):
            setattr(module, name, value)


@contextmanager
def no_charts() -> Iterator[None]:
    """In-process sweeps skip the charts (seconds of matplotlib per sweep; nothing here reads them)."""
    import experiment_runner

    saved = experiment_runner._draw_charts
    experiment_runner._draw_charts = lambda output_dir: None
    try:
        yield
    finally:
        experiment_runner._draw_charts = saved


def run_sweep_here(argv: list[str], autocast: tuple[str, Any] | None = None) -> None:
    """One sweep in this process (``autocast``: (device type, dtype) forced on every step and inference)."""
    from engine.options.config import parse_config
    from experiment_runner import run_integrated_experiment

    config = parse_config(argv)
    if autocast is None:
        with no_charts():
            run_integrated_experiment(config)
        return
    with no_charts(), autocast_everywhere(*autocast) as opened:
        run_integrated_experiment(config)
    if not opened[0]:
        raise RuntimeError("the forced autocast never took effect: engine.trainer / engine.inference changed")


def run_process(cmd: list[str], log: Path, timeout: float = 600.0, env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` from the repository root with its output in ``log``; wall seconds; RuntimeError on failure."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                              env=dict(os.environ, **(env or {})))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[:6])} ...\n{tail}")
    return seconds


def torchrun(nproc: int, script: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(script), *args]

# ---------------------------------------------------------------------------------------------------- checks


@dataclass
class CheckResult:
    """One row of the table: ``passed`` None = skipped (``detail`` says why)."""

    name: str
    passed: bool | None
    detail: str
    measured: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class CheckRun:
    """What the checks share: the device profile, the work folder and the sweeps already run (by precision)."""

    profile: Profile
    work: Path
    gpus: int = 0
    sweeps: dict[str, Path] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.work / "cache"

    @property
    def default_precision(self) -> str:
        return "fp16" if self.profile.device == "cuda" else "fp32"

    def flags(self, *extra: str, models: Sequence[str] = MODELS, seeds: Sequence[str] = ("24",)) -> list[str]:
        """Flags of a sweep of ``models`` x ``seeds``, one epoch, on the synthetic CT phantoms (cache shared)."""
        p = self.profile
        return ["--dataset_version", "synthetic_ich", "--synthetic_cases", str(CASES),
                "--synthetic_size", *map(str, p.size), "--patch_size", *map(str, p.size),
                "--samples_per_volume", str(p.samples_per_volume), "--batch_size", str(p.batch_size),
                "--epochs", "1", "--seeds", *seeds,
                "--num_workers", "0", "--skip_efficiency", "--deterministic", "--tracker", "none",
                "--device", p.device, "--cache_dir", str(self.cache), "--models", *models,
                *(["--tiny"] if p.tiny else []), *extra]

    def sweep(self, precision: str, again: bool = False) -> Path:
        """The folder of the single-process sweep at ``precision`` (fp32, fp16, bf16), run on first use."""
        key = precision + ("_again" if again else "")
        if key not in self.sweeps:
            import torch

            out = self.work / f"sweep_{key}"
            amp = [] if precision == "fp16" else ["--no_amp"]
            force = (self.profile.device, torch.bfloat16) if precision == "bf16" else None
            run_sweep_here(self.flags(*amp, "--output_dir", str(out)), autocast=force)
            if self.profile.device == "cuda":
                torch.cuda.empty_cache()
            self.sweeps[key] = out
        return self.sweeps[key]


def check_amp(run: CheckRun, precision: str) -> CheckResult:
    import torch

    name = f"amp_{precision}"
    tol = run.profile.amp.get(precision)
    if tol is None:
        return CheckResult(name, None, f"not checked on {run.profile.device}")
    if precision == "bf16" and run.profile.device == "cuda" and not torch.cuda.is_bf16_supported():
        return CheckResult(name, None, "this GPU does not support bf16")
    reference = amp_metrics(read_tables(run.sweep("fp32")))
    candidate = amp_metrics(read_tables(run.sweep(precision)))
    passed, detail = compare_amp(reference, candidate, tol)
    return CheckResult(name, passed, detail, {"fp32": reference, precision: candidate}, asdict(tol))


def _model(run: CheckRun) -> Any:
    import torch

    import engine.tasks  # noqa: F401  (create_model's default out_channels)
    from models import create_model, model_info

    torch.manual_seed(0)
    kwargs = model_info("unet3d_xs").tiny_kwargs if run.profile.tiny else {}
    return create_model("unet3d_xs", **kwargs).to(run.profile.device)


def cuda_infer_peak_mb(model: Any, shape: Sequence[int]) -> float:
    """``max_memory_allocated`` of a plain ``no_grad`` eval forward minus what was allocated before it, MB."""
    import torch

    from metrics.efficiency_common import MB

    dev = next(model.parameters()).device
    x = torch.randn(*shape, device=dev)
    model.eval()
    with torch.no_grad():
        model(x)  # warm-up: cuDNN picks its algorithms
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        model(x)
        torch.cuda.synchronize(dev)
    return max(0, torch.cuda.max_memory_allocated(dev) - before) / MB


def cpu_saved_mb(model: Any, shape: Sequence[int]) -> float:
    """CPU reference of the train PAM: bytes of the distinct storages autograd saves in one train forward,
    parameters and input left out (counted here, not by ``metrics``), MB."""
    import torch

    from metrics.efficiency_common import MB
    from utils.cpu_conv import native_convs

    x = torch.randn(*shape)
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), x]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    model.train()
    with native_convs(), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
        (out if isinstance(out, torch.Tensor) else out[0]).float().mean()
    return sum(saved.values()) / MB


def check_pam(run: CheckRun) -> CheckResult:
    from metrics.efficiency_memory import cuda_plain_step_peak_mb, measure_pam

    model, shape, device = _model(run), run.profile.model_shape, run.profile.device
    modes = ("train", "infer") if device == "cuda" else ("train",)
    # as a sweep measures it (5 runs, the default --pam_runs, no warm-up of its own): mean and std
    measured = {mode: measure_pam(model, shape, device=device, mode=mode, runs=5) for mode in modes}
    ours = {mode: mean for mode, (mean, _) in measured.items()}
    if device == "cuda":
        reference = {"train": cuda_plain_step_peak_mb(model, shape), "infer": cuda_infer_peak_mb(model, shape)}
    else:
        reference = {"train": cpu_saved_mb(model, shape)}
    passed, detail = compare_memory(ours, reference, PAM_RTOL)
    spread = {mode: std for mode, (_, std) in measured.items()}
    return CheckResult("pam", passed, detail, {"volbench_mb": ours, "volbench_std_mb": spread,
                                               "reference_mb": reference, "input_shape": list(shape)},
                       {"rtol": PAM_RTOL})


def timed_forward_ms(model: Any, shape: Sequence[int], runs: int = 20, warmup: int = 5) -> float:
    """Median forward time in ms, batch 1, eval, ``no_grad``: CUDA events on CUDA, ``perf_counter`` on the CPU."""
    import torch

    dev = next(model.parameters()).device
    x = torch.randn(1, *shape[1:], device=dev)
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            for _ in range(runs):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(runs):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def check_latency(run: CheckRun) -> CheckResult:
    from metrics.efficiency import measure_latency

    model, shape = _model(run), run.profile.model_shape
    ours = measure_latency(model, shape, device=run.profile.device, warmup=5, runs=20)["latency_ms_median"]
    reference = timed_forward_ms(model, shape)
    rtol, atol = run.profile.latency
    passed, detail = compare_latency(ours, reference, rtol, atol)
    clock = "CUDA events" if run.profile.device == "cuda" else "perf_counter"
    return CheckResult("latency", passed, detail, {"volbench_ms": ours, "reference_ms": reference,
                                                   "reference_clock": clock, "input_shape": [1, *shape[1:]]},
                       {"rtol": rtol, "atol_ms": atol})


def check_collectives(run: CheckRun, nproc: int) -> CheckResult:
    name = f"collectives_{nproc}"
    if run.profile.device == "cuda" and nproc > run.gpus:
        return CheckResult(name, None, f"{run.gpus} GPU(s): needs {nproc}")
    out = run.work / name
    out.mkdir(parents=True, exist_ok=True)
    run_process(torchrun(nproc, Path(__file__), "--collective_worker", str(out), "--device", run.profile.device),
                run.work / f"{name}.log", timeout=300)
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("rank_*.json"))]
    backend = "nccl" if run.profile.device == "cuda" else "gloo"
    passed, detail = compare_collectives(reports, nproc, backend)
    return CheckResult(name, passed, detail, {"reports": reports}, {"backend": backend, "exact": True})


def check_ddp_sweep(run: CheckRun, nproc: int) -> CheckResult:
    name = f"ddp_sweep_{nproc}"
    if run.profile.device == "cuda" and nproc > run.gpus:
        return CheckResult(name, None, f"{run.gpus} GPU(s): needs {nproc}")
    out, log = run.work / name, run.work / f"{name}.log"
    seconds = run_process(torchrun(nproc, ROOT / "integrated_experiment.py",
                                   *run.flags("--output_dir", str(out))), log)
    tables = read_tables(out)
    test_ids = json.loads((out / "splits.json").read_text())["test"]
    seen = re.findall(r"process group started: rank \d+ of \d+, backend (\w+)", log.read_text(errors="replace"))
    expected = None if nproc == 1 else ("nccl" if run.profile.device == "cuda" else "gloo")
    passed, detail = compare_case_counts(tables["runs"], tables["per_case"], test_ids,
                                         (seen[0] if seen else None, expected))
    config = json.loads((out / "config.json").read_text())
    if config.get("global_batch") != nproc * run.profile.batch_size:
        passed, detail = False, f"{detail}; global_batch {config.get('global_batch')}, expected " \
            f"{nproc * run.profile.batch_size}"
    if run.profile.device == "cuda" and not config.get("amp"):  # volbench records AMP as in effect: CUDA only
        passed, detail = False, f"{detail}; AMP not in effect: the sweep did not train on CUDA"
    measured = {"runs": [{k: r.get(k) for k in ("model", "status", "dice_mean", "map")} for r in tables["runs"]],
                "case_rows": len(tables["per_case"]), "test_cases": test_ids, "backend": seen[:1],
                "amp_in_effect": config.get("amp"), "wall_s": seconds}
    return CheckResult(name, passed, detail, measured, {"each_case_scored": 1})


def check_deterministic(run: CheckRun) -> CheckResult:
    precision = run.default_precision
    first = read_tables(run.sweep(precision))
    second = read_tables(run.sweep(precision, again=True))
    passed, detail = compare_reruns(first, second, run.profile.rerun)
    tol = asdict(run.profile.rerun) if run.profile.rerun else {"bit_equal": True}
    return CheckResult("deterministic", passed, f"{precision}: {detail}",
                       {"precision": precision, "first": amp_metrics(first), "second": amp_metrics(second)}, tol)


def check_jobs_throughput(run: CheckRun) -> CheckResult:
    ranks = min(run.gpus, 2) if run.profile.device == "cuda" else 2  # 4 jobs: 2 per rank
    script = str(ROOT / "integrated_experiment.py")

    def grid(out: str) -> list[str]:
        return run.flags("--output_dir", str(run.work / out), models=("unet3d_xs",), seeds=JOB_SEEDS)

    run.sweep(run.default_precision)  # the cache exists before either run times anything
    threads = {"OMP_NUM_THREADS": "1"} if run.profile.device == "cpu" else None  # the compute of one rank
    one = run_process([sys.executable, script, *grid("jobs_one")], run.work / "jobs_one.log", env=threads)
    many = run_process(torchrun(ranks, ROOT / "integrated_experiment.py", *grid("jobs_parallel"),
                                "--parallel", "jobs"), run.work / "jobs_parallel.log")
    ok_rows = [r for name in ("jobs_one", "jobs_parallel") for r in read_tables(run.work / name)["runs"]
               if r["status"] == "ok"]
    min_ratio = run.profile.jobs_min_ratio_per_rank
    passed, detail = compare_throughput(one, many, ranks, min_ratio)
    if len(ok_rows) != 2 * len(JOB_SEEDS):
        passed, detail = False, f"{detail}; {len(ok_rows)} of {2 * len(JOB_SEEDS)} jobs ok"
    return CheckResult("jobs_throughput", passed, detail,
                       {"one_process_s": one, "parallel_s": many, "ranks": ranks, "jobs": len(JOB_SEEDS)},
                       {"min_ratio_per_rank": min_ratio})


CHECKS: dict[str, Callable[[CheckRun], CheckResult]] = {
    "amp_fp16": lambda r: check_amp(r, "fp16"),
    "amp_bf16": lambda r: check_amp(r, "bf16"),
    "pam": check_pam,
    "latency": check_latency,
    "collectives_1": lambda r: check_collectives(r, 1),
    "collectives_2": lambda r: check_collectives(r, 2),
    "ddp_sweep_1": lambda r: check_ddp_sweep(r, 1),
    "ddp_sweep_2": lambda r: check_ddp_sweep(r, 2),
    "deterministic": check_deterministic,
    "jobs_throughput": check_jobs_throughput,
}


def run_checks(run: CheckRun, names: Sequence[str] = tuple(CHECKS)) -> list[CheckResult]:
    """Each named check in order; one that raises is a failed row with its error."""
    results = []
    for name in names:
        start = time.perf_counter()
        try:
            result = CHECKS[name](run)
        except Exception as exc:  # noqa: BLE001  (a failed check is a row, the others still run)
            result = CheckResult(name, False, f"error: {type(exc).__name__}: {exc}".strip())
        result.seconds = time.perf_counter() - start
        results.append(result)
        print(f"  {name}: {_verdict(result)} ({result.seconds:.0f} s)", flush=True)
    return results

# ---------------------------------------------------------------------------------------------------- output


def machine_facts(device: str) -> dict[str, Any]:
    """Date, host, versions and GPUs of this machine."""
    import torch

    facts: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "device": device}
    if torch.cuda.is_available():
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        facts.update(gpus=[p.name for p in props], gpu_memory_gb=[round(p.total_memory / 2**30, 1) for p in props],
                     cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
        try:
            facts["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except (AttributeError, RuntimeError, TypeError):
            facts["nccl"] = None
    return facts


def _verdict(result: CheckResult) -> str:
    return "SKIP" if result.passed is None else "PASS" if result.passed else "FAIL"


def table(results: Sequence[CheckResult]) -> str:
    """The results as an aligned text table."""
    rows = [("check", "result", "seconds", "detail")]
    rows += [(r.name, _verdict(r), f"{r.seconds:.0f}", r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_report(path: Path, results: Sequence[CheckResult], facts: dict[str, Any], elapsed_s: float) -> None:
    report = {"machine": facts, "elapsed_s": elapsed_s, "passed": all(r.passed is not False for r in results),
              "checks": [asdict(r) for r in results]}
    path.write_text(json.dumps(_json_safe(report), indent=2) + "\n")

# ---------------------------------------------------------------------------------------------------- entry points


def collective_worker(out: Path, device: str) -> int:
    """One torchrun rank: start the process group (NCCL on CUDA, gloo on the CPU), all-reduce rank + 1,
    all-gather the ranks, write ``rank_<r>.json``."""
    import torch
    import torch.distributed as dist

    from utils.distributed import dist_env

    env = dist_env()
    dev = torch.device("cpu")
    if device == "cuda":
        dev = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    try:
        total = torch.tensor([env.rank + 1], device=dev)
        dist.all_reduce(total)
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, env.rank)
        dist.barrier()
        report = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
                  "device": str(dev), "sum": int(total.item()), "gathered": gathered}
    finally:
        dist.destroy_process_group()
    (out / f"rank_{env.rank}.json").write_text(json.dumps(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self_test", "--self-test", action="store_true",
                        help="run the checks' logic on the CPU: bf16 autocast, gloo, the CPU tolerances (default: off)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="cpu = --self_test (default: cuda when present; without it: say so and exit 0)")
    parser.add_argument("--checks", nargs="+", choices=tuple(CHECKS), default=list(CHECKS), metavar="NAME",
                        help=f"checks to run, of {', '.join(CHECKS)} (default: all)")
    parser.add_argument("--json", default="gpu_check.json", metavar="FILE",
                        help="report of every check and the machine (default: gpu_check.json)")
    parser.add_argument("--work_dir", default=None, metavar="DIR",
                        help="folder for the sweeps and logs, kept (default: a temporary folder, removed at the end)")
    parser.add_argument("--collective_worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = "cpu" if args.self_test else args.device
    if args.collective_worker:
        return collective_worker(Path(args.collective_worker), device or "cuda")
    import torch

    if device is None:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device is present: nothing checked (--self_test runs the checks' logic on "
                  "the CPU)")
            return 0
        device = "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but no CUDA device is present")
        return 2
    os.environ.setdefault("VOLBENCH_PROGRESS", "0")
    profile = CUDA_PROFILE if device == "cuda" else CPU_PROFILE
    if device == "cpu":
        torch.set_num_threads(1)  # tiny models run fastest on one thread (as each torchrun rank does)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    run = CheckRun(profile, work, gpus=torch.cuda.device_count() if device == "cuda" else 0)
    facts = machine_facts(device)
    print(f"gpu_check on {device}: {', '.join(facts.get('gpus', [])) or platform.processor() or 'CPU'}; "
          f"torch {facts['torch']}, CUDA {facts['cuda']}; sweeps in {work}", flush=True)
    start = time.perf_counter()
    try:
        results = run_checks(run, args.checks)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - start
    print(table(results))
    write_report(Path(args.json), results, facts, elapsed)
    failed = [r.name for r in results if r.passed is False]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or skipped in {elapsed:.0f} s; "
          f"report: {args.json}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return EXIT_FAILED if failed else 0


if __name__ == "__main__":
    if "--collective_worker" not in sys.argv:
        # before torch loads, as --deterministic does for a sweep: the same bits on any AVX2 machine; and bf16
        # autocast on the CPU with oneDNN's AVX-512 kernels gave NaN/Inf at random, in about half the sweeps
        # (torch 2.14.1, a CPU with avx512_bf16; ONEDNN_MAX_CPU_ISA=AVX2 alone made them repeat bit for bit)
        from utils.portable_kernels import pin_for_argv

        pin_for_argv(["--deterministic"])
    sys.exit(main())
