"""Dual-branch U-Nets 04-07 (MODEL_SPECS 1.6): a RepLK large-kernel FLAIR branch, a plain T1ce branch.

Input: channel 0 = T1ce, channel 1 = FLAIR. Stems are DoubleConv3D per modality. The FLAIR branch's
downsampling stages are Transition3D -> RepLKBlock3D (13^3 DW with a parallel 3^3 branch, expansion
1.5) -> ConvFFN3D; the T1ce branch's are Down3DStride.

- 04: FLAIR RepLK stages 2-3 with ConvFFN ratio 4; fused after stage 3 (4*b3, 8*b3) with Down3DStride.
- 05: as 04 with ConvFFN ratio 2.
- 06: as 05, fused stages 4-5 are Down3DStrideMViT (MobileViT v2 block, 4 heads, MLP ratio 2).
- 07: branches run through stage 4 (FLAIR RepLK with ratio 2 at stages 2-4); fused stage 5 is
  Down3DStrideMViT(2*b4 -> 4*b4).

For deployment, ``reparameterize_model(model.eval())`` (from :mod:`models.blocks.replk`) folds each
large-kernel branch into one conv with identical eval-mode outputs.

Deviations from the original repository (clean spec 1.13): the RepLK branch really receives FLAIR
(the original gave it T1ce); widths are ``base * [1, 2, 4(, 8)]`` per branch with base 8/16/32/64 and
the same 4-downsampling topology for every size (the original m/l added a sixth stage); 07 uses
the stage-4 layout, which also fixes the original's decoder skip widths (it crashed for m/l); the
MobileViT block is the v2 patch-unfolding block (bounded attention cost at 128^3).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ._registry import register_model
from .blocks.dualbranch_common import (DUAL_MODALITIES, SIZE_BASE, BlockFactory, DualBranchLayout,
                                       DualBranchUNet)
from .blocks.mobilevit import Down3DStrideMViT
from .blocks.replk import RepLKStage3D
from .blocks.unet_blocks import DoubleConv3D, Down3DStride

PAPER = "Ding et al., Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs (RepLKNet), CVPR 2022"
PAPER_MVIT = PAPER + "; Mehta & Rastegari, MobileViT, ICLR 2022"
TINY = {"base": 1, "fused_mult": 2}


def strided_block(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
    """Stage 1: DoubleConv3D; later stages: Down3DStride."""
    return DoubleConv3D(in_ch, out_ch, norm=norm) if stage == 1 else Down3DStride(in_ch, out_ch, norm=norm)


def replk_branch(ffn_ratio: float, kernel: int) -> BlockFactory:
    """Stage 1: DoubleConv3D; later stages: RepLKStage3D (Transition -> RepLK block -> ConvFFN)."""

    def make(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
        if stage == 1:
            return DoubleConv3D(in_ch, out_ch, norm=norm)
        return RepLKStage3D(in_ch, out_ch, ffn_ratio=ffn_ratio, kernel=kernel, norm=norm)

    return make


def mvit_block(stage: int, in_ch: int, out_ch: int, norm: str) -> nn.Module:
    """Fused stage: Down3DStrideMViT (heads 4, MLP ratio 2, 2 transformer layers)."""
    return Down3DStrideMViT(in_ch, out_ch, heads=4, mlp_ratio=2.0, depth=2, norm=norm)


def build_dualbranch_replk(name: str, *, in_channels: int, out_channels: int, base: int, ffn_ratio: float,
                           fused_mvit: bool, fuse_after: int = 3, kernel: int = 13, fused_mult: int = 4,
                           norm: str = "bn") -> DualBranchUNet:
    """Dual-branch U-Net with a RepLK FLAIR branch.

    Args:
        base: per-branch stem width.
        ffn_ratio: ConvFFN3D expansion.
        fused_mvit: fused stages are Down3DStrideMViT (else Down3DStride).
        fuse_after: last dual stage, 3 (04-06) or 4 (07).
        kernel: large depthwise kernel (odd).
        fused_mult: fused widths in units of the last per-branch width (4 as specified).
    """
    if fuse_after == 3:
        layout = DualBranchLayout.fused_after_stage3(base, fused_mult)
    elif fuse_after == 4:
        layout = DualBranchLayout.fused_after_stage4(base, fused_mult)
    else:
        raise ValueError(f"{name}: fuse_after must be 3 or 4, got {fuse_after}")
    return DualBranchUNet(in_channels=in_channels, out_channels=out_channels, layout=layout,
                          t1ce_block=strided_block, flair_block=replk_branch(ffn_ratio, kernel),
                          fused_block=mvit_block if fused_mvit else strided_block, norm=norm, name=name)


_VARIANTS: dict[str, dict[str, Any]] = {
    "04": dict(ffn_ratio=4.0, fused_mvit=False, fuse_after=3),
    "05": dict(ffn_ratio=2.0, fused_mvit=False, fuse_after=3),
    "06": dict(ffn_ratio=2.0, fused_mvit=True, fuse_after=3),
    "07": dict(ffn_ratio=2.0, fused_mvit=True, fuse_after=4),
}


def _build(variant: str, size: str, **kwargs: Any) -> DualBranchUNet:
    defaults = dict(base=SIZE_BASE[size], **_VARIANTS[variant])
    return build_dualbranch_replk(f"dualbranch_{variant}_unet_{size}", **dict(defaults, **kwargs))


def _meta(variant: str, num_params: int) -> dict[str, Any]:
    paper = PAPER_MVIT if _VARIANTS[variant]["fused_mvit"] else PAPER
    return dict(family=f"dualbranch_{variant}_unet", modalities=DUAL_MODALITIES, divisibility=16,
                default_patch_size=(128, 128, 128), paper=paper + " + dual-branch U-Net", num_params=num_params,
                tiny_kwargs=TINY, test_patch_size=(32, 32, 32))


# num_params: measured on the default build (in_channels=2, out_channels=4).
@register_model(**_meta("04", 5_609_820))
def dualbranch_04_unet_xs(**kwargs: Any) -> nn.Module:
    return _build("04", "xs", **kwargs)


@register_model(**_meta("04", 22_106_804))
def dualbranch_04_unet_s(**kwargs: Any) -> nn.Module:
    return _build("04", "s", **kwargs)


@register_model(**_meta("04", 87_762_276))
def dualbranch_04_unet_m(**kwargs: Any) -> nn.Module:
    return _build("04", "m", **kwargs)


@register_model(**_meta("04", 349_719_236))
def dualbranch_04_unet_l(**kwargs: Any) -> nn.Module:
    return _build("04", "l", **kwargs)


@register_model(**_meta("05", 5_604_508))
def dualbranch_05_unet_xs(**kwargs: Any) -> nn.Module:
    return _build("05", "xs", **kwargs)


@register_model(**_meta("05", 22_085_940))
def dualbranch_05_unet_s(**kwargs: Any) -> nn.Module:
    return _build("05", "s", **kwargs)


@register_model(**_meta("05", 87_679_588))
def dualbranch_05_unet_m(**kwargs: Any) -> nn.Module:
    return _build("05", "m", **kwargs)


@register_model(**_meta("05", 349_390_020))
def dualbranch_05_unet_l(**kwargs: Any) -> nn.Module:
    return _build("05", "l", **kwargs)


@register_model(**_meta("06", 10_459_676))
def dualbranch_06_unet_xs(**kwargs: Any) -> nn.Module:
    return _build("06", "xs", **kwargs)


@register_model(**_meta("06", 41_462_836))
def dualbranch_06_unet_s(**kwargs: Any) -> nn.Module:
    return _build("06", "s", **kwargs)


@register_model(**_meta("06", 165_099_620))
def dualbranch_06_unet_m(**kwargs: Any) -> nn.Module:
    return _build("06", "m", **kwargs)


@register_model(**_meta("06", 658_895_044))
def dualbranch_06_unet_l(**kwargs: Any) -> nn.Module:
    return _build("06", "l", **kwargs)


@register_model(**_meta("07", 8_171_244))
def dualbranch_07_unet_xs(**kwargs: Any) -> nn.Module:
    return _build("07", "xs", **kwargs)


@register_model(**_meta("07", 31_891_412))
def dualbranch_07_unet_s(**kwargs: Any) -> nn.Module:
    return _build("07", "s", **kwargs)


@register_model(**_meta("07", 125_978_532))
def dualbranch_07_unet_m(**kwargs: Any) -> nn.Module:
    return _build("07", "m", **kwargs)


@register_model(**_meta("07", 500_739_908))
def dualbranch_07_unet_l(**kwargs: Any) -> nn.Module:
    return _build("07", "l", **kwargs)

