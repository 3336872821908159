"""Modality-comparison models (MODEL_SPECS 1.11): how much do 2 vs 4 modalities and per-modality
branches help, at the ``s`` size.

- ``unet3d_2modal_s`` / ``unet3d_4modal_s``: :class:`models.unet3d.UNet3D` (base 32) on
  (T1ce, FLAIR) or on all four modalities (T1, T1ce, T2, FLAIR).
- ``dualbranch_2modal_unet_s``: the dual-branch 01 network (``dualbranch_01_unet_s``) under its own
  name, so the comparison reads as one set.
- ``quadbranch_4modal_unet_s``: one branch per modality (DoubleConv stem 1->c, Down3D c->2c,
  Down3D 2c->4c, c = 8), concatenated; fused Down3D 16c->32c and 32c->64c; four Up3D; 1^3 output.
- ``quadbranch_4modal_attention_unet_s``: the same plus :class:`ModalityAttention3D` at stages 2 and
  3, applied before concatenation; ``forward(x, return_attention=True)`` returns
  ``(logits, {"stage2": (B, 4), "stage3": (B, 4)})`` with the per-modality weights in (0, 1).

Deviations from the original repository: the UNet3D models inherit volbench's downsampled bottleneck
(see :mod:`models.unet3d`; same parameter count); the original modality file's comment calling the
dual-branch model "stride/02" is wrong, it is the max-pool 01 network, as here. The quad-branch
models have 4 true downsamplings, so inputs must be divisible by 16.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ._registry import MODALITY_ORDER, register_model
from .blocks.channel_attention import ModalityAttention3D
from .blocks.unet_blocks import DoubleConv3D, Down3D, OutConv3D, Up3D
from .dualbranch_basic import dualbranch_01_unet_s
from .unet3d import UNet3D

PAPER_UNET = "Cicek et al., 3D U-Net, MICCAI 2016 (modality comparison, jwon112/3d-segmentation)"
PAPER_QUAD = "Multi-branch U-Net with one encoder branch per MRI modality (jwon112/3d-segmentation)"
TWO_MODAL = ("t1ce", "flair")


class ModalityBranch(nn.Module):
    """One modality's encoder: stem DoubleConv 1->c, stage2 Down3D c->2c, stage3 Down3D 2c->4c."""

    def __init__(self, base: int, *, norm: str = "bn") -> None:
        super().__init__()
        self.stem = DoubleConv3D(1, base, norm=norm)
        self.stage2 = Down3D(base, 2 * base, norm=norm)
        self.stage3 = Down3D(2 * base, 4 * base, norm=norm)


