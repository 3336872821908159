"""Efficiency measures: parameters, FLOPs, peak activation memory (PAM), stage-wise PAM, latency.

Conventions: FLOPs and latency at batch 1 on the stated input size; memory in MB = 2**20 bytes;
models are called as ``model(x)`` with ``x = randn(input_shape)`` on the device, and a tuple/dict
output is reduced through its first tensor. Every measurement leaves the model as it was (train/eval
flags, parameters, gradients, buffers, global RNG).

FLOPs and PAM describe the network, so they are taken with PyTorch's own convolutions
(:func:`utils.cpu_conv.native_convs`); latency is taken as the model runs in the sweep (with the batch-1
CPU depth split when the model has it). Latency quality: see :func:`measure_latency`.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode
from utils.cpu_conv import native_convs, revert_depth_split_convs
from utils.schema import EFFICIENCY_COLUMNS

from .efficiency_common import (MB, batch_one, make_input, model_dtype, on_device, preserved_state,
                                resolve_device, shape_str)
from .efficiency_memory import measure_pam, resolve_stages, stage_wise_pam

logger = logging.getLogger(__name__)

__all__ = ["MB", "EFFICIENCY_KEYS", "count_parameters", "count_parameters_of", "count_flops", "measure_pam",
           "stage_wise_pam", "resolve_stages", "measure_latency", "measure_efficiency", "machine_load", "latency_flag",
           "CV_LIMIT", "BUSY_LOAD", "BUSY_SHARE"]

EFFICIENCY_KEYS = tuple(EFFICIENCY_COLUMNS)
CV_LIMIT = 0.05  # latency_cv at or above this: flagged "noisy"
BUSY_LOAD = 0.5  # load per core beyond this process's own threads above this (others hold half the cores): "busy"
BUSY_SHARE = 0.8  # CPU time / (wall x threads) below this while timing a CPU model: flagged "busy"
# shortest timed window (s) with a CPU share: the process CPU clock adds other threads' time in scheduler
# ticks (~1-4 ms), so over a shorter window the share is noise (seen: 10.7 for 0.07 ms of a tiny conv)
SHARE_MIN_WINDOW_S = 0.1


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters once, frozen ones included)."""
    return sum(p.numel() for p in model.parameters())


def count_parameters_of(build: Callable[[], nn.Module]) -> int:
    """Parameters of the model ``build()`` makes, built on the meta device (no memory) when possible.

    Falls back to a CPU build when building on meta fails (MONAI SwinUNETR calls ``.item()``).
    """
    try:
        with torch.device("meta"):
            model = build()
    except Exception as err:  # any failure on meta: the real build decides
        logger.debug("meta build failed (%s: %s); building on CPU", type(err).__name__, err)
        model = build()
    return count_parameters(model)


def _thop_flops(model: nn.Module, x: torch.Tensor) -> float:
    """2 x thop MACs of a deep copy (thop adds total_ops/total_params buffers); NaN when thop fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import thop  # noqa: PLC0415  (imported lazily: it warns on import)
            plain = copy.deepcopy(model)
            revert_depth_split_convs(plain)  # thop finds its rules by exact module class
            macs, _ = thop.profile(plain, inputs=(x,), verbose=False)
        return 2.0 * float(macs)
    except Exception as err:  # thop breaks on some custom modules: report NaN, keep the torch count
        logger.warning("thop failed on %s: %s: %s", type(model).__name__, type(err).__name__, err)
        return math.nan


def count_flops(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device = "cpu") -> dict:
    """Forward FLOPs at batch 1 (eval mode, no_grad) by two counters.

    Returns ``{"flops_torch", "flops_thop", "flops_input"}``. ``flops_torch`` (the primary number) is
    ``torch.utils.flop_counter.FlopCounterMode``: convolutions, transposed convolutions and matmuls,
    including functional attention. ``flops_thop`` is 2 x thop MACs: thop over-counts ConvTranspose3d
    by stride**3 and misses functional matmuls (attention), but counts norms/activations; NaN (and a
    warning) when thop fails. ``flops_input`` is the input size, e.g. ``"1x4x128x128x128"``.
    ``device="meta"`` counts on a meta copy: same numbers, no arithmetic, no memory.
    """
    shape = batch_one(input_shape)
    dev = resolve_device(device)
    net = on_device(model, dev)
    with preserved_state(net, devices=[dev]), native_convs():
        net.eval()
        x = make_input(shape, dev, model_dtype(net))
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                net(x)
            flops_thop = _thop_flops(net, x)
    return dict(flops_torch=float(counter.get_total_flops()), flops_thop=flops_thop, flops_input=shape_str(shape))


def machine_load() -> float:
    """The machine's 1-minute load average per CPU core (``os.getloadavg()[0] / os.cpu_count()``); NaN where
    the OS has no load average. Includes this process's own recent activity."""
    try:
        return os.getloadavg()[0] / max(os.cpu_count() or 1, 1)
    except (OSError, AttributeError):
        return math.nan


