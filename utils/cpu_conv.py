"""Batch-1 3D convolutions on oneDNN on the CPU, by a depth split (a workaround for PyTorch's heuristic).

PyTorch (ATen ``ConvParams::use_mkldnn``) runs a float32 CPU convolution on oneDNN only when the batch is
larger than 1, the groups larger than 1, the kernel larger than 3 in H and W, or ``N*C*D*H > 20480``;
every other 3D convolution goes to the native ``slow_conv3d`` / ``slow_conv_transpose3d`` (vol2col + GEMM),
forward and backward. At batch 1 with small patches that is most convolutions of a U-Net, 3-10x slower.

The workaround: cut the (zero-padded) input along depth into two halves that overlap by the kernel's
halo, stack them as a batch of 2 (which oneDNN takes, forward and backward) and join the two output
halves. The result is the same convolution mathematically; only the summation order of the kernel
differs (oneDNN vs. the native GEMM), at the 1e-6 relative level. It is therefore off whenever
``torch.are_deterministic_algorithms_enabled()`` (``--deterministic``), and inside :func:`native_convs`.

Applied per module by :func:`apply_depth_split_convs` (the class of each eligible ``nn.Conv3d`` /
``nn.ConvTranspose3d`` is swapped for a subclass: same parameters, same ``state_dict``, ``isinstance``
unchanged). The decision is made at every call from the input: CUDA inputs, batches > 1, non-float32
inputs, shapes oneDNN already takes, outputs thinner than :data:`MIN_OUT_DEPTH` rows all use the
module's own convolution.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = ["MIN_OUT_DEPTH", "DepthSplitConv3d", "DepthSplitConvTranspose3d", "apply_depth_split_convs",
           "count_depth_split_convs", "depth_split_conv3d", "depth_split_conv_transpose3d", "native_convs",
           "revert_depth_split_convs", "slow_kernel", "split_active"]

MIN_OUT_DEPTH = 4  # below 4 output rows (2 per half) the halo overhead outweighs oneDNN's speed (measured)
_SELECT = getattr(torch._C, "_select_conv_backend", None)  # private ATen hook; without it the split stays off
_BACKENDS = getattr(torch._C, "_ConvBackend", None)
_SLOW = {getattr(_BACKENDS, n) for n in ("Slow3d", "SlowDilated3d", "SlowTranspose3d") if hasattr(_BACKENDS, n)}
_state = threading.local()
_decisions: dict[tuple, bool] = {}  # per shape/parameters/threads: does the split reach oneDNN from a slow path?


def split_active() -> bool:
    """Whether the split may be used now: oneDNN available and enabled, deterministic algorithms off,
    not inside :func:`native_convs`."""
    return (not getattr(_state, "native", False) and _SELECT is not None and bool(_SLOW)
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.are_deterministic_algorithms_enabled())


@contextlib.contextmanager
def native_convs() -> Iterator[None]:
    """Inside the block every wrapped convolution runs PyTorch's own path (e.g. to count FLOPs or memory)."""
    previous = getattr(_state, "native", False)
    _state.native = True
    try:
        yield
    finally:
        _state.native = previous


def _would_split(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple, dilation: tuple,
                 groups: int, transposed: bool, output_padding: tuple) -> bool:
    """True when PyTorch takes a native slow kernel (``Slow3d``, ``SlowDilated3d``, ``SlowTranspose3d``) at batch 1
    but another (oneDNN; its transposed backend has no Python name) at batch 2, as ``_select_conv_backend`` says."""
    key = (tuple(x.shape[1:]), tuple(weight.shape), stride, padding, dilation, groups, transposed, output_padding,
           torch.get_num_threads(), x.is_contiguous())
    hit = _decisions.get(key)
    if hit is None:
        args = (weight, None, list(stride), list(padding), list(dilation), transposed, list(output_padding), groups)
        single = _SELECT(x, *args)
        double = _SELECT(x.expand(2, *x.shape[1:]), *args)
        hit = single in _SLOW and double not in _SLOW
        _decisions[key] = hit
    return hit


def slow_kernel(module: nn.Conv3d | nn.ConvTranspose3d, x: torch.Tensor) -> bool:
    """Whether PyTorch's own choice for ``module`` on input ``x`` is a native slow kernel (``Slow3d``,
    ``SlowDilated3d``, ``SlowTranspose3d``); False where ``_select_conv_backend`` is missing."""
    if _SELECT is None:
        return False
    transposed = isinstance(module, nn.ConvTranspose3d)
    out_pad = list(module.output_padding) if transposed else [0, 0, 0]
    return _SELECT(x, module.weight, None, list(module.stride), list(module.padding), list(module.dilation),
                   transposed, out_pad, module.groups) in _SLOW


def _eligible_input(x: torch.Tensor) -> bool:
    return (x.dim() == 5 and x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32
            and x.layout == torch.strided and not x.is_mkldnn and split_active())


