"""Layer factories for 2 or 3 spatial dims shared by the mobile blocks: activation, norm, conv.

Conventions: tensors are (B, C, D, H, W) in 3D, (B, C, H, W) in 2D; convolutions have no bias when a
norm follows; 'same' padding for stride 1.
"""

from __future__ import annotations

import torch.nn as nn

from .unet_blocks import make_norm

ACTS = ("relu6", "relu", "hardswish", "gelu", "silu")


def make_act(kind: str) -> nn.Module:
    """Activation by short name: one of ``ACTS``."""
    if kind == "relu6":
        return nn.ReLU6(inplace=True)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "hardswish":
        return nn.Hardswish(inplace=True)
    if kind == "gelu":
        return nn.GELU()
    if kind == "silu":
        return nn.SiLU(inplace=True)
    raise ValueError(f"activation {kind!r} is not one of {ACTS}")


def make_norm_nd(kind: str, channels: int, spatial_dims: int = 3) -> nn.Module:
    """:func:`make_norm` for 3D; the same kinds (``bn``/``in``/``gn``) for 2D maps."""
    if spatial_dims == 3:
        return make_norm(kind, channels)
    if spatial_dims != 2:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    # GroupNorm is dimension-agnostic: make_norm's group rule applies unchanged.
    return make_norm(kind, channels)


def conv_nd(spatial_dims: int, in_ch: int, out_ch: int, kernel: int = 1, *, stride: int = 1,
            dilation: int = 1, groups: int = 1, bias: bool = False) -> nn.Module:
    """Conv2d/Conv3d with 'same' padding for stride 1 (``dilation * (kernel - 1) // 2``)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return conv(in_ch, out_ch, kernel, stride=stride, padding=dilation * (kernel - 1) // 2,
                dilation=dilation, groups=groups, bias=bias)


def conv_norm_act_nd(spatial_dims: int, in_ch: int, out_ch: int, kernel: int = 3, *, stride: int = 1,
                     groups: int = 1, norm: str = "bn", act: str | None = "relu") -> nn.Sequential:
    """conv (no bias) -> norm -> activation (``act=None``: no activation)."""
    layers = [conv_nd(spatial_dims, in_ch, out_ch, kernel, stride=stride, groups=groups),
              make_norm_nd(norm, out_ch, spatial_dims)]
    if act is not None:
        layers.append(make_act(act))
    return nn.Sequential(*layers)
