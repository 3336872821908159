"""Dual-branch U-Nets 01-03 (MODEL_SPECS 1.5): plain convolutional branches, fused after stage 3.

Input: channel 0 = T1ce, channel 1 = FLAIR. Stems are DoubleConv3D per modality; stages 2-3 are
per-branch downsamplings; the branch outputs are concatenated and two fused stages follow
(4*b3, 8*b3 channels); four Up3D blocks and a 1^3 output conv.

- 01: max-pool Down3D everywhere.
- 02: strided-conv Down3DStride everywhere.
- 03: as 02, but the FLAIR branch's stages 2-3 are Down3DStrideDilated (dilation 1, 2, 5).

Deviations from the original repository (clean spec 1.13): the dilated branch really receives FLAIR
(the original gave it T1ce); widths are ``base * [1, 2, 4]`` per branch with base 8/16/32/64 for
xs/s/m/l, so every size doubles the widths and m/l keep the 4-downsampling topology (the original m/l
added a sixth stage and did not double cleanly); xs and s match the original widths. The dilated
convs are 3^3 (the original's later kernel; ``dilated_kernel=5`` gives the earlier 5^3 version).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ._registry import register_model
from .blocks.dilated import Down3DStrideDilated
from .blocks.dualbranch_common import (DUAL_MODALITIES, SIZE_BASE, BlockFactory, DualBranchLayout,
                                       DualBranchUNet)
from .blocks.unet_blocks import DoubleConv3D, Down3D, Down3DStride

PAPER_UNET = "Cicek et al., 3D U-Net, MICCAI 2016 + dual-branch U-Net"
PAPER_DILATED = "Yu & Koltun, Multi-Scale Context Aggregation by Dilated Convolutions, ICLR 2016 + dual-branch U-Net"
TINY = {"base": 1, "fused_mult": 2}


def plain_branch(strided: bool) -> BlockFactory:
    """Stage 1: DoubleConv3D; later stages: Down3DStride (strided) or Down3D (max-pool)."""
    down = Down3DStride if strided else Down3D

    def make(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
        return DoubleConv3D(in_ch, out_ch, norm=norm) if stage == 1 else down(in_ch, out_ch, norm=norm)

    return make


def dilated_branch(kernel: int) -> BlockFactory:
    """Stage 1: DoubleConv3D; later stages: Down3DStrideDilated (dilation 1, 2, 5)."""

    def make(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
        if stage == 1:
            return DoubleConv3D(in_ch, out_ch, norm=norm)
        return Down3DStrideDilated(in_ch, out_ch, kernel=kernel, norm=norm)

    return make


def build_dualbranch_basic(name: str, *, in_channels: int, out_channels: int, base: int, strided: bool,
                           dilated_flair: bool, dilated_kernel: int = 3, fused_mult: int = 4,
                           norm: str = "bn") -> DualBranchUNet:
    """Dual-branch U-Net fused after stage 3 with plain (optionally dilated FLAIR) branches.

    ``base``: per-branch stem width; ``fused_mult``: fused widths in units of b3 (4 -> 4*b3, 8*b3).
    """
    plain = plain_branch(strided)
    flair = dilated_branch(dilated_kernel) if dilated_flair else plain
    return DualBranchUNet(in_channels=in_channels, out_channels=out_channels,
                          layout=DualBranchLayout.fused_after_stage3(base, fused_mult), t1ce_block=plain,
                          flair_block=flair, fused_block=plain, norm=norm, name=name)


_VARIANTS: dict[str, dict[str, Any]] = {
    "01": dict(strided=False, dilated_flair=False),
    "02": dict(strided=True, dilated_flair=False),
    "03": dict(strided=True, dilated_flair=True),
}


def _build(variant: str, size: str, **kwargs: Any) -> DualBranchUNet:
    defaults = dict(base=SIZE_BASE[size], **_VARIANTS[variant])
    return build_dualbranch_basic(f"dualbranch_{variant}_unet_{size}", **dict(defaults, **kwargs))


def _meta(variant: str, num_params: int) -> dict[str, Any]:
    return dict(family=f"dualbranch_{variant}_unet", modalities=DUAL_MODALITIES, divisibility=16,
                default_patch_size=(128, 128, 128), paper=PAPER_DILATED if variant == "03" else PAPER_UNET,
                num_params=num_params, tiny_kwargs=TINY, test_patch_size=(32, 32, 32))


# num_params: measured on the default build (in_channels=2, out_channels=4).
@register_model(**_meta("01", 5_484_316))
def dualbranch_01_unet_xs(**kwargs: Any) -> nn.Module:
    return _build("01", "xs", **kwargs)


@register_model(**_meta("01", 21_930_036))
def dualbranch_01_unet_s(**kwargs: Any) -> nn.Module:
    return _build("01", "s", **kwargs)


@register_model(**_meta("01", 87_705_700))
def dualbranch_01_unet_m(**kwargs: Any) -> nn.Module:
    return _build("01", "m", **kwargs)


@register_model(**_meta("01", 350_793_924))
def dualbranch_01_unet_l(**kwargs: Any) -> nn.Module:
    return _build("01", "l", **kwargs)


@register_model(**_meta("02", 5_484_316))
def dualbranch_02_unet_xs(**kwargs: Any) -> nn.Module:
    return _build("02", "xs", **kwargs)


@register_model(**_meta("02", 21_930_036))
def dualbranch_02_unet_s(**kwargs: Any) -> nn.Module:
    return _build("02", "s", **kwargs)


@register_model(**_meta("02", 87_705_700))
def dualbranch_02_unet_m(**kwargs: Any) -> nn.Module:
    return _build("02", "m", **kwargs)


@register_model(**_meta("02", 350_793_924))
def dualbranch_02_unet_l(**kwargs: Any) -> nn.Module:
    return _build("02", "l", **kwargs)


@register_model(**_meta("03", 5_518_972))
def dualbranch_03_unet_xs(**kwargs: Any) -> nn.Module:
    return _build("03", "xs", **kwargs)


@register_model(**_meta("03", 22_068_468))
def dualbranch_03_unet_s(**kwargs: Any) -> nn.Module:
    return _build("03", "s", **kwargs)


@register_model(**_meta("03", 88_259_044))
def dualbranch_03_unet_m(**kwargs: Any) -> nn.Module:
    return _build("03", "m", **kwargs)


@register_model(**_meta("03", 353_006_532))
def dualbranch_03_unet_l(**kwargs: Any) -> nn.Module:
    return _build("03", "l", **kwargs)
