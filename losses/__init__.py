"""volbench loss registry: ``create_loss(name, **kw)``, ``list_losses()``, ``register_loss``.

Every loss takes ``(logits, target)``: logits (B, C, *S) before softmax, target int64 labels
(B, *S) (or (B, 1, *S)); 2D or 3D; any C >= 2.
Registered: ``nnunet`` (0.7 Dice + 0.3 CE, the default) and ``standard`` (0.5 Dice + 0.5 CE).
Adding a loss: decorate its builder with ``@register_loss("name")`` in a module imported below.
"""

from __future__ import annotations

from ._registry import DEFAULT_LOSS, create_loss, list_losses, register_loss
from . import segmentation  # noqa: E402,F401  (registers nnunet, standard)

__all__ = ["DEFAULT_LOSS", "create_loss", "list_losses", "register_loss"]
