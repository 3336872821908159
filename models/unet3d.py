"""3D U-Net (Cicek et al., MICCAI 2016) in sizes xs/s/m/l, max-pool or strided-conv downsampling.

Widths are ``base * [1, 2, 4, 8, 16]`` with base 16/32/64/128 for xs/s/m/l (MODEL_SPECS 1.3).
Deviation from the original repository: the bottleneck is downsampled (4 real downsamplings), where
the original kept it at the resolution of enc4 and cropped after the first up block; the parameter
count is unchanged. Inputs must be divisible by 16.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ._registry import register_model
from .blocks.unet_blocks import DoubleConv3D, Down3D, Down3DStride, OutConv3D, Up3D

PAPER = "Cicek et al., 3D U-Net: learning dense volumetric segmentation from sparse annotation, MICCAI 2016"
SIZE_BASE = {"xs": 16, "s": 32, "m": 64, "l": 128}
TINY = {"base": 4}


class UNet3D(nn.Module):
    """Encoder enc1..enc4, downsampled bottleneck, decoder dec4..dec1, 1^3 output conv.

    Args:
        in_channels: input channels (modalities).
        out_channels: classes.
        base: width of the first level; level k has ``base * 2**k`` channels.
        strided: strided 3^3 convs instead of max-pooling for downsampling.
        norm: ``bn`` | ``in`` | ``gn``.
    """

    def __init__(self, *, in_channels: int, out_channels: int, base: int = 32, strided: bool = False,
                 norm: str = "bn") -> None:
        super().__init__()
        c = [base * 2**k for k in range(5)]
        down = Down3DStride if strided else Down3D
        self.enc1 = DoubleConv3D(in_channels, c[0], norm=norm)
        self.enc2 = down(c[0], c[1], norm=norm)
        self.enc3 = down(c[1], c[2], norm=norm)
        self.enc4 = down(c[2], c[3], norm=norm)
        self.bottleneck = down(c[3], c[4], norm=norm)
        self.dec4 = Up3D(c[4], c[3], norm=norm)
        self.dec3 = Up3D(c[3], c[2], norm=norm)
        self.dec2 = Up3D(c[2], c[1], norm=norm)
        self.dec1 = Up3D(c[1], c[0], norm=norm)
        self.out_conv = OutConv3D(c[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.enc1(x)
        x2 = self.enc2(x1)
        x3 = self.enc3(x2)
        x4 = self.enc4(x3)
        y = self.bottleneck(x4)
        y = self.dec4(y, x4)
        y = self.dec3(y, x3)
        y = self.dec2(y, x2)
        y = self.dec1(y, x1)
        return self.out_conv(y)


def _build(size: str, strided: bool, **kwargs: Any) -> UNet3D:
    return UNet3D(**dict(dict(base=SIZE_BASE[size], strided=strided), **kwargs))


_META: dict[str, Any] = dict(family="unet3d", paper=PAPER, divisibility=16, default_patch_size=(128, 128, 128),
                             tiny_kwargs=TINY, test_patch_size=(32, 32, 32))
# Parameter counts of the default build (4 modalities in, 4 classes out), measured.
_PARAMS = {"xs": 5_647_732, "s": 22_580_964, "m": 90_303_940, "l": 361_175_940}


@register_model(**_META, num_params=_PARAMS["xs"])
def unet3d_xs(**kwargs: Any) -> nn.Module:
    return _build("xs", False, **kwargs)


@register_model(**_META, num_params=_PARAMS["s"])
def unet3d_s(**kwargs: Any) -> nn.Module:
    return _build("s", False, **kwargs)


@register_model(**_META, num_params=_PARAMS["m"])
def unet3d_m(**kwargs: Any) -> nn.Module:
    return _build("m", False, **kwargs)


@register_model(**_META, num_params=_PARAMS["l"])
def unet3d_l(**kwargs: Any) -> nn.Module:
    return _build("l", False, **kwargs)


@register_model(**_META, num_params=_PARAMS["xs"])
def unet3d_stride_xs(**kwargs: Any) -> nn.Module:
    return _build("xs", True, **kwargs)


@register_model(**_META, num_params=_PARAMS["s"])
def unet3d_stride_s(**kwargs: Any) -> nn.Module:
    return _build("s", True, **kwargs)


@register_model(**_META, num_params=_PARAMS["m"])
def unet3d_stride_m(**kwargs: Any) -> nn.Module:
    return _build("m", True, **kwargs)


@register_model(**_META, num_params=_PARAMS["l"])
def unet3d_stride_l(**kwargs: Any) -> nn.Module:
    return _build("l", True, **kwargs)
