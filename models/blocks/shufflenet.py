"""ShuffleNetV2 units in 3D (Ma et al., ShuffleNet V2, ECCV 2018), with dilated and large-kernel variants.

Conventions: tensors are (B, C, D, H, W). ``channel_shuffle(x, g)`` views the C channels as a
(g, C/g) grid and transposes it: output channel ``i * g + j`` is input channel ``j * (C/g) + i``
(for g = 2 the two halves are interleaved: [a0, b0, a1, b1, ...]).

Stride-1 unit: split channels in half; identity on the first half, branch on the second; concat;
shuffle (g = 2). Stride-2 unit: both branches see the full input and downsample, each gives out/2.
The stride-1 branch is one (DW kernel^3 conv, dilation d -> norm -> PW -> norm -> ReLU) per rate d.

Deviations: the repository's stride-1 branch was DW-PW-DW-PW with a ReLU after the first DW; the
paper has PW-DW-PW with no ReLU after a depthwise conv. volbench uses one (DW -> norm -> PW -> norm
-> ReLU) pair per dilation rate (two rates of 1 by default, as in the repository's DW-PW-DW-PW)
and no ReLU after any depthwise conv, as in the paper.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .unet_blocks import conv_norm_act, make_norm


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups of ``x`` (B, C, ...); C must be divisible by ``groups``."""
    b, c = x.shape[:2]
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels are not divisible by groups={groups}")
    return x.reshape(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def _dw(ch: int, kernel: int, *, stride: int = 1, dilation: int = 1, norm: str) -> list[nn.Module]:
    pad = dilation * (kernel - 1) // 2
    return [nn.Conv3d(ch, ch, kernel, stride=stride, padding=pad, dilation=dilation, groups=ch, bias=False),
            make_norm(norm, ch)]


def _pw(in_ch: int, out_ch: int, *, norm: str) -> list[nn.Module]:
    return [nn.Conv3d(in_ch, out_ch, 1, bias=False), make_norm(norm, out_ch), nn.ReLU(inplace=True)]


class ShuffleUnit3D(nn.Module):
    """ShuffleNetV2 unit; stride 1 keeps shape (needs in = out, even), stride 2 halves each spatial size.

    Args:
        in_ch, out_ch: channels (``out_ch`` even).
        stride: 1 or 2.
        kernel: depthwise kernel of the stride-1 branch (odd).
        dilations: one DW+PW pair per rate in the stride-1 branch.
        down_kernel: depthwise kernel of the stride-2 branches (odd).
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, kernel: int = 3,
                 dilations: Sequence[int] = (1, 1), down_kernel: int = 3, norm: str = "bn") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if out_ch % 2:
            raise ValueError(f"ShuffleUnit3D needs an even out_ch, got {out_ch}")
        if stride == 1 and in_ch != out_ch:
            raise ValueError(f"a stride-1 ShuffleUnit3D needs in_ch == out_ch, got {in_ch} -> {out_ch}")
        self.stride = stride
        half = out_ch // 2
        if stride == 1:
            layers: list[nn.Module] = []
            for d in dilations:
                layers += _dw(half, kernel, dilation=d, norm=norm) + _pw(half, half, norm=norm)
            self.branch_main = nn.Sequential(*layers)
            self.branch_proj: nn.Module | None = None
        else:
            self.branch_proj = nn.Sequential(*_dw(in_ch, down_kernel, stride=2, norm=norm),
                                             *_pw(in_ch, half, norm=norm))
            self.branch_main = nn.Sequential(*_pw(in_ch, half, norm=norm),
                                             *_dw(half, down_kernel, stride=2, norm=norm),
                                             *_pw(half, half, norm=norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_proj is None:
            keep, work = x.chunk(2, dim=1)
            y = torch.cat([keep, self.branch_main(work)], dim=1)
        else:
            y = torch.cat([self.branch_proj(x), self.branch_main(x)], dim=1)
        return channel_shuffle(y, 2)


class ShuffleNetV2Stem3D(nn.Sequential):
    """Conv 3^3 (in -> out) -> norm -> ReLU -> stride-1 ShuffleUnit3D (out -> out). Keeps resolution."""

    def __init__(self, in_ch: int, out_ch: int, *, kernel: int = 3, dilations: Sequence[int] = (1, 1),
                 norm: str = "bn") -> None:
        super().__init__(conv_norm_act(in_ch, out_ch, norm=norm),
                         ShuffleUnit3D(out_ch, out_ch, kernel=kernel, dilations=dilations, norm=norm))


class ShuffleNetV2Down3D(nn.Sequential):
    """Stride-2 ShuffleUnit3D (in -> out) -> stride-1 unit (out -> out). Halves each spatial size."""

    def __init__(self, in_ch: int, out_ch: int, *, kernel: int = 3, dilations: Sequence[int] = (1, 1),
                 down_kernel: int = 3, norm: str = "bn") -> None:
        super().__init__(ShuffleUnit3D(in_ch, out_ch, stride=2, down_kernel=down_kernel, norm=norm),
                         ShuffleUnit3D(out_ch, out_ch, kernel=kernel, dilations=dilations, norm=norm))
