"""Efficiency measures: parameters, FLOPs, peak activation memory (PAM), stage-wise PAM, latency.

Conventions: FLOPs and latency at batch 1 on the stated input size; memory in MB = 2**20 bytes;
models are called as ``model(x)`` with ``x = randn(input_shape)`` on the device, and a tuple/dict
output is reduced through its first tensor. Every measurement leaves the model as it was (train/eval
flags, parameters, gradients, buffers, global RNG).
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode
from utils.schema import EFFICIENCY_COLUMNS

from .efficiency_common import (MB, batch_one, make_input, model_dtype, on_device, preserved_state,
                                resolve_device, shape_str)
from .efficiency_memory import measure_pam, resolve_stages, stage_wise_pam

logger = logging.getLogger(__name__)

__all__ = ["MB", "EFFICIENCY_KEYS", "count_parameters", "count_parameters_of", "count_flops", "measure_pam",
           "stage_wise_pam", "resolve_stages", "measure_latency", "measure_efficiency"]

EFFICIENCY_KEYS = tuple(EFFICIENCY_COLUMNS)


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
            macs, _ = thop.profile(copy.deepcopy(model), inputs=(x,), verbose=False)
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
    with preserved_state(net, devices=[dev]):
        net.eval()
        x = make_input(shape, dev, model_dtype(net))
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                net(x)
            flops_thop = _thop_flops(net, x)
    return dict(flops_torch=float(counter.get_total_flops()), flops_thop=flops_thop, flops_input=shape_str(shape))


def measure_latency(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device,
                    warmup: int = 3, runs: int = 10) -> dict:
    """Forward latency in ms at batch 1, eval mode, ``no_grad``, after ``warmup`` calls.

    Timed with ``time.perf_counter`` around each call, synchronised on CUDA. Returns ``latency_ms``
    (mean), ``latency_ms_std`` (sample std, 0 for one run) and ``latency_ms_median``.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    shape = batch_one(input_shape)
    dev = resolve_device(device)
    net = on_device(model, dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    times = []
    with preserved_state(net, devices=[dev]), torch.no_grad():
        net.eval()
        x = make_input(shape, dev, model_dtype(net))
        for i in range(warmup + runs):
            sync()
            start = time.perf_counter()
            net(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return dict(latency_ms=statistics.fmean(times),
                latency_ms_std=statistics.stdev(times) if len(times) > 1 else 0.0,
                latency_ms_median=statistics.median(times))


def measure_efficiency(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device,
                       pam_runs: int = 5, latency_runs: int = 10, latency_warmup: int = 3) -> dict[str, Any]:
    """All whole-model measures in one dict with exactly the keys :data:`EFFICIENCY_KEYS`.

    FLOPs and latency at batch 1; PAM at ``input_shape`` as given (mean and sample std of ``pam_runs``).
    """
    result: dict[str, Any] = dict(params=count_parameters(model))
    result.update(count_flops(model, input_shape, device=device))
    for mode in ("train", "infer"):
        mean, std = measure_pam(model, input_shape, device=device, mode=mode, runs=pam_runs)
        result[f"pam_{mode}_mb"], result[f"pam_{mode}_mb_std"] = mean, std
    result.update(measure_latency(model, input_shape, device=device, warmup=latency_warmup, runs=latency_runs))
    return {k: result[k] for k in EFFICIENCY_KEYS}
