"""Shared skeleton of the dual-branch U-Nets (MODEL_SPECS 1.4, clean spec 1.13).

Input (B, 2, D, H, W): channel 0 = T1ce, channel 1 = FLAIR (``DUAL_MODALITIES``); each goes to its
own branch (the original repository fed T1ce to the branch it called FLAIR; volbench does not).
Each branch has a stem (stage 1, stride 1) and downsampling stages up to the fusion point; at every
dual stage the two branch outputs are concatenated along channels ([T1ce, FLAIR]) to form that
level's skip. After the fusion point a single encoder continues on the concatenation. The decoder
is a chain of :class:`Up3D` blocks (deepest first) with explicit skip widths, then a 1^3 output conv.

Families differ only in the per-stage block factories they pass and in the width layout:
:meth:`DualBranchLayout.fused_after_stage3` (01-06) or :meth:`DualBranchLayout.fused_after_stage4`
(07, 13, 14). Stages are registered as top-level children in call order, with names such as
``stem_t1ce``, ``flair_stage2``, ``fused_stage5``, ``dec4`` and ``out_conv`` (also listed in
``pam_stages``) so that stage-wise memory reports are readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .unet_blocks import OutConv3D, Up3D

DUAL_MODALITIES: tuple[str, str] = ("t1ce", "flair")
BRANCHES: tuple[str, str] = ("t1ce", "flair")
SIZE_BASE: dict[str, int] = {"xs": 8, "s": 16, "m": 32, "l": 64}
"""Per-branch stem width by size; every width doubles with each size step (clean spec 1.13)."""

BlockFactory = Callable[[int, int, int, str], nn.Module]
"""``factory(stage, in_ch, out_ch, norm)``: stage 1 keeps the resolution, stages >= 2 halve it."""


def check_dual_input(name: str, in_channels: int) -> None:
    """Raise ``ValueError`` unless ``in_channels == 2`` (T1ce, FLAIR)."""
    if in_channels != len(DUAL_MODALITIES):
        raise ValueError(f"{name} needs in_channels={len(DUAL_MODALITIES)} (modalities {DUAL_MODALITIES}: "
                         f"channel 0 = T1ce, channel 1 = FLAIR), got in_channels={in_channels}")


@dataclass(frozen=True)
class DualBranchLayout:
    """Channel widths of a dual-branch U-Net.

    Attributes:
        branch: per-branch output width of each dual stage (stage 1 = stem).
        fused: output width of each fused stage after the fusion point.
        decoder: output width of each Up3D block, deepest first; the last feeds the output conv.
    """

    branch: tuple[int, ...]
    fused: tuple[int, ...]
    decoder: tuple[int, ...]

    def __post_init__(self) -> None:
        if min(self.branch + self.fused + self.decoder, default=0) < 1:
            raise ValueError(f"layout widths must be >= 1, got branch={self.branch}, fused={self.fused}, "
                             f"decoder={self.decoder}")
        n_down = len(self.branch) + len(self.fused) - 1
        if len(self.branch) < 1 or len(self.decoder) != n_down:
            raise ValueError(f"layout needs >= 1 dual stage and one decoder width per downsampling ({n_down}), "
                             f"got branch={self.branch}, fused={self.fused}, decoder={self.decoder}")

    @property
    def skips(self) -> tuple[int, ...]:
        """Channels of every level's feature map, shallowest first (dual levels are concatenations)."""
        return tuple(2 * c for c in self.branch) + self.fused

    @classmethod
    def fused_after_stage3(cls, base: int, fused_mult: int = 4) -> DualBranchLayout:
        """01-06: branches base*[1, 2, 4]; fused stage 4 = 4*b3, stage 5 = 8*b3; decoder as the original.

        ``fused_mult`` (default 4) scales the fused widths (``fused_mult * b3``, ``2 * fused_mult * b3``).
        """
        b1, b2, b3 = base, 2 * base, 4 * base
        f4 = fused_mult * b3
        return cls(branch=(b1, b2, b3), fused=(f4, 2 * f4), decoder=(f4, 2 * b3, b2, 2 * b1))

    @classmethod
    def fused_after_stage4(cls, base: int, fused_mult: int = 4) -> DualBranchLayout:
        """07/13/14: branches base*[1, 2, 4, 8]; fused stage 5 = 4*b4; decoder b4, b3, b2, 2*stem.

        ``fused_mult`` (default 4) scales the fused width (``fused_mult * b4``).
        """
        b1, b2, b3, b4 = base, 2 * base, 4 * base, 8 * base
        return cls(branch=(b1, b2, b3, b4), fused=(fused_mult * b4,), decoder=(b4, b3, b2, 2 * b1))


def _stage_name(branch: str, stage: int) -> str:
    return f"stem_{branch}" if stage == 1 else f"{branch}_stage{stage}"


class DualBranchUNet(nn.Module):
    """Two-branch encoder (T1ce, FLAIR) fused by concatenation, single encoder after, U-Net decoder.

    Args:
        in_channels: must be 2 (channel 0 T1ce, channel 1 FLAIR).
        out_channels: classes.
        layout: channel widths (:class:`DualBranchLayout`).
        t1ce_block, flair_block: per-branch factories ``(stage, in_ch, out_ch, norm)``.
        fused_block: factory for the stages after the fusion point (``stage`` counts on).
        norm: ``bn`` | ``in`` | ``gn``, passed to every factory and to the decoder.
        name: model name used in error messages.
    """

    def __init__(self, *, in_channels: int, out_channels: int, layout: DualBranchLayout, t1ce_block: BlockFactory,
                 flair_block: BlockFactory, fused_block: BlockFactory, norm: str = "bn",
                 name: str = "dual-branch U-Net") -> None:
        super().__init__()
        check_dual_input(name, in_channels)
        self.layout = layout
        self.n_dual = len(layout.branch)
        self.pam_stages: list[str] = []
        factories = {"t1ce": t1ce_block, "flair": flair_block}
        prev = {b: 1 for b in BRANCHES}
        for stage, width in enumerate(layout.branch, start=1):
            for branch in BRANCHES:
                self._add(_stage_name(branch, stage), factories[branch](stage, prev[branch], width, norm))
                prev[branch] = width
        ch = 2 * layout.branch[-1]
        for stage, width in enumerate(layout.fused, start=self.n_dual + 1):
            self._add(f"fused_stage{stage}", fused_block(stage, ch, width, norm))
            ch = width
        skips = layout.skips[:-1]
        for level, (skip, width) in enumerate(zip(reversed(skips), layout.decoder)):
            self._add(f"dec{len(skips) - level}", Up3D(ch, width, skip_ch=skip, norm=norm))
            ch = width
        self._add("out_conv", OutConv3D(ch, out_channels))

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.pam_stages.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = {"t1ce": x[:, 0:1], "flair": x[:, 1:2]}
        levels: list[torch.Tensor] = []
        for stage in range(1, self.n_dual + 1):
            for branch in BRANCHES:
                feats[branch] = self.get_submodule(_stage_name(branch, stage))(feats[branch])
            levels.append(torch.cat([feats["t1ce"], feats["flair"]], dim=1))
        y = levels[-1]
        for stage in range(self.n_dual + 1, self.n_dual + 1 + len(self.layout.fused)):
            y = self.get_submodule(f"fused_stage{stage}")(y)
            levels.append(y)
        y = levels.pop()
        for level in range(len(levels), 0, -1):
            y = self.get_submodule(f"dec{level}")(y, levels[level - 1])
        return self.get_submodule("out_conv")(y)
