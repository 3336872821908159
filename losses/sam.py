"""SAM-Med3D's fine-tuning loss (the seed tool's): Dice 3.0 + focal 1.0 + IoU 1.5 + 0.05 x MSE of the IoU head.

Input: two-class logits (B, 2, *S) ``[0, z]`` of a promptable model's prompt-free output (or (B, 1, *S) ``z``),
integer labels (B, *S) or (B, 1, *S), and optionally the model's predicted IoU (B, 1). With ``p = sigmoid(z)``
and ``g = (label == 1)``, per sample:

- Dice loss ``1 - (2 sum(p g) + 1e-5) / (sum(p) + sum(g) + 1e-5)`` (MONAI ``DiceLoss(sigmoid=True)``, smoothing
  1e-5), weight 3.0;
- focal loss on the logits, alpha 0.8 on the foreground, gamma 2 (MONAI ``FocalLoss(use_softmax=False)``), mean
  over voxels, weight 1.0;
- IoU loss ``1 - soft IoU``, soft IoU ``= (sum(p g) + 1e-5) / (sum(p) + sum(g) - sum(p g) + 1e-5)``, weight 1.5;
- ``0.05 x`` the mean squared error between the predicted IoU and the soft IoU (detached: the IoU head learns
  to predict the mask's quality, the mask is not pulled towards the prediction); left out without ``iou``.

Every term is averaged over the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from ._registry import register_loss

_SMOOTH = 1e-5


class SAMFineTuneLoss(nn.Module):
    """The weighted sum of the module docstring; ``forward(logits, target, iou=None)``."""

    def __init__(self, dice: float = 3.0, focal: float = 1.0, iou: float = 1.5, iou_head: float = 0.05,
                 alpha: float = 0.8, gamma: float = 2.0) -> None:
        super().__init__()
        self.weights = dict(dice=float(dice), focal=float(focal), iou=float(iou), iou_head=float(iou_head))
        self.dice = DiceLoss(sigmoid=True, smooth_nr=_SMOOTH, smooth_dr=_SMOOTH, batch=False)
        self.focal = FocalLoss(use_softmax=False, alpha=alpha, gamma=gamma, reduction="mean")

    @staticmethod
    def _foreground_logits(logits: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 3 or logits.shape[1] not in (1, 2):
            raise ValueError(f"logits must be (B, 2, *S) two-class or (B, 1, *S) foreground, got {tuple(logits.shape)}")
        return logits[:, 1:2] - logits[:, 0:1] if logits.shape[1] == 2 else logits

    def forward(self, logits: torch.Tensor, target: torch.Tensor, iou: torch.Tensor | None = None) -> torch.Tensor:
        z = self._foreground_logits(logits.float())
        if target.ndim == z.ndim - 1:
            target = target.unsqueeze(1)
        if tuple(target.shape) != tuple(z.shape) or target.is_floating_point():
            raise ValueError(f"target must be integer labels (B, *S) matching logits {tuple(logits.shape)}, got "
                             f"{tuple(target.shape)} {target.dtype}")
        g = (target == 1).float()
        p = torch.sigmoid(z)
        dims = tuple(range(2, z.ndim))
        inter = (p * g).sum(dims)
        soft_iou = (inter + _SMOOTH) / (p.sum(dims) + g.sum(dims) - inter + _SMOOTH)  # (B, 1)
        total = (self.weights["dice"] * self.dice(z, g) + self.weights["focal"] * self.focal(z, g)
                 + self.weights["iou"] * (1.0 - soft_iou).mean())
        if iou is not None:
            total = total + self.weights["iou_head"] * torch.mean((iou.float().reshape(soft_iou.shape)
                                                                   - soft_iou.detach()) ** 2)
        return total


@register_loss("sam_med3d", binary=True)
def sam_med3d_loss(**kw: Any) -> nn.Module:
    """SAM-Med3D's fine-tuning loss (see the module docstring); ``sam_med3d``'s own."""
    return SAMFineTuneLoss(**kw)
