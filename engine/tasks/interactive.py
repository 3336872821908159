"""Interactive evaluation of a promptable model: simulated clicks, one at a time, on one target of one case.

Procedure (per labelled case and target; the binary lesion is the only target of a binary dataset):

1. The first click comes from the ground truth (``engine.tasks.clicks.next_click`` with no previous mask).
2. The model sees ONE window of ``roi_size`` voxels centred on the first click (shifted to lie inside the
   volume; zero-padded where the volume is smaller), never on the label's centre, which would use the ground
   truth to choose the field of view. The window is encoded once (``encode``) and the embedding is reused for
   every click.
3. Click k: all clicks so far (window voxel coordinates along array axes 0, 1, 2; 1 positive, 0 negative) go to
   ``decode`` together with the previous low-resolution logits as the mask prompt (models that take one), as
   SAM-Med3D's current evaluation does. The mask = ``logits > 0`` (sigmoid > 0.5) inside the window, background
   outside it.
4. The next click is drawn from the errors (FN u FP) of that mask against the target INSIDE the window (a click
   outside the window could not reach the model); with no error left the mask stays as it is.

The masks after the click counts asked for are returned; metrics are computed on the whole case, so a target
that extends beyond the window keeps its misses there. Not done (stated in the README): windows added where the
prediction reaches the window's edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from engine.inference import InferenceSettings, case_tensor
from engine.tasks.clicks import Click, click_rng, next_click


@dataclass(frozen=True)
class ClickPlan:
    """What one interactive evaluation does: the click counts reported, the click rule, the run seed."""

    counts: tuple[int, ...]
    mode: str
    seed: int


def window_slices(centre: tuple[int, ...], roi: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Start-inclusive window of ``roi`` voxels centred on ``centre`` and shifted to lie inside ``shape`` (a
    volume axis shorter than the window starts at 0; the caller zero-pads)."""
    starts = [min(max(int(c) - r // 2, 0), max(s - r, 0)) for c, r, s in zip(centre, roi, shape)]
    return tuple(slice(a, a + r) for a, r in zip(starts, roi))


def _window_image(image: torch.Tensor, window: tuple[slice, ...], roi: tuple[int, ...]) -> torch.Tensor:
    """(C, *roi) crop of ``image`` (C, D, H, W), zero-padded past the volume's end."""
    out = torch.zeros((image.shape[0], *roi), dtype=image.dtype)
    crop = image[(slice(None), *window)]
    out[(slice(None), *[slice(0, n) for n in crop.shape[1:]])] = crop
    return out


def _points(clicks: list[Click], window: tuple[slice, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    coords = [[p - w.start for p, w in zip(c.position, window)] for c in clicks]
    return (torch.tensor([coords], dtype=torch.float32, device=device),
            torch.tensor([[int(c.positive) for c in clicks]], dtype=torch.int64, device=device))


@torch.no_grad()
def click_masks(model: nn.Module, case: Any, target: np.ndarray, settings: InferenceSettings,
                plan: ClickPlan, name: str) -> dict[int, np.ndarray]:
    """Masks (bool, the case's shape) after each click count of ``plan.counts``; {} for an empty target.
    ``name`` (the target's name) enters the click generator's seed with the case id."""
    target = np.asarray(target, dtype=bool)
    if not target.any():
        return {}
    net = getattr(model, "module", model)
    rng = click_rng(plan.seed, case.case_id, name)
    spacing = tuple(float(s) for s in case.spacing)
    first = next_click(target, None, mode=plan.mode, rng=rng, spacing=spacing)
    window = window_slices(first.position, tuple(settings.roi_size), target.shape)
    inside = tuple(slice(w.start, min(w.stop, n)) for w, n in zip(window, target.shape))
    image = _window_image(case_tensor(case, settings.modalities), window, tuple(settings.roi_size))
    was_training = net.training
    net.eval()
    try:
        embedding = net.encode(image[None].to(settings.device))
        clicks, low_res, mask = [first], None, np.zeros(target.shape, dtype=bool)
        out: dict[int, np.ndarray] = {}
        for k in range(1, max(plan.counts) + 1):
            if k > 1:
                local = next_click(target[inside], mask[inside], mode=plan.mode, rng=rng, spacing=spacing)
                if local is not None:
                    clicks.append(Click(tuple(p + w.start for p, w in zip(local.position, inside)), local.positive))
            if k == 1 or local is not None:
                points, labels = _points(clicks, window, settings.device)
                result = net.decode(embedding, points, labels, low_res if net.accepts_mask_prompt else None)
                low_res = result.low_res
                logits = result.logits[0, 0].float().cpu().numpy()
                mask = np.zeros(target.shape, dtype=bool)
                mask[inside] = logits[tuple(slice(0, s.stop - s.start) for s in inside)] > 0
            if k in plan.counts:
                out[k] = mask.copy()
        return out
    finally:
        net.train(was_training)
