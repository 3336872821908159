"""Dice + cross-entropy losses on softmax probabilities (MONAI ``DiceCELoss``).

Conventions: input logits (B, C, *S), C >= 2 classes including background; target int64 labels
(B, *S) in [0, C) (a (B, 1, *S) target is accepted too). Softmax over C, target one-hot encoded
inside, background included in the Dice term, soft Dice per sample and per class
(``batch=False``) then averaged, smoothing 1e-5 in numerator and denominator.
Loss = lambda_dice * (1 - Dice) + lambda_ce * CE (CE averaged over voxels).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from ._registry import register_loss


class DiceCELabelLoss(nn.Module):
    """``lambda_dice * DiceLoss + lambda_ce * CrossEntropy`` for logits and integer label targets.

    Args:
        lambda_dice: weight of the soft Dice loss (1 - Dice).
        lambda_ce: weight of the cross-entropy.
        squared_pred: square probabilities and targets in the Dice denominator.
        smooth: added to the Dice numerator and denominator.
        **kw: further ``monai.losses.DiceCELoss`` arguments (``batch``, ``weight``, ``label_smoothing``).
    """

    def __init__(self, lambda_dice: float, lambda_ce: float, *, squared_pred: bool = False,
                 smooth: float = 1e-5, **kw: Any) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0 or lambda_dice + lambda_ce == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got lambda_dice={lambda_dice}, "
                             f"lambda_ce={lambda_ce}")
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.loss = DiceCELoss(include_background=True, to_onehot_y=True, softmax=True, squared_pred=squared_pred,
                               smooth_nr=smooth, smooth_dr=smooth, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                               **kw)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for logits (B, C, *S) and labels (B, *S) or (B, 1, *S)."""
        if logits.ndim < 3 or logits.shape[1] < 2:
            raise ValueError(f"logits must be (B, C>=2, *S), got shape {tuple(logits.shape)}")
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        expected = (logits.shape[0], 1, *logits.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"target must be labels (B, *S) matching logits {tuple(logits.shape)}, "
                             f"got shape {tuple(target.shape)}")
        if target.is_floating_point():
            raise ValueError(f"target must hold integer labels, got dtype {target.dtype}")
        return self.loss(logits, target.long())

    def extra_repr(self) -> str:
        return f"lambda_dice={self.lambda_dice}, lambda_ce={self.lambda_ce}"


@register_loss("nnunet")
def nnunet_loss(**kw: Any) -> nn.Module:
    """0.7 * soft Dice loss (squared probabilities in the denominator) + 0.3 * CE; the default."""
    return DiceCELabelLoss(**dict(dict(lambda_dice=0.7, lambda_ce=0.3, squared_pred=True), **kw))


@register_loss("standard")
def standard_loss(**kw: Any) -> nn.Module:
    """0.5 * soft Dice loss + 0.5 * CE."""
    return DiceCELabelLoss(**dict(dict(lambda_dice=0.5, lambda_ce=0.5, squared_pred=False), **kw))
