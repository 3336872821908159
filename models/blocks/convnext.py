"""ConvNeXt blocks in 3D (Liu et al., A ConvNet for the 2020s, CVPR 2022).

Conventions: tensors are (B, C, D, H, W). Block: DW 7^3 conv (bias) -> norm -> PW to 4C -> GELU ->
PW back -> per-channel layer scale (init 1e-6) -> + x. Downsampling: norm -> 2^3 conv stride 2.

Deviations from the paper, following the repository's 3D version (MODEL_SPECS 1.9, 4): the norm is
BatchNorm by default (``norm="bn"``; the paper uses LayerNorm), two blocks per downsampling stage
and no stochastic depth (DropPath).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .unet_blocks import make_norm


class ConvNeXtBlock3D(nn.Module):
    """Shape-preserving ConvNeXt block with layer scale (``layer_scale=0`` disables it)."""

    def __init__(self, channels: int, *, kernel: int = 7, mlp_ratio: float = 4.0, layer_scale: float = 1e-6,
                 norm: str = "bn") -> None:
        super().__init__()
        hidden = max(1, round(mlp_ratio * channels))
        self.dw = nn.Conv3d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = make_norm(norm, channels)
        self.pw1 = nn.Conv3d(channels, hidden, 1)
        self.act = nn.GELU()
        self.pw2 = nn.Conv3d(hidden, channels, 1)
        self.gamma = nn.Parameter(torch.full((channels, 1, 1, 1), layer_scale)) if layer_scale > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(self.act(self.pw1(self.norm(self.dw(x)))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + y


class ConvNeXtStem3D(nn.Sequential):
    """Conv 3^3 (bias, in -> out) -> ``depth`` ConvNeXt blocks. Keeps resolution."""

    def __init__(self, in_ch: int, out_ch: int, *, depth: int = 1, norm: str = "bn") -> None:
        super().__init__(nn.Conv3d(in_ch, out_ch, 3, padding=1),
                         *[ConvNeXtBlock3D(out_ch, norm=norm) for _ in range(depth)])


class ConvNeXtDown3D(nn.Sequential):
    """Norm -> Conv 2^3 stride 2 (in -> out) -> ``depth`` ConvNeXt blocks. Halves each spatial size."""

    def __init__(self, in_ch: int, out_ch: int, *, depth: int = 2, norm: str = "bn") -> None:
        super().__init__(make_norm(norm, in_ch), nn.Conv3d(in_ch, out_ch, 2, stride=2),
                         *[ConvNeXtBlock3D(out_ch, norm=norm) for _ in range(depth)])
