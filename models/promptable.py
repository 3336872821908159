"""The interface of promptable (click-driven) segmentation networks: SAM-Med3D, VISTA3D.

A promptable network splits into an image encoder, run once per window, and a light decoder, run once per click
on the cached embedding::

    emb = model.encode(image)                      # image (B, C, D, H, W)
    out = model.decode(emb, points, labels, None)  # first click(s)
    out = model.decode(emb, points, labels, out.low_res if model.accepts_mask_prompt else None)

Conventions shared by every implementation:

- ``points`` (B, N, 3) float: voxel coordinates in the window along array axes 0, 1, 2 (the axes of ``image``'s
  spatial dimensions, in that order), voxel centres at integers (``torch.argwhere`` of a mask gives valid
  points). Each model converts them to its own convention; its module docstring states the mapping.
- ``labels`` (B, N) int64: 1 positive (inside the target), 0 negative, -1 padding (the models' not-a-point
  token, as they pad their own prompts: lets the samples of a batch carry different click counts).
- ``PromptOutput.logits`` (B, M, D, H, W): foreground logits at the window's full resolution; M = 1 with points
  (a prompt picks one object: one mask), M = ``n_masks`` without (the prompt-free masks).

Prompt-free masks: a model built with ``out_channels = 1 + R`` gives R prompt-free masks, each its own learnt
query (SAM-Med3D: one mask token each, VISTA3D: one class prompt each; the model's docstring says which). R = 1 is
the binary lesion track; the BraTS track uses R = 3 (WT, TC, ET, in that order: the task maps them to labels).

``forward(x)`` is the prompt-free prediction as logits ``cat([0, z_1, ..., z_R])``, ``z = prompt_free(x).logits``
(``forward(x, with_iou=True)``: ``(logits, iou)``). For R = 1 volbench's segmentation path takes softmax / argmax
over channels, and ``softmax(cat([0, z]))[:, 1] == sigmoid(z)`` exactly, so argmax is foreground iff
``sigmoid(z) > 0.5`` (a tie at ``z = 0`` is background), the threshold of the models' own code; for R > 1 each
channel r is the independent sigmoid logit of mask r (the task combines them).

``forward(x, prompter=p)`` (click training, through the module's own forward so that DistributedDataParallel
synchronises it): encode once, decode prompt-free, then ``p.count`` prompted decodings, each with the points
``p(previous)`` gives and the previous decoding's ``low_res`` DETACHED as the mask prompt (models that take one);
returns ``(prompt_free, [outputs])`` (:meth:`PromptableNet.prompted`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


@dataclass
class PromptOutput:
    """One decoding.

    Attributes:
        logits: (B, 1, D, H, W) foreground logits at the input window's resolution.
        low_res: what to pass back as the next ``mask_prompt`` (SAM-Med3D: the decoder's (B, 1, d, h, w) logits,
            32^3 for its 128^3 window); None for models without a mask prompt.
        iou: (B, 1) the model's predicted IoU of its mask with the target; None when it has no IoU head.
    """

    logits: torch.Tensor
    low_res: torch.Tensor | None = None
    iou: torch.Tensor | None = None


class PromptableNet(nn.Module):
    """Base class of promptable networks (see the module docstring for the prompt conventions).

    Subclasses set ``encoder_prefixes``, ``accepts_mask_prompt`` and ``supports_gradient_checkpointing`` and
    implement :meth:`encode`, :meth:`decode` and, when supported, :meth:`set_gradient_checkpointing`.

    Attributes:
        encoder_prefixes: state-dict / parameter name prefixes of the image encoder (``--freeze_encoder``
            freezes exactly :meth:`encoder_parameters`).
        accepts_mask_prompt: :meth:`decode` uses ``mask_prompt`` (the previous output's ``low_res``); when False
            it is ignored.
        supports_gradient_checkpointing: :meth:`set_gradient_checkpointing` is implemented.
    """

    encoder_prefixes: tuple[str, ...] = ()
    accepts_mask_prompt: bool = False
    supports_gradient_checkpointing: bool = False
    n_masks: int = 1  # prompt-free masks (out_channels - 1)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters whose names start with one of ``encoder_prefixes`` (the image encoder's)."""
        for name, param in self.named_parameters():
            if name.startswith(self.encoder_prefixes):
                yield param

    def encode(self, image: torch.Tensor) -> Any:
        """Image embedding of ``image`` (B, C, D, H, W); compute once per window, reuse for every click."""
        raise NotImplementedError

    def decode(self, embedding: Any, points: torch.Tensor | None, labels: torch.Tensor | None,
               mask_prompt: torch.Tensor | None) -> PromptOutput:
        """Decode ``embedding`` with the prompts: ``points`` (B, N, 3) voxel coordinates, ``labels`` (B, N) int64
        (both None: prompt-free, ``n_masks`` masks; else one mask), ``mask_prompt`` the previous output's
        ``low_res`` or None."""
        raise NotImplementedError

    def prompt_free(self, x: torch.Tensor) -> PromptOutput:
        """The prediction without any prompt, with the IoU prediction when the model has one (training loss)."""
        return self.decode(self.encode(x), None, None, None)

    def forward(self, x: torch.Tensor, with_iou: bool = False, prompter: "Prompter | None" = None) -> Any:
        """Prompt-free logits (B, 1 + n_masks, D, H, W) = ``cat([0, z])``; for one mask ``softmax[:, 1] ==
        sigmoid(z)``.

        ``with_iou=True`` returns ``(logits, iou)`` with the IoU prediction (B, n_masks) or None: the training loss
        through the module's own forward (what DistributedDataParallel synchronises). ``prompter``: click
        training, returns :meth:`prompted`'s ``(prompt_free, outputs)`` instead.
        """
        if prompter is not None:
            return self.prompted(x, prompter)
        out = self.prompt_free(x)
        logits = torch.cat([torch.zeros_like(out.logits[:, :1]), out.logits], dim=1)
        return (logits, out.iou) if with_iou else logits

    def prompted(self, x: torch.Tensor, prompter: "Prompter") -> tuple[PromptOutput, list[PromptOutput]]:
        """Click training: encode ``x`` once; the prompt-free decoding; then ``prompter.count`` decodings, the
        k-th with the points ``prompter(previous)`` returns (all clicks so far) and, for models that take one,
        the previous decoding's ``low_res`` detached as the mask prompt (no gradient flows from one click's loss
        into the decoding before it; the first prompted decoding gets none)."""
        embedding = self.encode(x)
        free = self.decode(embedding, None, None, None)
        outputs: list[PromptOutput] = []
        previous: PromptOutput | None = None
        for _ in range(int(prompter.count)):
            points, labels = prompter(previous)
            mask = (previous.low_res.detach() if self.accepts_mask_prompt and previous is not None
                    and previous.low_res is not None else None)
            previous = self.decode(embedding, points, labels, mask)
            outputs.append(previous)
        return free, outputs

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute the image encoder's block activations in the backward pass (saves memory, costs time)."""
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")


class Prompter(Protocol):
    """Gives the points of each prompted decoding in :meth:`PromptableNet.prompted` (click training)."""

    count: int  # prompted decodings per call

    def __call__(self, previous: PromptOutput | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points (B, N, 3), labels (B, N))``, every click so far, from the previous decoding (None first)."""
        ...


def check_masks(out_channels: int, most: int, name: str, per_mask: str) -> int:
    """``n_masks = out_channels - 1``; ``ValueError`` naming the model unless ``1 <= n_masks <= most``."""
    if not 2 <= out_channels <= most + 1:
        raise ValueError(f"{name}: out_channels must be 2 (cat([0, z]) of one prompt-free mask) or 1 + R with R <= "
                         f"{most} prompt-free masks ({per_mask}; 4 on BraTS: WT, TC, ET), got {out_channels}")
    return out_channels - 1


def check_point_prompts(points: torch.Tensor | None, labels: torch.Tensor | None, batch: int,
                        name: str) -> None:
    """Raise ``ValueError`` unless ``points`` (batch, N, 3) and ``labels`` (batch, N) are both given or both None."""
    if (points is None) != (labels is None):
        raise ValueError(f"{name}: points and labels must be given together (got points "
                         f"{'None' if points is None else tuple(points.shape)}, labels "
                         f"{'None' if labels is None else tuple(labels.shape)})")
    if points is None or labels is None:
        return
    if points.ndim != 3 or points.shape[0] != batch or points.shape[2] != 3 or labels.shape != points.shape[:2]:
        raise ValueError(f"{name}: points must be (B={batch}, N, 3) and labels (B, N), got points "
                         f"{tuple(points.shape)} and labels {tuple(labels.shape)}")


class CheckpointedSequential(nn.Sequential):
    """``nn.Sequential`` that, with ``checkpointing`` on and autograd recording, runs under
    ``torch.utils.checkpoint`` (``use_reentrant=False``). Same children, so the same state-dict keys."""

    checkpointing: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)


def run_block(block: nn.Module, x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """``block(x)``, under ``torch.utils.checkpoint`` (``use_reentrant=False``) when ``checkpointing`` and autograd
    is recording."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)