class QuadBranchUNet3D(nn.Module):
    """Four modality branches through stage 3, fused stages 4-5, U-Net decoder.

    Args:
        in_channels: must equal ``len(modalities)``; channel i feeds the branch of modalities[i].
        out_channels: classes.
        base: per-branch stem width c (stages c, 2c, 4c; fused 4*4c -> 8*4c -> 16*4c).
        modality_attention: apply ModalityAttention3D at stages 2 and 3 before concatenation.
        modalities: branch names, in input-channel order.
        norm: ``bn`` | ``in`` | ``gn``.
    """

    def __init__(self, *, in_channels: int, out_channels: int, base: int = 8, modality_attention: bool = False,
                 modalities: tuple[str, ...] = MODALITY_ORDER, norm: str = "bn") -> None:
        super().__init__()
        if in_channels != len(modalities):
            raise ValueError(f"quad-branch model needs in_channels == len(modalities) = {len(modalities)} "
                             f"({modalities}), got {in_channels}")
        self.modalities = tuple(modalities)
        n = len(modalities)
        self.branches = nn.ModuleDict({m: ModalityBranch(base, norm=norm) for m in modalities})
        self.attention = (nn.ModuleDict({"stage2": ModalityAttention3D(n, 2 * base),
                                         "stage3": ModalityAttention3D(n, 4 * base)})
                          if modality_attention else None)
        w1, w2, w3 = n * base, n * 2 * base, n * 4 * base  # concatenated skip widths
        self.fused_stage4 = Down3D(w3, 2 * w3, norm=norm)
        self.fused_stage5 = Down3D(2 * w3, 4 * w3, norm=norm)
        self.dec1 = Up3D(4 * w3, 2 * w3, skip_ch=2 * w3, norm=norm)
        self.dec2 = Up3D(2 * w3, w3, skip_ch=w3, norm=norm)
        self.dec3 = Up3D(w3, w2, skip_ch=w2, norm=norm)
        self.dec4 = Up3D(w2, w1, skip_ch=w1, norm=norm)
        self.out_conv = OutConv3D(w1, out_channels)
        self.pam_stages = ([f"branches.{m}.{s}" for m in modalities for s in ("stem", "stage2", "stage3")]
                           + ["fused_stage4", "fused_stage5", "dec1", "dec2", "dec3", "dec4", "out_conv"])

    def _stage(self, name: str, feats: list[torch.Tensor],
               weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Apply the stage's modality attention (if any), recording its weights."""
        if self.attention is None or name not in self.attention:
            return feats
        feats, weights[name] = self.attention[name](feats)
        return feats

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if return_attention and self.attention is None:
            raise ValueError("return_attention=True needs modality_attention=True "
                             "(quadbranch_4modal_attention_unet_s)")
        weights: dict[str, torch.Tensor] = {}
        branches = [self.branches[m] for m in self.modalities]
        f1 = [b.stem(x[:, i:i + 1]) for i, b in enumerate(branches)]
        f2 = self._stage("stage2", [b.stage2(f) for b, f in zip(branches, f1)], weights)
        f3 = self._stage("stage3", [b.stage3(f) for b, f in zip(branches, f2)], weights)
        x1, x2, x3 = (torch.cat(f, dim=1) for f in (f1, f2, f3))
        x4 = self.fused_stage4(x3)
        y = self.fused_stage5(x4)
        y = self.dec1(y, x4)
        y = self.dec2(y, x3)
        y = self.dec3(y, x2)
        logits = self.out_conv(self.dec4(y, x1))
        return (logits, weights) if return_attention else logits


_UNET_META: dict[str, Any] = dict(family="modality_comparison", paper=PAPER_UNET, divisibility=16,
                                  default_patch_size=(128, 128, 128), tiny_kwargs={"base": 2},
                                  test_patch_size=(32, 32, 32))
_QUAD_META: dict[str, Any] = dict(family="modality_comparison", paper=PAPER_QUAD, modalities=MODALITY_ORDER,
                                  divisibility=16, default_patch_size=(128, 128, 128), tiny_kwargs={"base": 1},
                                  test_patch_size=(32, 32, 32))


@register_model(**_UNET_META, modalities=TWO_MODAL, num_params=22_579_236)
def unet3d_2modal_s(**kwargs: Any) -> nn.Module:
    return UNet3D(**dict(dict(base=32), **kwargs))


@register_model(**_UNET_META, modalities=MODALITY_ORDER, num_params=22_580_964)
def unet3d_4modal_s(**kwargs: Any) -> nn.Module:
    return UNet3D(**dict(dict(base=32), **kwargs))


@register_model(family="modality_comparison", paper=PAPER_UNET + " dual-branch 01", modalities=TWO_MODAL,
                divisibility=16, default_patch_size=(128, 128, 128), num_params=21_930_036, tiny_kwargs={"base": 1},
                test_patch_size=(32, 32, 32))
def dualbranch_2modal_unet_s(**kwargs: Any) -> nn.Module:
    return dualbranch_01_unet_s(**kwargs)


@register_model(**_QUAD_META, num_params=21_935_556)
def quadbranch_4modal_unet_s(**kwargs: Any) -> nn.Module:
    return QuadBranchUNet3D(**dict(dict(base=8, modality_attention=False), **kwargs))


@register_model(**_QUAD_META, num_params=21_940_924, returns_attention=True)
def quadbranch_4modal_attention_unet_s(**kwargs: Any) -> nn.Module:
    return QuadBranchUNet3D(**dict(dict(base=8, modality_attention=True), **kwargs))