def depth_split_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple,
                       padding: tuple, dilation: tuple, groups: int) -> torch.Tensor:
    """``F.conv3d`` of a batch-1 input computed as one batch-2 convolution of two depth halves.

    Both halves yield ``m = ceil(D_out / 2)`` output rows: the first rows ``[0, m)``, the second rows
    ``[D_out - m, D_out)``; with an odd ``D_out`` the shared row is taken from the first half.
    """
    sd, pd, dd = stride[0], padding[0], dilation[0]
    xp = F.pad(x, (0, 0, 0, 0, pd, pd)) if pd else x
    span = dd * (weight.shape[2] - 1) + 1  # input rows one output row reads
    d_out = (xp.shape[2] - span) // sd + 1
    m = (d_out + 1) // 2
    length = (m - 1) * sd + span
    second = (d_out - m) * sd
    halves = torch.cat([xp[:, :, :length], xp[:, :, second:second + length]], dim=0)
    y = F.conv3d(halves, weight, bias, stride, (0, padding[1], padding[2]), dilation, groups)
    return torch.cat([y[:1], y[1:, :, 2 * m - d_out:]], dim=2)


def depth_split_conv_transpose3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 stride: tuple, padding: tuple, output_padding: tuple, groups: int,
                                 dilation: tuple) -> torch.Tensor:
    """``F.conv_transpose3d`` of a batch-1 input as one batch-2 call, for a depth kernel equal to the depth
    stride with no depth padding (each input row owns ``stride`` output rows: the halves do not overlap)."""
    s = stride[0]
    depth = x.shape[2]
    m = (depth + 1) // 2
    halves = torch.cat([x[:, :, :m], x[:, :, depth - m:]], dim=0)
    y = F.conv_transpose3d(halves, weight, bias, stride, (0, padding[1], padding[2]),
                           (0, output_padding[1], output_padding[2]), groups, dilation)
    return torch.cat([y[:1], y[1:, :, (2 * m - depth) * s:]], dim=2)


class DepthSplitConv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes :func:`depth_split_conv3d` where PyTorch would run ``slow_conv3d``."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (self.padding_mode == "zeros" and not isinstance(self.padding, str) and _eligible_input(input)
                and self._out_depth(input.shape[2]) >= MIN_OUT_DEPTH
                and _would_split(input, weight, self.stride, self.padding, self.dilation, self.groups, False,
                                 (0, 0, 0))):
            return depth_split_conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)

    def _out_depth(self, depth: int) -> int:
        span = self.dilation[0] * (self.kernel_size[0] - 1) + 1
        return (depth + 2 * int(self.padding[0]) - span) // self.stride[0] + 1


class DepthSplitConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` that takes :func:`depth_split_conv_transpose3d` where PyTorch would run
    ``slow_conv_transpose3d`` (depth kernel == depth stride, no depth padding, no ``output_size``)."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (output_size is None and self.padding_mode == "zeros" and self._splittable()
                and _eligible_input(input) and input.shape[2] >= MIN_OUT_DEPTH // 2
                and _would_split(input, self.weight, self.stride, self.padding, self.dilation, self.groups, True,
                                 tuple(self.output_padding))):
            return depth_split_conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                                self.output_padding, self.groups, self.dilation)
        return super().forward(input, output_size)

    def _splittable(self) -> bool:
        return (self.kernel_size[0] == self.stride[0] and self.padding[0] == 0 and self.output_padding[0] == 0
                and self.dilation[0] == 1)


_SWAPS: dict[type, type] = {nn.Conv3d: DepthSplitConv3d, nn.ConvTranspose3d: DepthSplitConvTranspose3d}
_ORIGINAL = "_depth_split_original_class"


def _split_class(cls: type) -> type | None:
    """The depth-split class for ``cls``: for plain ``nn.Conv3d``/``nn.ConvTranspose3d``, or a subclass that
    keeps their forward (e.g. a named 1x1 output conv) a cached subclass of both; ``None`` otherwise."""
    if cls in _SWAPS:
        return _SWAPS[cls]
    if cls in _SWAPS.values() or issubclass(cls, (DepthSplitConv3d, DepthSplitConvTranspose3d)):
        return None
    for base, mixin in ((nn.Conv3d, DepthSplitConv3d), (nn.ConvTranspose3d, DepthSplitConvTranspose3d)):
        if issubclass(cls, base) and cls.forward is base.forward and cls._conv_forward is base._conv_forward:
            name = f"DepthSplit_{cls.__module__.replace('.', '_')}_{cls.__qualname__.replace('.', '_')}"
            made = globals().get(name)
            if made is None:  # registered in this module so that pickling finds it by name
                made = type(name, (mixin, cls), {"__module__": __name__, "__qualname__": name})
                globals()[name] = made
            _SWAPS[cls] = made
            return made
    return None


def apply_depth_split_convs(model: nn.Module) -> int:
    """Swap every eligible 3D (transposed) convolution of ``model`` in place; returns how many were swapped.

    Parameters, buffers, hooks and the ``state_dict`` stay as they are; :func:`revert_depth_split_convs` undoes it.
    """
    count = 0
    for module in model.modules():
        cls = type(module)
        target = _split_class(cls)
        if target is not None:
            setattr(module, _ORIGINAL, cls)
            module.__class__ = target
            count += 1
    log.debug("depth-split convolutions on %d modules of %s", count, type(model).__name__)
    return count


def revert_depth_split_convs(model: nn.Module) -> int:
    """Give every swapped module its original class back; returns how many were reverted."""
    count = 0
    for module in model.modules():
        original = module.__dict__.pop(_ORIGINAL, None)
        if original is not None:
            module.__class__ = original
            count += 1
    return count


def count_depth_split_convs(model: nn.Module) -> int:
    """Modules of ``model`` currently swapped by :func:`apply_depth_split_convs`."""
    return sum(1 for m in model.modules() if _ORIGINAL in m.__dict__)
