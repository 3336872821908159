"""UNETR and Swin UNETR from MONAI, with MONAI's default sizes.

UNETR is built for one input size (``img_size``); the runner passes the patch size and infers with
windows of exactly that size. Swin UNETR takes any size divisible by 32.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from monai.networks.nets import UNETR, SwinUNETR

from ._registry import register_model


@register_model(
    family="monai_transformers", divisibility=16, default_patch_size=(128, 128, 128), needs_fixed_input=True,
    paper="Hatamizadeh et al., UNETR: Transformers for 3D Medical Image Segmentation, WACV 2022",
    num_params=None,  # depends on img_size (position embedding)
    tiny_kwargs=dict(hidden_size=32, mlp_dim=64, num_heads=2, feature_size=4, img_size=(32, 32, 32)),
    test_patch_size=(32, 32, 32),
)
def unetr(*, in_channels: int, out_channels: int, img_size: tuple[int, int, int] = (128, 128, 128),
          **kwargs: Any) -> nn.Module:
    """MONAI UNETR: ViT-B/16 encoder (hidden 768, 12 layers, 12 heads), feature size 16.

    MONAI builds a LayerNorm for cross-attention in every ViT block even when cross-attention is off;
    it is replaced by ``nn.Identity`` so that no parameter is left without a gradient (DDP needs that).
    """
    model = UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(img_size),
                  **dict(dict(feature_size=16, norm_name="instance"), **kwargs))
    for block in model.vit.blocks:
        if not block.with_cross_attention:
            block.norm_cross_attn = nn.Identity()
    return model


@register_model(
    family="monai_transformers", divisibility=32, default_patch_size=(128, 128, 128),
    paper="Hatamizadeh et al., Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in "
          "MRI Images, BrainLes 2021",
    num_params=62_191_990,
    tiny_kwargs=dict(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
    test_patch_size=(64, 64, 64),
)
def swin_unetr(*, in_channels: int, out_channels: int, img_size: Any = None, **kwargs: Any) -> nn.Module:
    """MONAI SwinUNETR, feature size 48 (MONAI default); ``img_size`` is accepted and ignored."""
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels,
                     **dict(dict(feature_size=48), **kwargs))
