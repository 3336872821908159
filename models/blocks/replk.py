"""RepLKNet blocks in 3D (Ding et al., Scaling Up Your Kernels to 31x31, CVPR 2022).

Conventions: tensors are (B, C, D, H, W). The large-kernel depthwise conv (13^3 by default) trains
with a parallel small-kernel (3^3) depthwise branch; each branch is conv (no bias) -> BatchNorm and
the two are summed. :meth:`ReparamLargeKernelConv3D.reparameterize` folds both BatchNorms (their
running statistics, i.e. eval-mode behaviour) and the zero-padded small kernel into one biased
large-kernel conv, giving the same eval-mode outputs with one conv. The re-parameterised branch
always uses BatchNorm (folding needs it); the other norms follow ``norm``.

Deviation from the paper (as in MODEL_SPECS 4): one kernel size for all stages (13^3 instead of
31/29/27/13) and small kernel 3^3 instead of 5, to keep 3D cost bounded.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from .unet_blocks import make_norm

logger = logging.getLogger(__name__)


def _dw_conv(channels: int, kernel: int, stride: int = 1) -> nn.Conv3d:
    """Depthwise Conv3d without bias, 'same' padding for stride 1."""
    return nn.Conv3d(channels, channels, kernel, stride=stride, padding=kernel // 2, groups=channels, bias=False)


def _pw_norm(in_ch: int, out_ch: int, norm: str, act: bool) -> nn.Sequential:
    """1^3 conv (no bias) -> norm [-> ReLU]."""
    layers: list[nn.Module] = [nn.Conv3d(in_ch, out_ch, 1, bias=False), make_norm(norm, out_ch)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Transition3D(nn.Sequential):
    """PW 1^3 (norm, ReLU) -> DW 3^3 stride 2 (norm, ReLU): halves each spatial size."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: str = "bn") -> None:
        super().__init__(_pw_norm(in_ch, out_ch, norm, act=True), _dw_conv(out_ch, 3, stride=2),
                         make_norm(norm, out_ch), nn.ReLU(inplace=True))


def _fold_bn(weight: torch.Tensor, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv (no bias) -> BN, using the BN's running statistics."""
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std
    return weight * scale.reshape(-1, 1, 1, 1, 1), bn.bias - bn.running_mean * scale


class ReparamLargeKernelConv3D(nn.Module):
    """Depthwise ``kernel``^3 conv + BN, plus a parallel ``small_kernel``^3 DW conv + BN, summed.

    Args:
        channels: input = output channels (depthwise).
        kernel: large kernel size (odd), default 13.
        small_kernel: parallel small kernel size (odd, <= kernel), default 3; ``None`` disables it.
        stride: stride of both branches.
    """

    def __init__(self, channels: int, *, kernel: int = 13, small_kernel: int | None = 3, stride: int = 1) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {kernel}")
        if small_kernel is not None and (small_kernel % 2 == 0 or small_kernel > kernel):
            raise ValueError(f"small_kernel must be odd and <= kernel={kernel}, got {small_kernel}")
        self.channels, self.kernel, self.small_kernel, self.stride = channels, kernel, small_kernel, stride
        self.lk_conv = _dw_conv(channels, kernel, stride)
        self.lk_bn = nn.BatchNorm3d(channels)
        self.small_conv = _dw_conv(channels, small_kernel, stride) if small_kernel else None
        self.small_bn = nn.BatchNorm3d(channels) if small_kernel else None
        self.reparam: nn.Conv3d | None = None

    @property
    def is_reparameterized(self) -> bool:
        """True once :meth:`reparameterize` replaced the branches by one conv."""
        return self.reparam is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        y = self.lk_bn(self.lk_conv(x))
        if self.small_conv is not None and self.small_bn is not None:
            y = y + self.small_bn(self.small_conv(x))
        return y

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both BNs and the zero-padded small kernel into one biased large-kernel DW conv.

        The result equals the eval-mode output of the two branches. Calling it twice is a no-op.
        """
        if self.reparam is not None:
            return
        if self.training:
            logger.warning("reparameterize() on a module in training mode: the fused conv uses the BN "
                           "running statistics, so it matches eval-mode outputs only")
        weight, bias = _fold_bn(self.lk_conv.weight, self.lk_bn)
        if self.small_conv is not None and self.small_bn is not None:
            w_small, b_small = _fold_bn(self.small_conv.weight, self.small_bn)
            pad = (self.kernel - self.small_kernel) // 2  # type: ignore[operator]
            weight = weight + F.pad(w_small, [pad] * 6)
            bias = bias + b_small
        conv = nn.Conv3d(self.channels, self.channels, self.kernel, stride=self.stride, padding=self.kernel // 2,
                         groups=self.channels, bias=True).to(weight.device, weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.reparam = conv
        del self.lk_conv, self.lk_bn, self.small_conv, self.small_bn
        self.small_conv = self.small_bn = None


class RepLKBlock3D(nn.Module):
    """Pre-norm -> PW expand to round(expand * C) (norm, ReLU) -> RepLK DW -> ReLU -> PW project (norm) -> + x.

    Shape-preserving: (B, C, D, H, W) -> (B, C, D, H, W).
    """

    def __init__(self, channels: int, *, expand: float = 1.5, kernel: int = 13, small_kernel: int | None = 3,
                 norm: str = "bn") -> None:
        super().__init__()
        hidden = max(1, round(expand * channels))
        self.pre_norm = make_norm(norm, channels)
        self.expand = _pw_norm(channels, hidden, norm, act=True)
        self.large_kernel = ReparamLargeKernelConv3D(hidden, kernel=kernel, small_kernel=small_kernel)
        self.act = nn.ReLU(inplace=True)
        self.project = _pw_norm(hidden, channels, norm, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.pre_norm(x))
        y = self.project(self.act(self.large_kernel(y)))
        return x + y


class ConvFFN3D(nn.Module):
    """Pre-norm -> PW to ``ratio * C`` (norm) -> GELU -> PW back (norm) -> + x. Shape-preserving."""

    def __init__(self, channels: int, *, ratio: float = 4.0, norm: str = "bn") -> None:
        super().__init__()
        hidden = max(1, round(ratio * channels))
        self.pre_norm = make_norm(norm, channels)
        self.up = _pw_norm(channels, hidden, norm, act=False)
        self.act = nn.GELU()
        self.down = _pw_norm(hidden, channels, norm, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.act(self.up(self.pre_norm(x))))


class RepLKStage3D(nn.Sequential):
    """Downsampling stage: Transition3D (in -> out, stride 2) -> RepLKBlock3D -> ConvFFN3D."""

    def __init__(self, in_ch: int, out_ch: int, *, ffn_ratio: float = 4.0, kernel: int = 13,
                 small_kernel: int | None = 3, norm: str = "bn") -> None:
        super().__init__(Transition3D(in_ch, out_ch, norm=norm),
                         RepLKBlock3D(out_ch, kernel=kernel, small_kernel=small_kernel, norm=norm),
                         ConvFFN3D(out_ch, ratio=ffn_ratio, norm=norm))


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Call :meth:`ReparamLargeKernelConv3D.reparameterize` on every such submodule; returns ``model``.

    Put the model in eval mode first: the fused convs reproduce eval-mode outputs.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, ReparamLargeKernelConv3D) and not module.is_reparameterized:
            module.reparameterize()
            count += 1
    logger.info("re-parameterised %d large-kernel convs", count)
    return model
