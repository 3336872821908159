"""MobileNetV2 inverted residual block (Sandler et al., CVPR 2018) for 3D (and 2D) feature maps.

Conventions: tensors are (B, C, D, H, W) in 3D, (B, C, H, W) in 2D; convolutions have no bias
when a norm follows.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .channel_attention import ChannelAttention3D
from .layers import conv_nd, conv_norm_act_nd, make_act, make_norm_nd

class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1 expand] -> depthwise 3 per dilation -> [channel attn] -> linear 1 project.

    hidden = max(out_ch, round(in_ch * expand_ratio)). The 1^k expansion (norm, act) is skipped when
    hidden == in_ch. One depthwise 3^k conv (norm, act) per entry of ``dilations``; the first carries
    ``stride``. Optional CBAM channel attention on the hidden features. The projection is linear
    (norm, no activation). Residual add when stride == 1 and in_ch == out_ch.

    Args:
        in_ch, out_ch: channels.
        stride: stride of the first depthwise conv (1 or 2; or one per axis, e.g. ``(2, 2, 1)``).
        expand_ratio: t.
        dilations: dilation rate of each depthwise conv, e.g. ``(1, 2, 5)``.
        channel_attention_ratio: reduction r of the channel attention; None disables it.
        act: one of ``ACTS``.
        norm: ``bn`` | ``in`` | ``gn``.
        spatial_dims: 3 (default) or 2.
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int | Sequence[int] = 1, expand_ratio: float = 4.0,
                 dilations: Sequence[int] = (1,), channel_attention_ratio: int | None = None,
                 act: str = "relu6", norm: str = "bn", spatial_dims: int = 3) -> None:
        super().__init__()
        strides = (stride,) * spatial_dims if isinstance(stride, int) else tuple(int(s) for s in stride)
        if len(strides) != spatial_dims or any(s not in (1, 2) for s in strides):
            raise ValueError(f"InvertedResidual stride must be 1 or 2 (one, or one per axis), got {stride}")
        stride = strides if len(set(strides)) > 1 else strides[0]
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"dilations must be a non-empty sequence of rates >= 1, got {tuple(dilations)}")
        if expand_ratio <= 0:
            raise ValueError(f"expand_ratio must be > 0, got {expand_ratio}")
        make_act(act)  # validate the name early
        hidden = max(out_ch, int(round(in_ch * expand_ratio)))
        layers: list[nn.Module] = []
        if hidden != in_ch:
            layers.append(conv_norm_act_nd(spatial_dims, in_ch, hidden, 1, norm=norm, act=act))
        for i, rate in enumerate(dilations):
            layers += [conv_nd(spatial_dims, hidden, hidden, 3, stride=stride if i == 0 else 1,
                               dilation=rate, groups=hidden),
                       make_norm_nd(norm, hidden, spatial_dims), make_act(act)]
        if channel_attention_ratio is not None:
            layers.append(ChannelAttention3D(hidden, channel_attention_ratio))
        layers += [conv_nd(spatial_dims, hidden, out_ch, 1), make_norm_nd(norm, out_ch, spatial_dims)]
        self.block = nn.Sequential(*layers)
        self.use_residual = max(strides) == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class InvertedResidual3D(InvertedResidual):
    """:class:`InvertedResidual` on (B, C, D, H, W) maps."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, expand_ratio: float = 4.0,
                 dilations: Sequence[int] = (1,), channel_attention_ratio: int | None = None,
                 act: str = "relu6", norm: str = "bn") -> None:
        super().__init__(in_ch, out_ch, stride=stride, expand_ratio=expand_ratio, dilations=dilations,
                         channel_attention_ratio=channel_attention_ratio, act=act, norm=norm, spatial_dims=3)


class InvertedResidual2D(InvertedResidual):
    """:class:`InvertedResidual` on (B, C, H, W) maps."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, expand_ratio: float = 4.0,
                 dilations: Sequence[int] = (1,), channel_attention_ratio: int | None = None,
                 act: str = "relu6", norm: str = "bn") -> None:
        super().__init__(in_ch, out_ch, stride=stride, expand_ratio=expand_ratio, dilations=dilations,
                         channel_attention_ratio=channel_attention_ratio, act=act, norm=norm, spatial_dims=2)
