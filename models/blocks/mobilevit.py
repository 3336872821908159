"""MobileViT block (Mehta & Rastegari, ICLR 2022), the v2 patch-unfolding form, for 2D and 3D maps.

Block: local conv 3^k (norm, act) -> 1^k to ``dim`` -> unfold into p^k patches -> ``depth`` pre-LN
transformer layers -> LayerNorm -> fold -> 1^k back to C (norm) -> concat with the input ->
3^k fusion conv (norm, act). Shape-preserving.

Patch unfolding: a (B, dim, *S) map, zero-padded so each S_i is a multiple of p, becomes tokens of
shape (B * p^k, N / p^k, dim), N = prod(padded S): the token at the same offset inside every patch
forms one sequence, so attention length is N / p^k (not N as in the v1 block that attends over all
voxels: 32^3 tokens at stage 3 of a 128^3 input). Folding inverts this and crops the padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import conv_nd, conv_norm_act_nd, make_norm_nd


def unfold_patches(x: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, d, *S) -> tokens (B * p^k, prod(S_pad) / p^k, d) and the padded sizes S_pad."""
    b, d, *sizes = x.shape
    p, k = patch_size, len(sizes)
    padded = tuple(math.ceil(s / p) * p for s in sizes)
    pads: list[int] = []
    for s, sp in zip(reversed(sizes), reversed(padded)):
        pads += [0, sp - s]
    if any(pads):
        x = F.pad(x, pads)
    grid = [sp // p for sp in padded]
    view = [b, d]
    for n in grid:
        view += [n, p]
    x = x.reshape(view)
    # axes: 0 batch, 1 dim, then (n_i at 2+2i, p at 3+2i) -> (B, p..., n..., d)
    order = [0] + [3 + 2 * i for i in range(k)] + [2 + 2 * i for i in range(k)] + [1]
    tokens = x.permute(order).reshape(b * p**k, math.prod(grid), d)
    return tokens, padded


def fold_patches(tokens: torch.Tensor, batch: int, padded: tuple[int, ...], sizes: tuple[int, ...],
                 patch_size: int) -> torch.Tensor:
    """Inverse of :func:`unfold_patches`: tokens -> (B, d, *sizes), cropping the zero padding."""
    p, k, d = patch_size, len(padded), tokens.shape[-1]
    grid = [sp // p for sp in padded]
    x = tokens.reshape([batch] + [p] * k + grid + [d])
    # current axes: 0 batch, 1..k p_i, k+1..2k n_i, 2k+1 dim -> (B, d, n_1, p_1, ..., n_k, p_k)
    order = [0, 2 * k + 1]
    for i in range(k):
        order += [k + 1 + i, 1 + i]
    x = x.permute(order).reshape([batch, d, *padded])
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)]


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on (B, L, dim) via ``F.scaled_dot_product_attention``.

    ``head_dim`` defaults to ``dim // heads`` (then dim must be divisible by heads); an explicit
    head_dim gives an inner width heads * head_dim, projected back to dim.
    """

    def __init__(self, dim: int, heads: int, *, head_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"transformer dim {dim} must be divisible by heads {heads}")
            head_dim = dim // heads
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class TransformerLayer(nn.Module):
    """Pre-LN transformer layer: x + MHSA(LN(x)); x + MLP(LN(x)), MLP = Linear -> GELU -> Linear."""

    def __init__(self, dim: int, heads: int, *, mlp_dim: int, head_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, head_dim=head_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def make_transformer(dim: int, depth: int, heads: int, *, mlp_dim: int, head_dim: int | None = None,
                     dropout: float = 0.0) -> nn.Sequential:
    """``depth`` :class:`TransformerLayer` s followed by a final LayerNorm, on (B, L, dim)."""
    if depth < 1:
        raise ValueError(f"transformer depth must be >= 1, got {depth}")
    layers: list[nn.Module] = [TransformerLayer(dim, heads, mlp_dim=mlp_dim, head_dim=head_dim, dropout=dropout)
                               for _ in range(depth)]
    return nn.Sequential(*layers, nn.LayerNorm(dim))


class MobileViTBlock(nn.Module):
    """MobileViT v2-style block for ``spatial_dims`` 2 or 3 (see the module docstring).

    Args:
        channels: C, input and output channels.
        dim: transformer width (default C); must be divisible by ``heads`` unless head_dim is given.
        depth: transformer layers.
        heads: attention heads.
        mlp_ratio: MLP hidden width = round(dim * mlp_ratio).
        patch_size: p, patch edge in voxels.
        norm: ``bn`` | ``in`` | ``gn`` for the conv parts.
        act: activation of the conv parts.
        head_dim: per-head width (default dim // heads).
        spatial_dims: 3 or 2.

    ``self.transformer[0]`` receives the (B * p^k, N / p^k, dim) token tensor.
    """

    def __init__(self, channels: int, *, dim: int | None = None, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 2.0, patch_size: int = 2, norm: str = "bn", act: str = "relu",
                 head_dim: int | None = None, spatial_dims: int = 3) -> None:
        super().__init__()
        dim = channels if dim is None else dim
        if head_dim is None and dim % heads:
            raise ValueError(f"MobileViT dim {dim} must be divisible by heads {heads}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size, self.spatial_dims = patch_size, spatial_dims
        self.local = nn.Sequential(conv_norm_act_nd(spatial_dims, channels, channels, 3, norm=norm, act=act),
                                   conv_nd(spatial_dims, channels, dim, 1))
        self.transformer = make_transformer(dim, depth, heads, mlp_dim=max(1, int(round(dim * mlp_ratio))),
                                            head_dim=head_dim)
        self.project = nn.Sequential(conv_nd(spatial_dims, dim, channels, 1),
                                     make_norm_nd(norm, channels, spatial_dims))
        self.fuse = conv_norm_act_nd(spatial_dims, 2 * channels, channels, 3, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"MobileViTBlock({self.spatial_dims}D) expects a {self.spatial_dims + 2}-D tensor, "
                             f"got shape {tuple(x.shape)}")
        y = self.local(x)
        sizes = tuple(y.shape[2:])
        tokens, padded = unfold_patches(y, self.patch_size)
        tokens = self.transformer(tokens)
        y = fold_patches(tokens, x.shape[0], padded, sizes, self.patch_size)
        return self.fuse(torch.cat([x, self.project(y)], dim=1))


class MobileViTBlock3D(MobileViTBlock):
    """:class:`MobileViTBlock` on (B, C, D, H, W) maps."""

    def __init__(self, channels: int, *, dim: int | None = None, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 2.0, patch_size: int = 2, norm: str = "bn", act: str = "relu",
                 head_dim: int | None = None) -> None:
        super().__init__(channels, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, patch_size=patch_size,
                         norm=norm, act=act, head_dim=head_dim, spatial_dims=3)


class MobileViTBlock2D(MobileViTBlock):
    """:class:`MobileViTBlock` on (B, C, H, W) maps."""

    def __init__(self, channels: int, *, dim: int | None = None, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 2.0, patch_size: int = 2, norm: str = "bn", act: str = "relu",
                 head_dim: int | None = None) -> None:
        super().__init__(channels, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, patch_size=patch_size,
                         norm=norm, act=act, head_dim=head_dim, spatial_dims=2)


class Down3DStrideMViT(nn.Sequential):
    """Transition (PW 1^3 in->out (norm, ReLU), DW 3^3 stride 2 (norm, ReLU)) -> MobileViTBlock3D(out).

    Halves each spatial size (ceil for odd sizes).
    """

    def __init__(self, in_ch: int, out_ch: int, *, heads: int = 4, mlp_ratio: float = 2.0, depth: int = 2,
                 norm: str = "bn") -> None:
        super().__init__(
            conv_norm_act_nd(3, in_ch, out_ch, 1, norm=norm, act="relu"),
            conv_norm_act_nd(3, out_ch, out_ch, 3, stride=2, groups=out_ch, norm=norm, act="relu"),
            MobileViTBlock3D(out_ch, depth=depth, heads=heads, mlp_ratio=mlp_ratio, norm=norm),
        )


__all__ = ["Down3DStrideMViT", "MobileViTBlock", "MobileViTBlock2D", "MobileViTBlock3D", "MultiHeadSelfAttention",
           "TransformerLayer", "fold_patches", "make_transformer", "unfold_patches"]
