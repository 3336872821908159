"""volbench loss registry: ``create_loss(name, **kw)``, ``list_losses()``, ``register_loss``.

Every loss takes ``(logits, target)``: logits (B, C, *S) before softmax, target int64 labels
(B, *S) (or (B, 1, *S)); 2D or 3D; any C >= 2 unless the loss says otherwise.
Registered: ``nnunet`` (0.7 Dice + 0.3 CE, the default), ``standard`` (0.5 Dice + 0.5 CE) and ``luna_dice``
(the LUNA chapter's soft Dice + 8 x false-negative Dice; two-class logits only), ``sam_med3d`` (SAM-Med3D's
fine-tuning loss: Dice 3 + focal 1 + IoU 1.5 + 0.05 x IoU-head MSE; binary).
Adding a loss: decorate its builder with ``@register_loss("name")`` in a module imported below.
"""

from __future__ import annotations

from ._registry import DEFAULT_LOSS, LossSpec, create_loss, is_binary_loss, list_losses, loss_spec, register_loss
from . import segmentation  # noqa: E402,F401  (registers nnunet, standard)
from . import luna  # noqa: E402,F401  (registers luna_dice)
from . import sam  # noqa: E402,F401  (registers sam_med3d)

__all__ = ["DEFAULT_LOSS", "LossSpec", "create_loss", "is_binary_loss", "list_losses", "loss_spec", "register_loss"]