def latency_flag(cv: float, load: float, cpu_share: float, own: float = 0.0) -> str:
    """``""`` for a clean figure, else ``"busy"`` and/or ``"noisy"``, joined by ``"+"``.

    Busy: the load per core less ``own`` (this process's threads per core: the load average counts them too)
    exceeds :data:`BUSY_LOAD`, or the CPU share is below :data:`BUSY_SHARE`. Noisy: ``cv >= CV_LIMIT``.
    NaN inputs (no load average; CUDA has no CPU share) count as clean.
    """
    busy = (load == load and load - own > BUSY_LOAD) or (cpu_share == cpu_share and cpu_share < BUSY_SHARE)
    return "+".join(f for f, on in (("busy", busy), ("noisy", cv >= CV_LIMIT)) if on)


def _timed_runs(net: nn.Module, x: torch.Tensor, warmup: int, runs: int, sync: Callable[[], None]
                ) -> tuple[list[float], float, float]:
    """Per-call times in ms of ``runs`` calls after ``warmup``; the load; CPU s / wall s over the timed runs
    (NaN when they last under :data:`SHARE_MIN_WINDOW_S`)."""
    for _ in range(warmup):
        net(x)
    sync()
    load = machine_load()
    gc_was_on = gc.isenabled()
    gc.disable()  # no collector pause inside a timed call
    try:
        times = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(runs):
            start = time.perf_counter()
            net(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        if gc_was_on:
            gc.enable()
    share = cpu / wall if wall >= SHARE_MIN_WINDOW_S else math.nan
    return times, max(load, machine_load()), share


def measure_latency(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device,
                    warmup: int = 3, runs: int = 10, threads: int | None = None) -> dict:
    """Forward latency in ms at batch 1, eval mode, ``no_grad``, after ``warmup`` calls.

    Each call is timed with ``time.perf_counter`` (synchronised on CUDA, garbage collector paused); with
    ``threads`` torch runs that many intra-op threads while measuring (restored afterwards). Returns
    ``latency_ms`` (mean), ``latency_ms_std`` (sample std, 0 for one run), ``latency_ms_median``,
    ``latency_cv`` (std / mean), ``latency_load`` (:func:`machine_load`, the higher of before and after
    the timed runs), ``latency_cpu_share`` (this process's CPU time / (wall time x threads) over the timed
    runs; CPU devices only; NaN on CUDA and when the timed runs last under :data:`SHARE_MIN_WINDOW_S`),
    ``latency_threads`` and ``latency_flag`` (:func:`latency_flag`):
    a figure taken while other processes held the cores says so instead of passing for a clean one.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    shape = batch_one(input_shape)
    dev = resolve_device(device)
    net = on_device(model, dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        with preserved_state(net, devices=[dev]), torch.no_grad():
            net.eval()
            times, load, cpu_per_wall = _timed_runs(net, make_input(shape, dev, model_dtype(net)), warmup, runs,
                                                    sync)
    finally:
        torch.set_num_threads(previous_threads)
    mean = statistics.fmean(times)
    std = statistics.stdev(times) if len(times) > 1 else 0.0
    share = cpu_per_wall / used if dev.type == "cpu" else math.nan
    cv = std / mean if mean > 0 else math.nan
    own = (used if dev.type == "cpu" else 1) / max(os.cpu_count() or 1, 1)
    flag = latency_flag(cv, load, share, own)
    if flag:
        logger.warning("latency %.1f ms (median %.1f) is flagged %s: cv %.1f%%, load %.2f per core, CPU share %.2f",
                       mean, statistics.median(times), flag, 100 * cv, load, share)
    return dict(latency_ms=mean, latency_ms_std=std, latency_ms_median=statistics.median(times), latency_cv=cv,
                latency_load=load, latency_cpu_share=share, latency_threads=used, latency_flag=flag)


def measure_efficiency(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device,
                       pam_runs: int = 5, latency_runs: int = 10, latency_warmup: int = 3,
                       latency_threads: int | None = None) -> dict[str, Any]:
    """All whole-model measures in one dict with exactly the keys :data:`EFFICIENCY_KEYS`.

    FLOPs and latency at batch 1; PAM at ``input_shape`` as given (mean and sample std of ``pam_runs``).
    """
    result: dict[str, Any] = dict(params=count_parameters(model))
    result.update(count_flops(model, input_shape, device=device))
    for mode in ("train", "infer"):
        mean, std = measure_pam(model, input_shape, device=device, mode=mode, runs=pam_runs)
        result[f"pam_{mode}_mb"], result[f"pam_{mode}_mb_std"] = mean, std
    result.update(measure_latency(model, input_shape, device=device, warmup=latency_warmup, runs=latency_runs,
                                  threads=latency_threads))
    return {k: result[k] for k in EFFICIENCY_KEYS}
