"""nnU-Net's deep-supervision loss: a weighted sum of one loss over the network's output scales.

Conventions: ``outputs`` is a list of logits (B, C, *S_i), full resolution first, each scale at most the size of
the previous (the decoder's segmentation heads, as ``dynamic-network-architectures`` and nnU-Net return them);
``target`` holds int64 labels (B, *S) or (B, 1, *S) at full resolution. Scale ``i`` weighs ``1 / 2**i``, the
lowest-resolution scale weighs 0, and the weights are normalised to sum 1 (nnU-Net's ``_build_loss``); the
target reaches each scale by nearest-neighbour ``nearest-exact`` interpolation to that output's size (nnU-Net's
``DownsampleSegForDSTransform``). A single output is the plain loss.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def deep_supervision_weights(n_scales: int) -> tuple[float, ...]:
    """nnU-Net's weights of ``n_scales`` outputs (full resolution first): 1/2**i, the last 0, normalised to sum
    1, e.g. 4 scales -> (8/14, 4/14, 2/14, 0); one scale -> (1.0,)."""
    if n_scales < 1:
        raise ValueError(f"deep supervision needs at least one output, got {n_scales}")
    if n_scales == 1:
        return (1.0,)
    raw = [1.0 / 2**i for i in range(n_scales - 1)] + [0.0]
    return tuple(w / sum(raw) for w in raw)


def downsample_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Integer labels (B, *S) or (B, 1, *S) resized to ``size`` by ``nearest-exact`` interpolation, (B, *size)."""
    labels = target if target.ndim == len(size) + 2 else target.unsqueeze(1)
    if tuple(labels.shape[2:]) == tuple(size):
        return labels[:, 0]
    return F.interpolate(labels.float(), size=tuple(size), mode="nearest-exact")[:, 0].to(target.dtype)


def deep_supervision_loss(loss: Loss, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum over scales of ``weight_i * loss(outputs[i].float(), target at scale i)`` (weights:
    :func:`deep_supervision_weights`).

    The zero-weight scale is still computed (times 0, so its head gets a zero gradient rather than none):
    DistributedDataParallel then finds every parameter used; nnU-Net skips it, or weighs it 1e-6 under DDP.
    """
    weights = deep_supervision_weights(len(outputs))
    terms = [w * loss(out.float(), downsample_labels(target, out.shape[2:])) for w, out in zip(weights, outputs)]
    return torch.stack(terms).sum()
