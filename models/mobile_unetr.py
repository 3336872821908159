"""MobileUNETR (Perera et al., ECCV-W BIC 2024): MobileViT encoder, transformer bottleneck, conv decoder.

``mobile_unetr_3d`` (MODEL_SPECS 1.12): stem conv 3^3 stride 2 -> MobileNetV2 (MV2) stages ->
stage 3 with three MobileViT blocks (dims 144/192/240, depths 2/4/3, 4 heads x 8 dims) -> a
global transformer bottleneck (dim 320, depth 3, 4 heads x 64, MLP 1280, dropout 0.1) ->
7 x (conv 3^3 -> BN -> SiLU) with x2 trilinear upsampling between them -> 1^3 head. SiLU and BN
throughout; total downsampling /64 (inputs divisible by 64); like the original, the decoder uses no
encoder skips.
Deviation from the original (clean spec 1.13): the MobileViT blocks are the v2 patch-unfolding form
(2^3 patches, sequence length N/8) instead of attending over all voxels of the map, so attention
cost stays bounded for large inputs. ``stem_stride=1`` removes the stem downsampling (/32) and ``stage_strides``
sets the five MV2 downsamplings; the decoder then has one conv per x2 level.
The tiny build (``TINY_3D``, ``--tiny``) downsamples by 4 with instance norm: a skip-free decoder from the former
/32 grid (2 x 2 x 1 for a 64 x 64 x 32 window) cannot place a lesion of a 32 x 32 x 16 scan, with batch norm a /8
build did not tell a bright blob from the head it lies in (tests/test_mobile_unetr_3d_learns.py), and on the CT
phantoms /4 learns the haemorrhages where /8 does not in a CPU budget (benchmarks/RESULTS.md); its inputs need only
be divisible by 4 (``tiny_divisibility``), so a tiny sweep on small CT scans is not padded to 64^3 windows.
Deviation (a volbench addition, off for isotropic voxels): given the voxel ``spacing`` (a sweep passes the dataset's
median), an axis coarser than the finest skips the first downsamplings (:mod:`models.anisotropy`, as nnU-Net plans),
e.g. /4 in-plane and /1 across the 4.5 mm slices of head CT for the tiny build, /64 and /16 for the default one.

``mobile_unetr`` (2D): the official model uses a pretrained Hugging Face ``apple/mobilevit-small``
encoder, which cannot be downloaded here. volbench builds a MobileViT-XXS-like encoder from scratch
(MV2 widths 16/16/24/48/64/80, MobileViT dims 64/80/96 with depths 2/4/3, expansion 2; the S encoder
alone would exceed the official 3M budget), a transformer bottleneck (dim 240, depth 3, as the
official), and a decoder (widths 96/64/32/16) that upsamples x2 per level, concatenates
the encoder skip and applies conv 3x3 (BN, SiLU), with MobileViT blocks at 1/16 and 1/8 (the
official decoder is hybrid too); logits at 1/2 are resized bilinearly to the input size (the official
resize is bicubic). About 3M parameters, like the official model; inputs divisible by 32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model
from .anisotropy import halvings_for_spacing, step_strides
from .blocks.layers import conv_nd, conv_norm_act_nd
from .blocks.mobilenetv2 import InvertedResidual
from .blocks.mobilevit import MobileViTBlock, make_transformer

PAPER = ("Perera et al., MobileUNETR: a lightweight end-to-end hybrid vision transformer for efficient "
         "medical image segmentation, ECCV Workshops (BioImage Computing) 2024")
MODALITIES = ("t1ce", "flair")
ACT = "silu"


def mv2_stack(spec: Sequence[tuple[int, int, int, float]], *, spatial_dims: int, norm: str) -> nn.Sequential:
    """MV2 blocks from ``(in_ch, out_ch, stride, expand_ratio)`` tuples (SiLU)."""
    return nn.Sequential(*[InvertedResidual(i, o, stride=s, expand_ratio=t, act=ACT, norm=norm,
                                            spatial_dims=spatial_dims) for i, o, s, t in spec])


class GlobalTransformer(nn.Module):
    """Transformer over all positions of a (B, C, *S) map (no positional embedding); shape-preserving."""

    def __init__(self, dim: int, depth: int, heads: int, *, mlp_dim: int, head_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = make_transformer(dim, depth, heads, mlp_dim=mlp_dim, head_dim=head_dim, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *sizes = x.shape
        y = self.layers(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(b, c, *sizes)


def _check_divisible(x: torch.Tensor, factor: int | Sequence[int], name: str) -> None:
    """Refuse an input whose spatial sizes are not multiples of ``factor`` (one, or one per axis)."""
    sizes = tuple(x.shape[2:])
    factors = (factor,) * len(sizes) if isinstance(factor, int) else tuple(factor)
    if any(s % f for s, f in zip(sizes, factors)):
        what = factors[0] if len(set(factors)) == 1 else factors
        raise ValueError(f"{name}: every spatial size must be divisible by {what}, got {sizes}")


def _planned_steps(strides: Sequence[int], spacing: Sequence[float] | None) -> list[tuple[int, int, int]]:
    """Per-axis strides of the downsampling steps ``strides`` (each 1 or 2): with ``spacing``, the steps of 2
    halve each axis as :mod:`models.anisotropy` plans it (an axis coarser than the finest skips the first ones)."""
    halving = [k for k, s in enumerate(strides) if s == 2]
    planned = step_strides(halvings_for_spacing(spacing, len(halving)), len(halving))
    steps = [(1, 1, 1)] * len(strides)
    for k, st in zip(halving, planned):
        steps[k] = st  # type: ignore[assignment]
    return steps


class MobileUNETR3D(nn.Module):
    """3D MobileUNETR (see the module docstring).

    Args:
        in_channels, out_channels: input modalities and classes.
        channels: 7 encoder widths (stem, stage1 a/b, stage2 a/b, stage3 a/b).
        mvit_dims, mvit_depths, mvit_mlp_dims: the three stage-3 MobileViT blocks.
        heads, head_dim: attention heads and per-head width of the MobileViT blocks.
        patch_size: MobileViT patch edge.
        bottleneck_depth, bottleneck_head_dim, bottleneck_mlp_dim, dropout: global transformer.
        decoder_channels: widths of the decoder convs, deepest first (the last log2(stride) + 1 are used).
        stem_stride: 2 (default, /64 in total) or 1 (/32).
        stage_strides: strides (1 or 2) of the five downsampling MV2 blocks (stage 1 twice, stage 2 twice, the
            first block of stage 3); the default (2, 2, 2, 2, 2) with ``stem_stride`` 2 gives /64.
        norm: ``bn`` | ``in`` | ``gn``.
        spacing: voxel spacing (mm per axis; the sweep passes the dataset's median): of the downsampling steps
            (the stem and stage strides of 2), an axis coarser than the finest skips the first ones
            (:mod:`models.anisotropy`), so head CT of 0.9 x 0.9 x 4.5 mm keeps its slices longer (tiny build: a
            grid of /4 in-plane that keeps every slice, instead of /4 on every axis); ``None`` or isotropic voxels:
            every step halves every axis, as the original.
    """

    def __init__(self, *, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (16, 24, 48, 64, 96, 160, 320),
                 mvit_dims: Sequence[int] = (144, 192, 240), mvit_depths: Sequence[int] = (2, 4, 3),
                 mvit_mlp_dims: Sequence[int] = (384, 576, 960), heads: int = 4, head_dim: int = 8,
                 patch_size: int = 2, bottleneck_depth: int = 3, bottleneck_head_dim: int = 64,
                 bottleneck_mlp_dim: int = 1280, dropout: float = 0.1,
                 decoder_channels: Sequence[int] = (196, 160, 128, 96, 64, 32, 16), stem_stride: int = 2,
                 stage_strides: Sequence[int] = (2, 2, 2, 2, 2), norm: str = "bn",
                 spacing: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(channels) != 7 or len(mvit_dims) != 3 or len(mvit_depths) != 3 or len(mvit_mlp_dims) != 3:
            raise ValueError(f"need 7 channels and 3 MobileViT dims/depths/mlp dims, got {tuple(channels)}, "
                             f"{tuple(mvit_dims)}, {tuple(mvit_depths)}, {tuple(mvit_mlp_dims)}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if len(stage_strides) != 5 or any(s not in (1, 2) for s in stage_strides):
            raise ValueError(f"stage_strides needs 5 strides of 1 or 2, got {tuple(stage_strides)}")
        steps = _planned_steps((stem_stride, *stage_strides), spacing)
        self.axis_stride = tuple(math.prod(st[a] for st in steps) for a in range(3))
        self.stride = max(self.axis_stride)  # divisibility of every input axis
        self.upsampling = [st for st in reversed(steps) if max(st) > 1]  # scale factors of the decoder
        n_up = len(self.upsampling)
        if len(decoder_channels) < n_up + 1:
            raise ValueError(f"decoder_channels needs >= {n_up + 1} widths for stride {self.stride}, "
                             f"got {len(decoder_channels)}")
        c0, c1, c2, c3, c4, c5, c6 = channels
        self.stem = conv_norm_act_nd(3, in_channels, c0, 3, stride=steps[0], norm=norm, act=ACT)
        s1, s2, s3, s4, s5 = steps[1:]
        self.stage1 = mv2_stack([(c0, c0, 1, 1), (c0, c1, s1, 4), (c1, c1, 1, 3), (c1, c1, 1, 3), (c1, c2, s2, 4)],
                                spatial_dims=3, norm=norm)
        self.stage2 = mv2_stack([(c2, c3, s3, 4), (c3, c3, 1, 3), (c3, c4, s4, 4)], spatial_dims=3, norm=norm)

        def mvit(ch: int, k: int) -> MobileViTBlock:
            return MobileViTBlock(ch, dim=mvit_dims[k], depth=mvit_depths[k], heads=heads, head_dim=head_dim,
                                  mlp_ratio=mvit_mlp_dims[k] / mvit_dims[k], patch_size=patch_size, norm=norm,
                                  act=ACT, spatial_dims=3)

        self.stage3 = nn.Sequential(mv2_stack([(c4, c5, s5, 4)], spatial_dims=3, norm=norm), mvit(c5, 0),
                                    mvit(c5, 1), mv2_stack([(c5, c6, 1, 4)], spatial_dims=3, norm=norm),
                                    mvit(c6, 2))
        self.bottleneck = GlobalTransformer(c6, bottleneck_depth, heads, mlp_dim=bottleneck_mlp_dim,
                                            head_dim=bottleneck_head_dim, dropout=dropout)
        widths = [c6, *decoder_channels[len(decoder_channels) - n_up - 1:]]
        self.decoder = nn.ModuleList(conv_norm_act_nd(3, i, o, 3, norm=norm, act=ACT)
                                     for i, o in zip(widths[:-1], widths[1:]))
        self.head = conv_nd(3, widths[-1], out_channels, 1, bias=True)
        self.pam_stages = ["stem", "stage1", "stage2", "stage3", "bottleneck"] + [
            f"decoder.{i}" for i in range(len(self.decoder))] + ["head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, self.axis_stride, "mobile_unetr_3d")
        y = self.bottleneck(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        for i, conv in enumerate(self.decoder):
            if i:
                y = F.interpolate(y, scale_factor=self.upsampling[i - 1], mode="trilinear", align_corners=False)
            y = conv(y)
        return self.head(y)


class DecoderLevel2D(nn.Module):
    """x2 bilinear upsampling -> concat skip -> conv 3x3 (BN, SiLU) -> [MobileViT block]."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, *, mvit_dim: int | None, heads: int,
                 norm: str) -> None:
        super().__init__()
        self.conv = conv_norm_act_nd(2, in_ch + skip_ch, out_ch, 3, norm=norm, act=ACT)
        self.mvit = (MobileViTBlock(out_ch, dim=mvit_dim, depth=1, heads=heads, norm=norm, act=ACT, spatial_dims=2)
                     if mvit_dim else nn.Identity())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.mvit(self.conv(torch.cat([skip, x], dim=1)))


