"""The LUNA16 chapter's weighted soft Dice (Stevens, Antiga & Viehmann, Deep Learning with PyTorch, ch. 13).

Conventions: input two-class logits (B, 2, *S) (2D or 3D), target int64 labels (B, *S) or (B, 1, *S);
``p = softmax(logits)[:, 1]`` (for ``unet2d_luna``, whose logits are ``cat([0, z])``, exactly the chapter's
``sigmoid(z)``), ``g = (target == 1)`` as float. Per sample, over all voxels:
``dice_loss(p, g) = 1 - (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps)`` with ``eps = 1`` (an empty label
and an empty prediction give 0). The chapter's ``computeBatchLoss`` returns
``dice_loss(p, g).mean() + dice_loss(p * g, g).mean() * 8``: the second term, the prediction restricted to
the label, only sees false negatives (it is 0 when every label voxel has p = 1; false positives do not change
it), so ``fn_weight`` (the chapter's 8) trades precision for recall.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_loss


def soft_dice_loss(prediction: torch.Tensor, label: torch.Tensor, epsilon: float = 1.0) -> torch.Tensor:
    """The chapter's ``diceLoss``: ``1 - (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps)`` per sample (B,),
    summed over every non-batch dimension."""
    dims = tuple(range(1, prediction.ndim))
    correct = (prediction * label).sum(dim=dims)
    return 1 - (2 * correct + epsilon) / (prediction.sum(dim=dims) + label.sum(dim=dims) + epsilon)


class LunaDiceLoss(nn.Module):
    """``mean_b dice_loss(p, g) + fn_weight * mean_b dice_loss(p * g, g)`` (see the module docstring).

    Args:
        fn_weight: weight of the false-negative Dice term (the chapter's 8).
        epsilon: added to the Dice numerator and denominator (the chapter's 1).
    """

    def __init__(self, fn_weight: float = 8.0, epsilon: float = 1.0) -> None:
        super().__init__()
        if fn_weight < 0 or epsilon <= 0:
            raise ValueError(f"fn_weight must be >= 0 and epsilon > 0, got fn_weight={fn_weight}, epsilon={epsilon}")
        self.fn_weight, self.epsilon = float(fn_weight), float(epsilon)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for two-class logits (B, 2, *S) and labels (B, *S) or (B, 1, *S)."""
        if logits.ndim < 3 or logits.shape[1] != 2:
            raise ValueError(f"luna_dice takes two-class logits (B, 2, *S), got shape {tuple(logits.shape)}")
        if target.ndim == logits.ndim:
            target = target.squeeze(1) if target.shape[1] == 1 else target
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"target must be labels (B, *S) matching logits {tuple(logits.shape)}, "
                             f"got shape {tuple(target.shape)}")
        if target.is_floating_point():
            raise ValueError(f"target must hold integer labels, got dtype {target.dtype}")
        p = torch.softmax(logits.float(), dim=1)[:, 1]
        g = (target == 1).float()
        dice = soft_dice_loss(p, g, self.epsilon)
        false_negative = soft_dice_loss(p * g, g, self.epsilon)
        return dice.mean() + false_negative.mean() * self.fn_weight

    def extra_repr(self) -> str:
        return f"fn_weight={self.fn_weight}, epsilon={self.epsilon}"


@register_loss("luna_dice", flags=("fn_weight",), binary=True)
def luna_dice_loss(fn_weight: float = 8.0, epsilon: float = 1.0) -> nn.Module:
    """The LUNA chapter's soft Dice + ``fn_weight`` (8) x false-negative Dice; two-class logits only."""
    return LunaDiceLoss(fn_weight=fn_weight, epsilon=epsilon)
