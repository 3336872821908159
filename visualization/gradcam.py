"""Grad-CAM 3D of a segmentation network for one class, with MONAI's ``GradCAM``, saved as overlay PNGs.

MONAI's class-activation maps expect ``(B, classes)`` outputs, so :class:`ClassScores` reduces the
segmentation logits (B, K, D, H, W) to one score per class: the mean logit of class k over the voxels
predicted as k (over all voxels when none is), the predicted mask being a constant (no gradient). The
map is computed on one window of ``roi_size`` voxels (the model's sliding-window size) centred on the
focus region (tumour), upsampled to the window (trilinear) and scaled to [0, 1] with the maximum at 1
(:func:`scale_to_unit`; MONAI's default normaliser would flip it).

This module imports torch and MONAI; it is deliberately not imported by ``visualization/__init__``.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from monai.visualize import GradCAM

from visualization._common import save_figure

logger = logging.getLogger(__name__)

PREFIX = "net."


class ClassScores(nn.Module):
    """Wrap a segmentation net: logits (B, K, *spatial) -> (B, K) masked-mean class scores."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        flat = logits.flatten(2)
        predicted = torch.nn.functional.one_hot(flat.argmax(1), flat.shape[1]).transpose(1, 2).to(flat.dtype)
        empty = predicted.sum(2, keepdim=True) == 0
        weights = torch.where(empty, torch.ones_like(predicted), predicted).detach()
        return (flat * weights).sum(2) / weights.sum(2)


def scale_to_unit(cam: torch.Tensor) -> torch.Tensor:
    """Per-sample linear scaling of a (B, 1, *spatial) map to [0, 1], max -> 1 (0 everywhere when constant).

    MONAI's ``default_normalizer`` maps the maximum to 0 (it flips magnitudes), hence this replacement.
    """
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    shape = (-1,) + (1,) * (cam.ndim - 1)
    return (cam - lo.view(shape)) / span.view(shape)


def check_layer(model: nn.Module, layer: str) -> None:
    """``ValueError`` naming close matches when ``layer`` is not a module name of ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=5)
        hint = f"; did you mean {close}?" if close else f"; top-level layers: {[n for n in names if '.' not in n]}"
        raise ValueError(f"--gradcam_layer {layer!r} is not a layer of {type(model).__name__}{hint}")


def window_around(shape: Sequence[int], centre: Sequence[int], roi: Sequence[int]) -> tuple[slice, ...]:
    """Slices of a window of size ``roi`` (clipped to ``shape``) centred on ``centre``."""
    out = []
    for size, c, r in zip(shape, centre, roi):
        r = min(int(r), int(size))
        start = int(np.clip(int(c) - r // 2, 0, size - r))
        out.append(slice(start, start + r))
    return tuple(out)


def make_gradcam(model: nn.Module, layer: str) -> GradCAM:
    """MONAI ``GradCAM`` on ``model``'s module ``layer`` through :class:`ClassScores`.

    MONAI registers hooks on the model that are never removed: build one per model and layer and
    reuse it for every case.
    """
    check_layer(model, layer)
    scorer = ClassScores(model).train(model.training)  # MONAI evaluates in eval mode, then restores this mode
    return GradCAM(nn_module=scorer, target_layers=PREFIX + layer, postprocessing=scale_to_unit)


def gradcam_window(model: nn.Module, image: np.ndarray, layer: str, class_idx: int, roi_size: Sequence[int],
                   focus: np.ndarray | None = None, cam: GradCAM | None = None) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Grad-CAM map in [0, 1] of ``class_idx`` on a window of ``image`` (C, D, H, W).

    Returns the map (window shape) and the window's slices into ``image``'s spatial axes. The window
    is centred on the centre of mass of ``focus`` (a mask, e.g. the tumour) or on the image centre;
    it is zero-padded to ``roi_size`` when the image is smaller. ``cam`` (from :func:`make_gradcam`
    for this model and layer) avoids adding hooks on every call.
    """
    cam = cam if cam is not None else make_gradcam(model, layer)
    spatial = image.shape[1:]
    centre = (np.argwhere(focus).mean(0).round().astype(int) if focus is not None and focus.any()
              else np.asarray(spatial) // 2)
    window = window_around(spatial, centre, roi_size)
    crop = np.asarray(image[(slice(None), *window)], dtype=np.float32)
    pad = [(0, 0)] + [(0, max(0, int(r) - s)) for r, s in zip(roi_size, crop.shape[1:])]
    x = torch.from_numpy(np.pad(crop, pad))[None].requires_grad_(True)
    device = next(model.parameters()).device
    with torch.enable_grad():
        heat = cam(x.to(device), class_idx=int(class_idx))
    heat = heat[0, 0].detach().float().cpu().numpy()
    return heat[tuple(slice(0, s) for s in crop.shape[1:])], window


def draw_gradcam(background: np.ndarray, heat: np.ndarray, out_path: Path, *, title: str,
                 contour: np.ndarray | None = None) -> Path:
    """Three orthogonal planes through the centre of ``contour`` (e.g. the ground-truth class mask; the
    map's maximum without one): ``background`` (gray), ``heat`` (jet, alpha 0.45, values < 0.05 hidden)
    and the outline of ``contour``."""
    if background.shape != heat.shape:
        raise ValueError(f"Grad-CAM background shape {background.shape} differs from the map's {heat.shape}")
    if contour is not None and contour.any():
        peak = tuple(np.argwhere(contour).mean(0).round().astype(int))
    else:
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    heat = np.ma.masked_less(heat, 0.05)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    lo, hi = np.percentile(background, (1, 99)) if background.size else (0.0, 1.0)
    for axis, ax in enumerate(axes):
        take = lambda a: np.rot90(np.take(a, peak[axis], axis=axis))  # noqa: E731
        ax.imshow(take(background), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        shown = ax.imshow(take(heat), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        if contour is not None and take(contour).any():
            ax.contour(take(contour.astype(np.float32)), levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"axis {axis}, window slice {peak[axis]}", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label="Grad-CAM (normalised)")
    fig.suptitle(title, fontsize="medium")
    return save_figure(fig, Path(out_path))


def save_gradcam_overlay(model: nn.Module, image: np.ndarray, out_path: Path, *, layer: str, class_idx: int,
                         roi_size: Sequence[int], background_channel: int = -1, focus: np.ndarray | None = None,
                         title: str = "", cam: GradCAM | None = None) -> Path:
    """Grad-CAM of one case image (C, D, H, W) drawn over one of its channels; returns the PNG path."""
    heat, window = gradcam_window(model, image, layer, class_idx, roi_size, focus, cam)
    background = np.asarray(image[background_channel][window], dtype=np.float32)
    contour = focus[window] if focus is not None else None
    return draw_gradcam(background, heat, out_path, contour=contour,
                        title=title or f"Grad-CAM: layer {layer}, class {class_idx}")