class MobileUNETR2D(nn.Module):
    """2D MobileUNETR with a scratch MobileViT-XXS-like encoder (see the module docstring).

    Args:
        in_channels, out_channels: input channels and classes.
        channels: 6 encoder widths (stem, 1/2, 1/4, 1/8, 1/16, 1/32).
        mvit_dims, mvit_depths: encoder MobileViT blocks at 1/8, 1/16, 1/32.
        bottleneck_dim, bottleneck_depth: global transformer at 1/32.
        decoder_channels: widths at 1/16, 1/8, 1/4, 1/2.
        decoder_mvit_dims: MobileViT dims of the decoder levels (0: none).
        heads, expand_ratio, norm: shared settings.
    """

    def __init__(self, *, in_channels: int, out_channels: int, channels: Sequence[int] = (16, 16, 24, 48, 64, 80),
                 mvit_dims: Sequence[int] = (64, 80, 96), mvit_depths: Sequence[int] = (2, 4, 3),
                 bottleneck_dim: int = 240, bottleneck_depth: int = 3,
                 decoder_channels: Sequence[int] = (96, 64, 32, 16), decoder_mvit_dims: Sequence[int] = (96, 64, 0, 0),
                 heads: int = 4, expand_ratio: float = 2.0, norm: str = "bn") -> None:
        super().__init__()
        if len(channels) != 6 or len(mvit_dims) != 3 or len(decoder_channels) != 4 or len(decoder_mvit_dims) != 4:
            raise ValueError(f"need 6 channels, 3 mvit_dims, 4 decoder widths/dims; got {tuple(channels)}, "
                             f"{tuple(mvit_dims)}, {tuple(decoder_channels)}, {tuple(decoder_mvit_dims)}")
        c0, c1, c2, c3, c4, c5 = channels
        t = expand_ratio

        def mvit(ch: int, k: int) -> MobileViTBlock:
            return MobileViTBlock(ch, dim=mvit_dims[k], depth=mvit_depths[k], heads=heads, norm=norm, act=ACT,
                                  spatial_dims=2)

        self.stem = conv_norm_act_nd(2, in_channels, c0, 3, stride=2, norm=norm, act=ACT)
        self.layer1 = mv2_stack([(c0, c1, 1, t)], spatial_dims=2, norm=norm)
        self.layer2 = mv2_stack([(c1, c2, 2, t), (c2, c2, 1, t), (c2, c2, 1, t)], spatial_dims=2, norm=norm)
        self.layer3 = nn.Sequential(mv2_stack([(c2, c3, 2, t)], spatial_dims=2, norm=norm), mvit(c3, 0))
        self.layer4 = nn.Sequential(mv2_stack([(c3, c4, 2, t)], spatial_dims=2, norm=norm), mvit(c4, 1))
        self.layer5 = nn.Sequential(mv2_stack([(c4, c5, 2, t)], spatial_dims=2, norm=norm), mvit(c5, 2))
        self.bottleneck = nn.Sequential(conv_norm_act_nd(2, c5, bottleneck_dim, 1, norm=norm, act=ACT),
                                        GlobalTransformer(bottleneck_dim, bottleneck_depth, heads,
                                                          mlp_dim=2 * bottleneck_dim))
        ins = [bottleneck_dim, *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            DecoderLevel2D(i, s, o, mvit_dim=d or None, heads=heads, norm=norm)
            for i, s, o, d in zip(ins, (c4, c3, c2, c1), decoder_channels, decoder_mvit_dims))
        self.head = conv_nd(2, decoder_channels[-1], out_channels, 1, bias=True)
        self.pam_stages = ["stem", "layer1", "layer2", "layer3", "layer4", "layer5", "bottleneck"] + [
            f"decoder.{i}" for i in range(4)] + ["head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, 32, "mobile_unetr")
        s1 = self.layer1(self.stem(x))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        y = self.bottleneck(self.layer5(s4))
        for level, skip in zip(self.decoder, (s4, s3, s2, s1)):
            y = level(y, skip)
        return F.interpolate(self.head(y), size=x.shape[2:], mode="bilinear", align_corners=False)


# /4 (stem and the first stage-1 downsampling; a skip-free decoder from the /32 grid, 2 x 2 x 1 for a 64 x 64 x 32
# window, cannot place a lesion; from /8 it did not learn the CT phantoms' haemorrhages in 30 epochs) and instance norm
# (with batch norm it did not learn; module docstring).
TINY_3D: dict[str, Any] = dict(channels=(8, 8, 8, 16, 16, 16, 32), mvit_dims=(16, 16, 16), mvit_depths=(1, 1, 1),
                               mvit_mlp_dims=(32, 32, 32), head_dim=2, bottleneck_depth=1, bottleneck_head_dim=8,
                               bottleneck_mlp_dim=64, decoder_channels=(32, 16, 16, 16), stem_stride=2,
                               stage_strides=(2, 1, 1, 1, 1), norm="in")
TINY_2D: dict[str, Any] = dict(channels=(4, 8, 8, 8, 8, 8), mvit_dims=(8, 8, 8), mvit_depths=(1, 1, 1),
                               bottleneck_dim=16, bottleneck_depth=1, decoder_channels=(8, 8, 8, 8),
                               decoder_mvit_dims=(8, 8, 0, 0))


@register_model(family="mobile_unetr", paper=PAPER + " (3D variant, jwon112/3d-segmentation)", modalities=MODALITIES, any_channels=True,
                divisibility=64, tiny_divisibility=4, default_patch_size=(128, 128, 128), num_params=23_128_604,
                tiny_kwargs=TINY_3D, spacing_kwarg="spacing",
                test_patch_size=(32, 32, 16))
def mobile_unetr_3d(**kwargs: Any) -> nn.Module:
    return MobileUNETR3D(**kwargs)


@register_model(family="mobile_unetr", paper=PAPER, spatial_dims=2, modalities=MODALITIES, any_channels=True,
                divisibility=32,
                default_patch_size=(128, 128), num_params=3_209_044, tiny_kwargs=TINY_2D, test_patch_size=(64, 64))
def mobile_unetr(**kwargs: Any) -> nn.Module:
    return MobileUNETR2D(**kwargs)
