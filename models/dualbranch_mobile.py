"""Dual-branch MobileNetV2 U-Net with dilated fusion stage and channel attention (MODEL_SPECS 1.10).

Two modality branches (T1ce, FLAIR) of MobileNetV2 inverted residual blocks (t = 2, CBAM channel
attention on the hidden features) run through stage 3; their concatenation is fused by one
stride-2 block with depthwise dilation rates (1, 2, 5) at stage 4. The decoder has three
:class:`Up3DMobileCBAM` blocks (transposed conv, [1^3 skip compression], concat, channel attention,
double conv). Three downsamplings: inputs must be divisible by 8.

Widths (base = 8/16/32/64 for xs/s/m/l): per-branch stem/stage2/stage3 = base * (1, 2, 4);
fused stage 4 = 4 * stage3; output width 2 * base. The ``_fixed`` variant uses a narrower stage 4
(2 * stage3) and one decoder width 4 * base with 1^3 skip compression. Activations: HardSwish for
xs/s, GELU for m/l (decoder double convs use ReLU).

Deviations from the original repository (``dualbranch_mobile.py`` at e2dd41a), following the clean
spec 1.13: input channel 0 (T1ce) feeds the T1ce branch and channel 1 (FLAIR) the FLAIR branch (the
original labelled channel 0 "flair" although the loader puts T1ce there); the branches are
structurally identical, so only the naming changes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model
from .blocks.channel_attention import ChannelAttention3D
from .blocks.mobilenetv2 import InvertedResidual3D
from .blocks.unet_blocks import DoubleConv3D, OutConv3D, conv_norm_act

PAPER = ("Sandler et al., MobileNetV2, CVPR 2018; Woo et al., CBAM, ECCV 2018; "
         "jwon112/3d-segmentation dualbranch_mobile (e2dd41a)")
MODALITIES = ("t1ce", "flair")
SIZE_BASE = {"xs": 8, "s": 16, "m": 32, "l": 64}
SIZE_ACT = {"xs": "hardswish", "s": "hardswish", "m": "gelu", "l": "gelu"}


class Up3DMobileCBAM(nn.Module):
    """ConvTranspose3d (in -> in/2, x2) -> [1^3 skip compression] -> concat [skip, up] -> CBAM channel
    attention -> DoubleConv3D (ReLU) -> out_ch.

    Args:
        in_ch: channels of the deeper input.
        out_ch: output channels.
        skip_ch: channels of the skip connection.
        compress_skip: if set, a 1^3 conv (norm, ReLU) maps the skip to this many channels first.
        reduction: channel-attention reduction ratio.
    """

    def __init__(self, in_ch: int, out_ch: int, *, skip_ch: int, compress_skip: int | None = None,
                 reduction: int = 8, norm: str = "bn") -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.compress = (conv_norm_act(skip_ch, compress_skip, kernel=1, norm=norm)
                         if compress_skip is not None else nn.Identity())
        cat = in_ch // 2 + (skip_ch if compress_skip is None else compress_skip)
        self.attention = ChannelAttention3D(cat, reduction)
        self.conv = DoubleConv3D(cat, out_ch, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[2:] != skip.shape[2:]:
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return self.conv(self.attention(torch.cat([self.compress(skip), x], dim=1)))


class MobileBranch(nn.Module):
    """One modality's encoder: stem (2 blocks, r 16) -> stage2 (s2 + 1 block, r 8) -> stage3 (s2 + 5, r 8)."""

    def __init__(self, widths: tuple[int, int, int], *, act: str, expand_ratio: float, norm: str) -> None:
        super().__init__()
        c1, c2, c3 = widths

        def ir(i: int, o: int, stride: int, r: int) -> InvertedResidual3D:
            return InvertedResidual3D(i, o, stride=stride, expand_ratio=expand_ratio, channel_attention_ratio=r,
                                      act=act, norm=norm)

        self.stem = nn.Sequential(ir(1, c1, 1, 16), ir(c1, c1, 1, 16))
        self.stage2 = nn.Sequential(ir(c1, c2, 2, 8), ir(c2, c2, 1, 8))
        self.stage3 = nn.Sequential(ir(c2, c3, 2, 8), *[ir(c3, c3, 1, 8) for _ in range(5)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.stem(x)
        x2 = self.stage2(x1)
        return [x1, x2, self.stage3(x2)]


class DualBranchMobileNetV2Dilated(nn.Module):
    """Dual-branch (T1ce, FLAIR) MobileNetV2 encoder fused at stage 3, dilated stage 4, CBAM decoder.

    Args:
        in_channels: must be 2 (channel 0 T1ce, channel 1 FLAIR).
        out_channels: classes.
        base: stem width per branch; stage widths base * (1, 2, 4).
        fixed_decoder: narrow stage 4 (2 * stage3) and a constant decoder width 4 * base with skip
            compression, instead of stage 4 = 4 * stage3 and decoder widths stage3, stage2, 2 * base.
        act: activation of the MobileNetV2 blocks.
        expand_ratio: MobileNetV2 expansion t.
        norm: ``bn`` | ``in`` | ``gn``.
    """

    def __init__(self, *, in_channels: int, out_channels: int, base: int = 16, fixed_decoder: bool = False,
                 act: str = "hardswish", expand_ratio: float = 2.0, norm: str = "bn") -> None:
        super().__init__()
        if in_channels != len(MODALITIES):
            raise ValueError(f"dual-branch model needs in_channels=2 ({MODALITIES}), got {in_channels}")
        c1, c2, c3 = base, 2 * base, 4 * base
        self.branches = nn.ModuleDict({m: MobileBranch((c1, c2, c3), act=act, expand_ratio=expand_ratio, norm=norm)
                                       for m in MODALITIES})
        c4 = (2 if fixed_decoder else 4) * c3
        self.fused_stage4 = InvertedResidual3D(2 * c3, c4, stride=2, expand_ratio=expand_ratio, dilations=(1, 2, 5),
                                               channel_attention_ratio=16, act=act, norm=norm)
        if fixed_decoder:
            w = 4 * base
            dec, compress = (w, w, w), w
        else:
            dec, compress = (c3, c2, 2 * base), None
        self.dec1 = Up3DMobileCBAM(c4, dec[0], skip_ch=2 * c3, compress_skip=compress, norm=norm)
        self.dec2 = Up3DMobileCBAM(dec[0], dec[1], skip_ch=2 * c2, compress_skip=compress, norm=norm)
        self.dec3 = Up3DMobileCBAM(dec[1], dec[2], skip_ch=2 * c1, compress_skip=compress, norm=norm)
        self.out_conv = OutConv3D(dec[2], out_channels)
        self.pam_stages = ([f"branches.{m}.{s}" for m in MODALITIES for s in ("stem", "stage2", "stage3")]
                           + ["fused_stage4", "dec1", "dec2", "dec3", "out_conv"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.branches[m](x[:, i:i + 1]) for i, m in enumerate(MODALITIES)]
        skips = [torch.cat(level, dim=1) for level in zip(*feats)]
        y = self.fused_stage4(skips[2])
        y = self.dec1(y, skips[2])
        y = self.dec2(y, skips[1])
        y = self.dec3(y, skips[0])
        return self.out_conv(y)


def _build(size: str, fixed: bool, **kwargs: Any) -> DualBranchMobileNetV2Dilated:
    defaults = dict(base=SIZE_BASE[size], fixed_decoder=fixed, act=SIZE_ACT[size])
    return DualBranchMobileNetV2Dilated(**dict(defaults, **kwargs))


_META: dict[str, Any] = dict(family="dualbranch_mobile", paper=PAPER, modalities=MODALITIES, divisibility=8,
                             default_patch_size=(128, 128, 128), tiny_kwargs={"base": 2},
                             test_patch_size=(32, 32, 32))
# Measured parameter counts of the default build (2 modalities in, 4 classes out).
_PARAMS = {"xs": 383_564, "s": 1_455_540, "m": 5_664_868, "l": 22_344_900}
_PARAMS_FIXED = {"xs": 368_484, "s": 1_394_756, "m": 5_420_804, "l": 21_366_788}


@register_model(**_META, num_params=_PARAMS["xs"])
def dualbranch_mobilenetv2_dilated_xs(**kwargs: Any) -> nn.Module:
    return _build("xs", False, **kwargs)


@register_model(**_META, num_params=_PARAMS["s"])
def dualbranch_mobilenetv2_dilated_s(**kwargs: Any) -> nn.Module:
    return _build("s", False, **kwargs)


@register_model(**_META, num_params=_PARAMS["m"])
def dualbranch_mobilenetv2_dilated_m(**kwargs: Any) -> nn.Module:
    return _build("m", False, **kwargs)


@register_model(**_META, num_params=_PARAMS["l"])
def dualbranch_mobilenetv2_dilated_l(**kwargs: Any) -> nn.Module:
    return _build("l", False, **kwargs)


@register_model(**_META, num_params=_PARAMS_FIXED["xs"])
def dualbranch_mobilenetv2_dilated_fixed_xs(**kwargs: Any) -> nn.Module:
    return _build("xs", True, **kwargs)


@register_model(**_META, num_params=_PARAMS_FIXED["s"])
def dualbranch_mobilenetv2_dilated_fixed_s(**kwargs: Any) -> nn.Module:
    return _build("s", True, **kwargs)


@register_model(**_META, num_params=_PARAMS_FIXED["m"])
def dualbranch_mobilenetv2_dilated_fixed_m(**kwargs: Any) -> nn.Module:
    return _build("m", True, **kwargs)


@register_model(**_META, num_params=_PARAMS_FIXED["l"])
def dualbranch_mobilenetv2_dilated_fixed_l(**kwargs: Any) -> nn.Module:
    return _build("l", True, **kwargs)
