"""Losses of the detect-then-segment model (DetSeg3D): CenterNet-style detection terms and per-RoI Dice + BCE.

- Heatmap: MONAI ``FocalLoss`` with sigmoid (``use_softmax=False``, gamma 2, no alpha, mean over cells)
  on the heatmap LOGITS against the Gaussian target (soft targets in [0, 1]).
- Size / offset: L1 at the lesion centre cells only, ``sum |pred - target|`` over those cells and the
  3 axes divided by ``3 * n_pos`` (mean absolute error per coordinate, ``n_pos`` = centre cells in the
  batch); exactly 0 (still attached to the graph) when the batch has no lesion.
- RoI segmentation: per RoI, smoothed soft Dice loss ``1 - (2 sum(p t) + s) / (sum p + sum t + s)`` with
  ``s = 1`` (an empty target with an empty prediction gives ~0) plus BCE-with-logits averaged over the
  RoI's voxels; then the mean over RoIs, so each RoI (lesion) weighs the same whatever its size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import FocalLoss
from torch import nn


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss of heatmap logits (B, 1, d, h, w) against a Gaussian target of the same shape."""
    return FocalLoss(use_softmax=False, gamma=gamma, reduction="mean")(logits, target.to(logits.dtype))


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 per coordinate over the cells where ``mask`` (B, d, h, w) is 1; 0 when there are none.

    ``pred``/``target``: (B, K, d, h, w).
    """
    m = mask.to(pred.dtype).unsqueeze(1)
    n_pos = float(mask.sum())
    diff = ((pred - target.to(pred.dtype)).abs() * m).sum()
    if n_pos == 0:
        return diff * 0.0
    return diff / (n_pos * pred.shape[1])


def per_roi_dice_bce(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """(N,) Dice + BCE of each RoI: logits (N, 1, *R), binary target (N, 1, *R)."""
    if logits.shape != target.shape:
        raise ValueError(f"RoI logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ in shape")
    t = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    inter = (p * t).sum(dims)
    dice = 1.0 - (2.0 * inter + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(dims)
    return dice + bce


def roi_dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over RoIs of :func:`per_roi_dice_bce` (equal weight per RoI); 0 for no RoI."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return per_roi_dice_bce(logits, target, smooth).mean()


class RoIDiceBCELoss(nn.Module):
    """Module form of :func:`roi_dice_bce_loss` (``smooth`` added to the Dice numerator and denominator)."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return roi_dice_bce_loss(logits, target, self.smooth)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}"


class CenterNetDetectionLoss(nn.Module):
    """``w_heatmap * focal(heatmap logits) + w_size * L1(size) + w_offset * L1(offset)``, weights 1, 1, 1.

    ``forward`` returns the three weighted terms as a dict (``heatmap``, ``size``, ``offset``).
    """

    def __init__(self, w_heatmap: float = 1.0, w_size: float = 1.0, w_offset: float = 1.0, gamma: float = 2.0) -> None:
        super().__init__()
        self.w_heatmap, self.w_size, self.w_offset = float(w_heatmap), float(w_size), float(w_offset)
        self.gamma = float(gamma)

    def forward(self, heat_logits: torch.Tensor, size: torch.Tensor, offset: torch.Tensor,
                targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "heatmap": self.w_heatmap * heatmap_focal_loss(heat_logits, targets["heatmap"], self.gamma),
            "size": self.w_size * masked_l1(size, targets["size"], targets["mask"]),
            "offset": self.w_offset * masked_l1(offset, targets["offset"], targets["mask"]),
        }

    def extra_repr(self) -> str:
        return f"w_heatmap={self.w_heatmap}, w_size={self.w_size}, w_offset={self.w_offset}, gamma={self.gamma}"
