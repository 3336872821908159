"""Plain U-Net building blocks (3D): double conv, down (max-pool or strided), up, 1x1 output.

Conventions: tensors are (B, C, D, H, W); convolutions are 3^3 with padding 1 and no bias, each
followed by a norm layer and ReLU, as in MODEL_SPECS 1.2.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("bn", "in", "gn")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Norm layer by short name: ``bn`` BatchNorm3d, ``in`` affine InstanceNorm3d, ``gn`` GroupNorm.

    GroupNorm uses 8 groups, or 4 when ``channels % 8 != 0``, or 1 when neither divides.
    """
    if kind == "bn":
        return nn.BatchNorm3d(channels)
    if kind == "in":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "gn":
        groups = 8 if channels % 8 == 0 else 4 if channels % 4 == 0 else 1
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm {kind!r} is not one of {NORMS}")


def conv_norm_act(
    in_ch: int, out_ch: int, *, stride: int = 1, dilation: int = 1, kernel: int = 3, norm: str = "bn"
) -> nn.Sequential:
    """Conv3d (no bias, 'same' padding for stride 1) -> norm -> ReLU."""
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
        make_norm(norm, out_ch),
        nn.ReLU(inplace=True),
    )


class DoubleConv3D(nn.Sequential):
    """Two (3^3 conv -> norm -> ReLU); the first may carry a stride or a dilation."""

    def __init__(self, in_ch: int, out_ch: int, *, mid_ch: int | None = None, stride: int = 1,
                 norm: str = "bn") -> None:
        mid = mid_ch or out_ch
        super().__init__(conv_norm_act(in_ch, mid, stride=stride, norm=norm),
                         conv_norm_act(mid, out_ch, norm=norm))


class Down3D(nn.Sequential):
    """MaxPool3d(2) -> DoubleConv3D: halves each spatial size."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: str = "bn") -> None:
        super().__init__(nn.MaxPool3d(2), DoubleConv3D(in_ch, out_ch, norm=norm))


class Down3DStride(DoubleConv3D):
    """Strided 3^3 conv (stride 2) -> conv: same parameter count as :class:`Down3D`."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: str = "bn") -> None:
        super().__init__(in_ch, out_ch, stride=2, norm=norm)


class Up3D(nn.Module):
    """ConvTranspose3d (x2) -> pad/crop to the skip -> concat [skip, up] -> DoubleConv3D.

    Args:
        in_ch: channels of the deeper input; the transposed conv halves them.
        out_ch: output channels.
        skip_ch: channels of the skip connection (default ``in_ch // 2``).
    """

    def __init__(self, in_ch: int, out_ch: int, *, skip_ch: int | None = None, norm: str = "bn") -> None:
        super().__init__()
        skip = in_ch // 2 if skip_ch is None else skip_ch
        self.up = nn.ConvTranspose3d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv3D(in_ch // 2 + skip, out_ch, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        diff = [s - u for s, u in zip(skip.shape[2:], x.shape[2:])]
        if any(diff):
            pads: list[int] = []
            for d in reversed(diff):
                pads += [d // 2, d - d // 2]
            x = F.pad(x, pads)
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv3D(nn.Conv3d):
    """1^3 convolution to class logits."""

    def __init__(self, in_ch: int, n_classes: int) -> None:
        super().__init__(in_ch, n_classes, kernel_size=1)
