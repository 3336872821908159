"""GhostNet blocks in 3D (Han et al., GhostNet: More Features from Cheap Operations, CVPR 2020).

Conventions: tensors are (B, C, D, H, W). A ghost module makes ``ceil(out / ratio)`` "intrinsic"
channels with a primary conv and the rest with a cheap depthwise 3^3 conv on them, concatenates and
keeps the first ``out`` channels.

Deviations from the paper, following the repository's 3D version (MODEL_SPECS 1.9, 4): the first
ghost module of the bottleneck uses a 3^3 primary conv that carries the stride (no separate DW
stride-2 conv), there is no squeeze-excitation, and there is no projection shortcut: the residual
is the identity when stride is 1 and in = out, and absent otherwise (the repository built a stride-2
shortcut but never used it, so volbench does not build it).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .unet_blocks import make_norm


class GhostModule3D(nn.Module):
    """Primary conv (in -> ceil(out/ratio)) + cheap DW conv for the remaining channels -> ``out`` channels.

    Args:
        in_ch, out_ch: channels.
        kernel: primary conv kernel (1 in the paper; 3 where it carries a stride).
        stride: stride of the primary conv (the cheap op keeps resolution).
        ratio: ``out / intrinsic`` channels, >= 2.
        dw_kernel: kernel of the cheap depthwise conv.
        act: ReLU after both convs (the second ghost module of a bottleneck is linear).
    """

    def __init__(self, in_ch: int, out_ch: int, *, kernel: int = 1, stride: int = 1, ratio: int = 2,
                 dw_kernel: int = 3, act: bool = True, norm: str = "bn") -> None:
        super().__init__()
        if ratio < 2:
            raise ValueError(f"ghost ratio must be >= 2, got {ratio}")
        self.out_ch = out_ch
        init = math.ceil(out_ch / ratio)
        cheap = init * (ratio - 1)
        self.primary = nn.Sequential(
            nn.Conv3d(in_ch, init, kernel, stride=stride, padding=kernel // 2, bias=False),
            make_norm(norm, init), nn.ReLU(inplace=True) if act else nn.Identity())
        self.cheap = nn.Sequential(
            nn.Conv3d(init, cheap, dw_kernel, padding=dw_kernel // 2, groups=init, bias=False),
            make_norm(norm, cheap), nn.ReLU(inplace=True) if act else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)[:, : self.out_ch]


class GhostBottleneck3D(nn.Module):
    """Ghost (in -> out/2, 3^3 primary conv carrying ``stride``, ReLU) -> ghost (out/2 -> out, linear).

    Identity residual when ``stride == 1`` and ``in_ch == out_ch``. Stride 2 halves each spatial size.
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, ratio: int = 2, norm: str = "bn") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        mid = max(1, out_ch // 2)
        self.ghost1 = GhostModule3D(in_ch, mid, kernel=3, stride=stride, ratio=ratio, act=True, norm=norm)
        self.ghost2 = GhostModule3D(mid, out_ch, ratio=ratio, act=False, norm=norm)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost2(self.ghost1(x))
        return x + y if self.residual else y
