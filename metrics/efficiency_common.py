"""Shared helpers of the efficiency measures: devices, inputs, outputs, and state preservation.

Conventions: ``input_shape`` is (B, C, *spatial) of positive ints; memory in MB means 2**20 bytes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

MB = float(2**20)  # 1 MB = 2**20 bytes (MiB) everywhere in volbench's efficiency measures.
INPUT_SEED = 0  # inputs are drawn from a private generator: measurements never touch the global RNG.


def check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Validate ``input_shape`` (B, C, *spatial; at least B and C) and return it as a tuple of ints."""
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"input_shape must be (B, C, *spatial) of positive ints, got {input_shape!r}")
    return shape


def batch_one(input_shape: Sequence[int]) -> tuple[int, ...]:
    """``input_shape`` with the batch size set to 1 (FLOPs and latency are stated at batch 1)."""
    shape = check_shape(input_shape)
    return (1, *shape[1:])


def shape_str(input_shape: Sequence[int]) -> str:
    """``(1, 4, 128, 128, 128)`` -> ``"1x4x128x128x128"``."""
    return "x".join(str(s) for s in check_shape(input_shape))


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cuda"`` -> ``cuda:<current>``; raise ``ValueError`` when CUDA is asked for but missing."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {dev} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def make_input(input_shape: Sequence[int], device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard-normal input of ``input_shape`` on ``device`` (float32 unless the model's dtype is given)."""
    g = torch.Generator().manual_seed(INPUT_SEED)
    return torch.randn(check_shape(input_shape), generator=g, dtype=dtype or torch.float32).to(device)


def model_dtype(model: nn.Module) -> torch.dtype:
    """Dtype of the model's first floating-point parameter (float32 when it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def first_tensor(out: Any) -> torch.Tensor:
    """First tensor of a model output: the tensor itself, or the first one in a tuple/list/dict."""
    if isinstance(out, torch.Tensor):
        return out
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    for item in items:
        try:
            return first_tensor(item)
        except ValueError:
            continue
    raise ValueError(f"model output of type {type(out).__name__} holds no tensor")


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model itself when all its tensors are on ``device``, else a deep copy moved there."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device == device for t in tensors):
        return model
    logger.debug("measuring a copy of %s moved to %s", type(model).__name__, device)
    return copy.deepcopy(model).to(device)


def storage_key(t: torch.Tensor) -> tuple[int, int]:
    """(data pointer, bytes) of the storage behind ``t``: views of one buffer share the key."""
    try:
        st = t.untyped_storage()
        return st.data_ptr(), st.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse / nested / opaque tensors have no plain storage
        return id(t), t.numel() * t.element_size()


def excluded_pointers(model: nn.Module, *inputs: torch.Tensor) -> set[int]:
    """Storage pointers of the model's parameters and buffers and of the inputs (not activations)."""
    tensors = [*model.parameters(), *model.buffers(), *inputs]
    return {storage_key(t)[0] for t in tensors}


@contextmanager
def preserved_state(model: nn.Module, devices: Sequence[torch.device] = ()) -> Iterator[nn.Module]:
    """Run a measurement and leave the model as it was.

    Restores every module's train/eval flag, the buffers (BatchNorm running stats), the parameter
    values and ``.grad`` references, and the global RNG state (CPU and the given CUDA devices). Gradients
    are set to ``None`` inside, so a measurement's backward never adds into the caller's gradients.
    """
    flags = {m: m.training for m in model.modules()}
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    grads = {p: p.grad for p in model.parameters()}
    cuda = [d for d in devices if torch.device(d).type == "cuda"]
    try:
        with torch.random.fork_rng(devices=cuda, enabled=True):
            for p in model.parameters():
                p.grad = None
            yield model
    finally:
        with torch.no_grad():
            current = model.state_dict(keep_vars=True)
            for k, v in state.items():
                if k in current and current[k] is not None:
                    current[k].copy_(v)
        for p, g in grads.items():
            p.grad = g
        for m, flag in flags.items():
            m.train(flag)
