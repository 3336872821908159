"""Peak activation memory (PAM) for a training step and for inference, whole-model and per stage.

Units: MB = 2**20 bytes. A train step is forward + ``first_tensor(out).float().mean()`` (+ backward
on CUDA); inference is a ``no_grad`` forward in eval mode. Every function leaves the model as it was
(see :func:`preserved_state`). Definitions:

* CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` minus ``memory_allocated`` just
  before the step; weights, optimizer state, the input and pre-allocated gradient buffers are excluded.
* CPU: train = bytes of distinct tensors saved for backward during the forward pass; infer = peak bytes
  of live activation storages during the forward (:mod:`metrics.efficiency_trackers`).

Both are the network's own figures: measured with PyTorch's own convolutions (:func:`utils.cpu_conv.native_convs`),
so the batch-1 CPU depth split (which saves its stacked input halves as well) does not enter them.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence

import torch
import torch.nn as nn

from utils.cpu_conv import native_convs

from .efficiency_common import (MB, check_shape, excluded_pointers, first_tensor, make_input, model_dtype,
                                on_device, preserved_state, resolve_device)
from .efficiency_trackers import OUTSIDE, LiveActivationTracker, SavedTensorRecorder, StageStack

logger = logging.getLogger(__name__)

MODES = ("train", "infer")


def _cpu_pam_bytes(model: nn.Module, x: torch.Tensor, mode: str) -> int:
    """One CPU measurement in bytes (the model is already in the right train/eval mode)."""
    excluded = excluded_pointers(model, x)
    if mode == "train":
        with torch.enable_grad(), SavedTensorRecorder(excluded).recording() as rec:
            first_tensor(model(x)).float().mean()
        return rec.total
    with torch.no_grad(), LiveActivationTracker(excluded) as tracker:
        model(x)
    return tracker.peak


def _cuda_pam_bytes(model: nn.Module, x: torch.Tensor, mode: str) -> int:
    """One CUDA measurement in bytes: allocator peak of the step minus what was allocated before it."""
    dev = x.device
    if mode == "train":
        for p in model.parameters():  # gradient buffers exist before the step, as after a first step
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    if mode == "train":
        with torch.enable_grad():
            first_tensor(model(x)).float().mean().backward()
    else:
        with torch.no_grad():
            model(x)
    torch.cuda.synchronize(dev)
    return max(0, torch.cuda.max_memory_allocated(dev) - before)


def measure_pam(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device,
                mode: str = "train", runs: int = 5) -> tuple[float, float]:
    """Peak activation memory of ``model(x)``, ``x = randn(input_shape)``: (mean, sample std) in MB.

    ``mode`` is ``"train"`` (forward + backward of ``out.float().mean()``; on CPU the bytes saved for
    backward) or ``"infer"`` (``no_grad`` forward in eval mode; on CPU the peak live activation bytes).
    CPU numbers are deterministic (std 0). The model's state is left unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    check_shape(input_shape)
    dev = resolve_device(device)
    net = on_device(model, dev)
    measure = _cuda_pam_bytes if dev.type == "cuda" else _cpu_pam_bytes
    values = []
    with preserved_state(net, devices=[dev]), native_convs():
        net.train(mode == "train")
        x = make_input(input_shape, dev, model_dtype(net))
        for _ in range(runs):
            values.append(measure(net, x, mode) / MB)
            for p in net.parameters():
                p.grad = None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def cuda_plain_step_peak_mb(model: nn.Module, input_shape: Sequence[int], *, with_optimizer: bool = False) -> float:
    """Reference for the CUDA train PAM: ``max_memory_allocated`` of a plain training step minus what was
    allocated before it, in MB.

    The step is what a training loop does: forward, ``out.float().mean()``, backward into gradient buffers that
    exist from an earlier step (``zero_grad(set_to_none=False)``), and with ``with_optimizer`` an AdamW step
    (whose state exists from that earlier step too). The model is on CUDA; its state is left unchanged.
    """
    params = list(model.parameters())
    dev = params[0].device
    with preserved_state(model, devices=[dev]):
        model.train()
        x = make_input(input_shape, dev, model_dtype(model))
        opt = torch.optim.AdamW(params, lr=0.0) if with_optimizer else None

        def step() -> None:
            first_tensor(model(x)).float().mean().backward()
            if opt is not None:
                opt.step()
            model.zero_grad(set_to_none=False)
        step()  # gradient buffers and optimizer state now exist, as after a first step
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        step()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before
        del opt
    return max(0, peak) / MB


def resolve_stages(model: nn.Module) -> dict[str, nn.Module]:
    """Stage modules by name: ``model.pam_stages`` (dotted names) if defined, else the top-level children."""
    names = getattr(model, "pam_stages", None)
    if names is None:
        return dict(model.named_children())
    stages = {}
    for name in names:
        try:
            stages[name] = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"pam_stages names {name!r}, which is not a submodule of "
                             f"{type(model).__name__}") from err
    return stages


def stage_wise_pam(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device) -> list[dict]:
    """Activation memory per stage, stages in call order: ``[{stage, pam_train_mb, pam_infer_mb}, ...]``.

    Stages are the model's top-level children (``named_children``), or the dotted module names in
    ``model.pam_stages`` when the model defines it; a stage that never runs is omitted.
    Train: bytes saved for backward while the stage runs (innermost stage when stages nest; a storage
    saved twice counts for the first stage; the train rows sum to the CPU train PAM). Infer: the peak
    of *all* live activation bytes while the stage runs (earlier stages' tensors still held, e.g. skip
    connections, included), so the largest infer row is the inference PAM. Both are CPU tracker
    measurements, whatever ``device`` is. Bytes created outside every stage form a row ``"<other>"``
    (only when non-zero).
    """
    check_shape(input_shape)
    dev = resolve_device(device)
    net = on_device(model, dev)
    stages = resolve_stages(net)
    with preserved_state(net, devices=[dev]), native_convs():
        x = make_input(input_shape, dev, model_dtype(net))
        excluded = excluded_pointers(net, x)
        net.train(True)
        train_stack = StageStack()
        with torch.enable_grad(), train_stack.hooked(stages), \
                SavedTensorRecorder(excluded, train_stack).recording() as rec:
            first_tensor(net(x)).float().mean()
        net.train(False)
        infer_stack = StageStack()
        with torch.no_grad(), infer_stack.hooked(stages), LiveActivationTracker(excluded, infer_stack) as tracker:
            net(x)
    order = train_stack.order + [s for s in infer_stack.order if s not in train_stack.order]
    rows = [dict(stage=s, pam_train_mb=rec.by_stage.get(s, 0) / MB,
                 pam_infer_mb=tracker.stage_peak.get(s, 0) / MB) for s in order]
    if rec.by_stage.get(OUTSIDE, 0) > 0:
        rows.append(dict(stage=OUTSIDE, pam_train_mb=rec.by_stage[OUTSIDE] / MB, pam_infer_mb=float("nan")))
    return rows
