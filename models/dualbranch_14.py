"""Dual-branch U-Nets 14: the same layout with seven lightweight backbones (MODEL_SPECS 1.9).

Input: channel 0 = T1ce, channel 1 = FLAIR. Both branches use the same backbone for their stem
(stage 1, stride 1) and their downsampling stages 2-4; the branch outputs are concatenated and a
fused Down3DStrideMViT (MobileViT v2 block, 2^3 patches, 2 layers, 4 heads, MLP ratio 2) forms
stage 5; four Up3D blocks and a 1^3 output conv decode.

Backbones (stem / down stage):
- ``mobilenetv2_expand2``: inverted residual t=2, stride 1 / stride 2 (ReLU6, linear bottleneck).
- ``ghostnet``: ghost bottleneck stride 1 / stride 2 (3^3 primary conv carries the stride).
- ``dilated``: DoubleConv3D / Down3DStrideDilated (dilation 1, 2, 5).
- ``convnext``: conv 3^3 + 1 ConvNeXt block / norm + 2^3 stride-2 conv + 2 ConvNeXt blocks (BN).
- ``shufflenetv2``: conv 3^3 + stride-1 unit / stride-2 unit + stride-1 unit (DW 3^3).
- ``shufflenetv2_dilated``: stride-1 units use DW 5^3 with dilations 1, 2, 5; stride-2 units DW 3^3.
- ``shufflenetv2_lk``: every DW kernel 7^3, stride-2 units included.

Deviations from the original repository (clean spec 1.13): per-branch widths ``base * [1, 2, 4, 8]``
with base 8/16/32/64 for xs/s/m/l and fused stage 5 = 4 * b4, so every size doubles the widths (the
original's down4 was 128/256/256/512, not doubling, and its xs/s were wider); the MobileViT block
is the v2 patch-unfolding block (bounded attention cost at 128^3) instead of the v1 all-voxel
attention; the dilated backbone uses 3^3 dilated kernels (the original's later kernel) instead of
5^3; block-level deviations are stated in the blocks' modules (ghost, shufflenet, convnext).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from ._registry import register_model
from .blocks.convnext import ConvNeXtDown3D, ConvNeXtStem3D
from .blocks.dilated import Down3DStrideDilated
from .blocks.dualbranch_common import (DUAL_MODALITIES, SIZE_BASE, BlockFactory, DualBranchLayout,
                                       DualBranchUNet)
from .blocks.ghost import GhostBottleneck3D
from .blocks.mobilenetv2 import InvertedResidual3D
from .blocks.mobilevit import Down3DStrideMViT
from .blocks.shufflenet import ShuffleNetV2Down3D, ShuffleNetV2Stem3D
from .blocks.unet_blocks import DoubleConv3D

_DUAL = " + dual-branch U-Net"
PAPERS = {
    "mobilenetv2_expand2": "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018",
    "ghostnet": "Han et al., GhostNet: More Features from Cheap Operations, CVPR 2020",
    "dilated": "Yu & Koltun, Multi-Scale Context Aggregation by Dilated Convolutions, ICLR 2016",
    "convnext": "Liu et al., A ConvNet for the 2020s, CVPR 2022",
    "shufflenetv2": "Ma et al., ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design, ECCV 2018",
    "shufflenetv2_dilated": "Ma et al., ShuffleNet V2, ECCV 2018 (dilated units)",
    "shufflenetv2_lk": "Ma et al., ShuffleNet V2, ECCV 2018 (7^3 large-kernel units)",
}
_MVIT = "; Mehta & Rastegari, MobileViT, ICLR 2022"
# base=1 gives odd stem widths, which ShuffleNetV2 channel splitting cannot take.
TINY: dict[str, dict[str, Any]] = {
    b: dict(base=2, fused_mult=1) if b.startswith("shufflenet") else dict(base=1, fused_mult=2) for b in PAPERS}

Maker = Callable[[int, int, str], nn.Module]


def _backbone(stem: Maker, down: Maker) -> BlockFactory:
    """Factory using ``stem`` at stage 1 and ``down`` at later stages, both ``(in_ch, out_ch, norm)``."""

    def make(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
        return stem(in_ch, out_ch, norm) if stage == 1 else down(in_ch, out_ch, norm)

    return make


def _shuffle(kernel: int, dilations: tuple[int, ...], down_kernel: int) -> BlockFactory:
    return _backbone(
        lambda i, o, n: ShuffleNetV2Stem3D(i, o, kernel=kernel, dilations=dilations, norm=n),
        lambda i, o, n: ShuffleNetV2Down3D(i, o, kernel=kernel, dilations=dilations, down_kernel=down_kernel, norm=n))


def backbone_factory(backbone: str) -> BlockFactory:
    """Per-branch block factory of one backbone name (see the module docstring)."""
    if backbone == "mobilenetv2_expand2":
        return _backbone(lambda i, o, n: InvertedResidual3D(i, o, stride=1, expand_ratio=2.0, norm=n),
                         lambda i, o, n: InvertedResidual3D(i, o, stride=2, expand_ratio=2.0, norm=n))
    if backbone == "ghostnet":
        return _backbone(lambda i, o, n: GhostBottleneck3D(i, o, stride=1, norm=n),
                         lambda i, o, n: GhostBottleneck3D(i, o, stride=2, norm=n))
    if backbone == "dilated":
        return _backbone(lambda i, o, n: DoubleConv3D(i, o, norm=n),
                         lambda i, o, n: Down3DStrideDilated(i, o, kernel=3, norm=n))
    if backbone == "convnext":
        return _backbone(lambda i, o, n: ConvNeXtStem3D(i, o, depth=1, norm=n),
                         lambda i, o, n: ConvNeXtDown3D(i, o, depth=2, norm=n))
    if backbone == "shufflenetv2":
        return _shuffle(3, (1, 1), 3)
    if backbone == "shufflenetv2_dilated":
        return _shuffle(5, (1, 2, 5), 3)
    if backbone == "shufflenetv2_lk":
        return _shuffle(7, (1, 1), 7)
    raise ValueError(f"unknown dual-branch 14 backbone {backbone!r}; choose one of {sorted(PAPERS)}")


def mvit_fused(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
    """Fused stage: Down3DStrideMViT (heads 4, MLP ratio 2, 2 transformer layers)."""
    return Down3DStrideMViT(in_ch, out_ch, heads=4, mlp_ratio=2.0, depth=2, norm=norm)


def build_dualbranch_14(name: str, *, in_channels: int, out_channels: int, backbone: str, base: int,
                        fused_mult: int = 4, norm: str = "bn") -> DualBranchUNet:
    """Dual-branch U-Net fused after stage 4, ``backbone`` in both branches, fused MobileViT stage 5.

    ``base``: per-branch stem width; ``fused_mult``: fused stage-5 width in units of b4.
    """
    branch = backbone_factory(backbone)
    return DualBranchUNet(in_channels=in_channels, out_channels=out_channels,
                          layout=DualBranchLayout.fused_after_stage4(base, fused_mult), t1ce_block=branch,
                          flair_block=branch, fused_block=mvit_fused, norm=norm, name=name)


def _build(backbone: str, size: str, **kwargs: Any) -> DualBranchUNet:
    defaults = dict(backbone=backbone, base=SIZE_BASE[size])
    return build_dualbranch_14(f"dualbranch_14_{backbone}_{size}", **dict(defaults, **kwargs))


def _meta(backbone: str, num_params: int) -> dict[str, Any]:
    return dict(family=f"dualbranch_14_{backbone}", modalities=DUAL_MODALITIES, divisibility=16,
                default_patch_size=(128, 128, 128), paper=PAPERS[backbone] + _MVIT + _DUAL, num_params=num_params,
                tiny_kwargs=TINY[backbone], test_patch_size=(32, 32, 32))


# num_params: measured on the default build (in_channels=2, out_channels=4).
@register_model(**_meta("mobilenetv2_expand2", 7_553_532))
def dualbranch_14_mobilenetv2_expand2_xs(**kwargs: Any) -> nn.Module:
    return _build("mobilenetv2_expand2", "xs", **kwargs)


@register_model(**_meta("mobilenetv2_expand2", 30_165_492))
def dualbranch_14_mobilenetv2_expand2_s(**kwargs: Any) -> nn.Module:
    return _build("mobilenetv2_expand2", "s", **kwargs)


@register_model(**_meta("mobilenetv2_expand2", 120_564_708))
def dualbranch_14_mobilenetv2_expand2_m(**kwargs: Any) -> nn.Module:
    return _build("mobilenetv2_expand2", "m", **kwargs)


@register_model(**_meta("mobilenetv2_expand2", 482_064_324))
def dualbranch_14_mobilenetv2_expand2_l(**kwargs: Any) -> nn.Module:
    return _build("mobilenetv2_expand2", "l", **kwargs)


@register_model(**_meta("ghostnet", 7_574_036))
def dualbranch_14_ghostnet_xs(**kwargs: Any) -> nn.Module:
    return _build("ghostnet", "xs", **kwargs)


@register_model(**_meta("ghostnet", 30_252_004))
def dualbranch_14_ghostnet_s(**kwargs: Any) -> nn.Module:
    return _build("ghostnet", "s", **kwargs)


@register_model(**_meta("ghostnet", 120_919_748))
def dualbranch_14_ghostnet_m(**kwargs: Any) -> nn.Module:
    return _build("ghostnet", "m", **kwargs)


@register_model(**_meta("ghostnet", 483_502_468))
def dualbranch_14_ghostnet_l(**kwargs: Any) -> nn.Module:
    return _build("ghostnet", "l", **kwargs)


@register_model(**_meta("dilated", 8_260_396))
def dualbranch_14_dilated_xs(**kwargs: Any) -> nn.Module:
    return _build("dilated", "xs", **kwargs)


@register_model(**_meta("dilated", 33_005_140))
def dualbranch_14_dilated_s(**kwargs: Any) -> nn.Module:
    return _build("dilated", "s", **kwargs)


@register_model(**_meta("dilated", 131_947_684))
def dualbranch_14_dilated_m(**kwargs: Any) -> nn.Module:
    return _build("dilated", "m", **kwargs)


@register_model(**_meta("dilated", 527_644_996))
def dualbranch_14_dilated_l(**kwargs: Any) -> nn.Module:
    return _build("dilated", "l", **kwargs)


@register_model(**_meta("convnext", 7_909_628))
def dualbranch_14_convnext_xs(**kwargs: Any) -> nn.Module:
    return _build("convnext", "xs", **kwargs)


@register_model(**_meta("convnext", 31_277_300))
def dualbranch_14_convnext_s(**kwargs: Any) -> nn.Module:
    return _build("convnext", "s", **kwargs)


@register_model(**_meta("convnext", 124_386_788))
def dualbranch_14_convnext_m(**kwargs: Any) -> nn.Module:
    return _build("convnext", "m", **kwargs)


@register_model(**_meta("convnext", 496_102_340))
def dualbranch_14_convnext_l(**kwargs: Any) -> nn.Module:
    return _build("convnext", "l", **kwargs)


@register_model(**_meta("shufflenetv2", 7_557_916))
def dualbranch_14_shufflenetv2_xs(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2", "xs", **kwargs)


@register_model(**_meta("shufflenetv2", 30_168_756))
def dualbranch_14_shufflenetv2_s(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2", "s", **kwargs)


@register_model(**_meta("shufflenetv2", 120_549_220))
def dualbranch_14_shufflenetv2_m(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2", "m", **kwargs)


@register_model(**_meta("shufflenetv2", 481_945_284))
def dualbranch_14_shufflenetv2_l(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2", "l", **kwargs)


@register_model(**_meta("shufflenetv2_dilated", 7_599_636))
def dualbranch_14_shufflenetv2_dilated_xs(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2_dilated", "xs", **kwargs)


@register_model(**_meta("shufflenetv2_dilated", 30_257_636))
def dualbranch_14_shufflenetv2_dilated_s(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2_dilated", "s", **kwargs)


@register_model(**_meta("shufflenetv2_dilated", 120_748_740))
def dualbranch_14_shufflenetv2_dilated_m(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2_dilated", "m", **kwargs)


@register_model(**_meta("shufflenetv2_dilated", 482_431_364))
def dualbranch_14_shufflenetv2_dilated_l(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2_dilated", "l", **kwargs)


@register_model(**_meta("shufflenetv2_lk", 7_704_540))
def dualbranch_14_shufflenetv2_lk_xs(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2_lk", "xs", **kwargs)


@register_model(**_meta("shufflenetv2_lk", 30_462_004))
def dualbranch_14_shufflenetv2_lk_s(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2_lk", "s", **kwargs)


@register_model(**_meta("shufflenetv2_lk", 121_135_716))
def dualbranch_14_shufflenetv2_lk_m(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2_lk", "m", **kwargs)


@register_model(**_meta("shufflenetv2_lk", 483_118_276))
def dualbranch_14_shufflenetv2_lk_l(**kwargs: Any) -> nn.Module:
    return _build("shufflenetv2_lk", "l", **kwargs)
