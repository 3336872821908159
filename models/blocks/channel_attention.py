"""Channel attention (CBAM channel branch) and per-modality attention for multi-branch networks.

Conventions: feature maps are (B, C, *spatial) with any number of spatial dims (the "3D" in the
names is the volbench default; the pooling flattens all spatial axes, so 2D maps work too).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class ChannelAttention3D(nn.Module):
    """CBAM channel attention (Woo et al., ECCV 2018): scale each channel by a learned gate in (0, 1).

    avg-pool and max-pool over space -> shared MLP C -> max(1, C // reduction) -> C (ReLU between,
    no bias) -> sum -> sigmoid -> multiply the input channel-wise. Shape-preserving.

    Args:
        channels: C, channels of the input.
        reduction: r, the MLP's bottleneck ratio (hidden width ``max(1, C // r)``).
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"ChannelAttention3D needs channels >= 1 and reduction >= 1, "
                             f"got channels={channels}, reduction={reduction}")
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, channels, bias=False))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights (B, C) in (0, 1)."""
        flat = x.flatten(2)
        return torch.sigmoid(self.mlp(flat.mean(dim=2)) + self.mlp(flat.amax(dim=2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gate(x)
        return x * w.view(*w.shape, *([1] * (x.dim() - 2)))


class ModalityAttention3D(nn.Module):
    """Learned scalar weight per modality branch (the quad-branch attention of MODEL_SPECS 1.11).

    Global-average-pool each modality's map (C channels each) -> concat (n*C) ->
    Linear(n*C -> max(1, n*C // reduction)) -> ReLU -> Linear(-> n) -> Sigmoid; each modality's map
    is multiplied by its weight.

    Args:
        n_modalities: n, number of branches.
        channels: C, channels of every branch's map.
        reduction: bottleneck ratio of the MLP (default 4).

    ``forward(features)`` takes a sequence of n maps (B, C, *spatial) and returns
    ``(scaled maps, weights (B, n))``.
    """

    def __init__(self, n_modalities: int, channels: int, reduction: int = 4) -> None:
        super().__init__()
        if n_modalities < 1 or channels < 1 or reduction < 1:
            raise ValueError(f"ModalityAttention3D needs positive sizes, got n_modalities={n_modalities}, "
                             f"channels={channels}, reduction={reduction}")
        self.n_modalities = n_modalities
        total = n_modalities * channels
        self.mlp = nn.Sequential(nn.Linear(total, max(1, total // reduction)), nn.ReLU(inplace=True),
                                 nn.Linear(max(1, total // reduction), n_modalities), nn.Sigmoid())

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        if len(features) != self.n_modalities:
            raise ValueError(f"ModalityAttention3D expects {self.n_modalities} feature maps, got {len(features)}")
        pooled = torch.cat([f.flatten(2).mean(dim=2) for f in features], dim=1)
        weights = self.mlp(pooled)
        scaled = [f * weights[:, i].view(-1, *([1] * (f.dim() - 1))) for i, f in enumerate(features)]
        return scaled, weights
