"""Dual-branch U-Net 13, "MobileViT extended" (MODEL_SPECS 1.7): MobileNetV2 branches, MobileViT on FLAIR.

Input: channel 0 = T1ce, channel 1 = FLAIR. Stems are MobileNetV2 inverted residuals (stride 1,
expansion 4) per modality; stage 2 of both branches is an inverted residual with stride 2; at stages
3-4 the FLAIR branch uses Down3DStrideMViT (strided transition + MobileViT v2 block: 2^3 patches,
2 transformer layers, 4 heads, MLP ratio 2) and the T1ce branch stride-2 inverted residuals. The
concatenated stage-4 features (2*b4) go through a fused Down3DStrideMViT to 4*b4 (stage 5); four
Up3D blocks and a 1^3 output conv decode.

Deviations from the original repository (clean spec 1.13): the MobileViT branch really receives
FLAIR (the original gave it T1ce); widths are ``base * [1, 2, 4, 8]`` per branch with base
8/16/32/64 and fused 4*b4, so every size doubles the widths (the original did not: m had ~1.1x the
parameters of s); the MobileViT block is the v2 patch-unfolding block instead of the v1 block that
attended over all voxels (about 17 GB per attention map at 128^3 input at stage 3).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ._registry import register_model
from .blocks.dualbranch_common import DUAL_MODALITIES, SIZE_BASE, DualBranchLayout, DualBranchUNet
from .blocks.mobilenetv2 import InvertedResidual3D
from .blocks.mobilevit import Down3DStrideMViT

PAPER = ("Mehta & Rastegari, MobileViT, ICLR 2022; Sandler et al., MobileNetV2, CVPR 2018"
         " + dual-branch U-Net")
TINY = {"base": 1, "fused_mult": 2}
EXPAND = 4.0


def t1ce_block(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
    """Inverted residual (expansion 4): stride 1 at stage 1, stride 2 after."""
    return InvertedResidual3D(in_ch, out_ch, stride=1 if stage == 1 else 2, expand_ratio=EXPAND, norm=norm)


def flair_block(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
    """Inverted residuals at stages 1-2, Down3DStrideMViT from stage 3 on."""
    if stage <= 2:
        return t1ce_block(stage, in_ch, out_ch, norm)
    return mvit_block(stage, in_ch, out_ch, norm)


def mvit_block(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
    """Down3DStrideMViT (heads 4, MLP ratio 2, 2 transformer layers)."""
    return Down3DStrideMViT(in_ch, out_ch, heads=4, mlp_ratio=2.0, depth=2, norm=norm)


def build_dualbranch_mvit(name: str, *, in_channels: int, out_channels: int, base: int, fused_mult: int = 4,
                          norm: str = "bn") -> DualBranchUNet:
    """Dual-branch 13: ``base`` = per-branch stem width; ``fused_mult``: fused width in units of b4."""
    return DualBranchUNet(in_channels=in_channels, out_channels=out_channels,
                          layout=DualBranchLayout.fused_after_stage4(base, fused_mult), t1ce_block=t1ce_block,
                          flair_block=flair_block, fused_block=mvit_block, norm=norm, name=name)


def _build(size: str, **kwargs: Any) -> DualBranchUNet:
    return build_dualbranch_mvit(f"dualbranch_13_unet_{size}", **dict(dict(base=SIZE_BASE[size]), **kwargs))


def _meta(num_params: int) -> dict[str, Any]:
    return dict(family="dualbranch_13_unet", modalities=DUAL_MODALITIES, divisibility=16,
                default_patch_size=(128, 128, 128), paper=PAPER, num_params=num_params, tiny_kwargs=TINY,
                test_patch_size=(32, 32, 32))


# num_params: measured on the default build (in_channels=2, out_channels=4).
@register_model(**_meta(8_070_396))
def dualbranch_13_unet_xs(**kwargs: Any) -> nn.Module:
    return _build("xs", **kwargs)


@register_model(**_meta(32_219_636))
def dualbranch_13_unet_s(**kwargs: Any) -> nn.Module:
    return _build("s", **kwargs)


@register_model(**_meta(128_754_660))
def dualbranch_13_unet_m(**kwargs: Any) -> nn.Module:
    return _build("m", **kwargs)


@register_model(**_meta(514_770_884))
def dualbranch_13_unet_l(**kwargs: Any) -> nn.Module:
    return _build("l", **kwargs)
