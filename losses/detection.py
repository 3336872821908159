"""Losses of the detect-then-segment model (DetSeg3D): CenterNet-style detection terms and per-RoI Dice + BCE.

- Heatmap: CenterNet's penalty-reduced focal loss (Law & Deng 2018; Zhou et al. 2019) on the heatmap LOGITS
  against the Gaussian target ``y`` in [0, 1]: ``-(1 - p)^alpha log p`` at the peak cells (``y == 1``) and
  ``-(1 - y)^beta p^alpha log(1 - p)`` elsewhere, alpha 2, beta 4, summed over the batch and divided by the
  number of peak cells (lesions; at least 1), so each lesion weighs the same whatever the patch size. (A
  sigmoid focal loss averaged over every cell, as MONAI's ``FocalLoss`` on soft targets, divides the lesion
  terms by the cell count, a few hundred per patch, and treats every cell of ``y > 0.5`` as a lesion centre.)
- Size / offset: L1 at the cells of the targets' ``weight`` (the lesion centre cells, weight 1, or with box
  regression every cell of a lesion's box, weighted by its heatmap Gaussian: TTFNet), ``sum w |pred - target|``
  over the cells and the 3 axes divided by ``3 * sum w`` (weighted mean absolute error per coordinate); exactly
  0 (still attached to the graph) when the batch has no lesion. Sizes are compared as logarithms
  (``|log pred - log target|``, a relative error), so a lesion of one voxel and one of forty weigh the same;
  offsets as they are.
- RoI segmentation: per RoI, smoothed soft Dice loss ``1 - (2 sum(p t) + s) / (sum p + sum t + s)`` with
  ``s = 1`` (an empty target with an empty prediction gives ~0) plus BCE-with-logits averaged over the
  RoI's voxels; then the mean over RoIs, so each RoI (lesion) weighs the same whatever its size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIZE_FLOOR = 1e-3  # cells: below any real size (a voxel is 1/8 cell at stride 8)


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """CenterNet focal loss of heatmap logits (B, 1, d, h, w) against a Gaussian target of the same shape
    (peak cells exactly 1), normalised by the number of peak cells in the batch (at least 1); see the module
    docstring. Computed from the logits (``logsigmoid``), so it stays finite for any logit."""
    if logits.shape != target.shape:
        raise ValueError(f"heatmap logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    x, y = logits.float(), target.float()
    p = torch.sigmoid(x)
    peak = y >= 1.0
    pos = (1 - p).pow(alpha) * F.logsigmoid(x)
    neg = (1 - y).pow(beta) * p.pow(alpha) * F.logsigmoid(-x)
    n_peaks = peak.sum().clamp(min=1)
    return -(torch.where(peak, pos, neg).sum() / n_peaks).to(logits.dtype)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 per coordinate over the cells of ``mask`` (B, d, h, w), weighted by its values (0/1 or weights
    in [0, 1]): ``sum m |pred - target| / (K * sum m)``; 0 when ``mask`` is all 0.

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


def _log(size: torch.Tensor) -> torch.Tensor:
    """Log of positive sizes; cells without a size (0, masked out by the L1) get a finite value."""
    return size.clamp(min=SIZE_FLOOR).log()


class CenterNetDetectionLoss(nn.Module):
    """``w_heatmap * focal(heatmap logits) + w_size * L1(log size) + w_offset * L1(offset)``, weights 1, 1, 1.

    ``forward`` returns the three weighted terms as a dict (``heatmap``, ``size``, ``offset``).
    """

    def __init__(self, w_heatmap: float = 1.0, w_size: float = 1.0, w_offset: float = 1.0, alpha: float = 2.0,
                 beta: float = 4.0) -> None:
        super().__init__()
        self.w_heatmap, self.w_size, self.w_offset = float(w_heatmap), float(w_size), float(w_offset)
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, heat_logits: torch.Tensor, size: torch.Tensor, offset: torch.Tensor,
                targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "heatmap": self.w_heatmap * heatmap_focal_loss(heat_logits, targets["heatmap"], self.alpha, self.beta),
            "size": self.w_size * masked_l1(_log(size), _log(targets["size"]), targets["weight"]),
            "offset": self.w_offset * masked_l1(offset, targets["offset"], targets["weight"]),
        }

    def extra_repr(self) -> str:
        return (f"w_heatmap={self.w_heatmap}, w_size={self.w_size}, w_offset={self.w_offset}, alpha={self.alpha}, "
                f"beta={self.beta}")
