"""Whole-volume prediction with MONAI sliding-window inference (Gaussian blending).

3D models see windows of ``roi_size`` voxels; 2D models see every slice along the last spatial axis
(with ``context_slices`` neighbours on each side as extra channels) in 2D windows.
Output logits are float32 on the CPU, shape (n_classes, D, H, W).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference

from dataio.sampling import slices_to_volume, volume_to_slices
from dataio.types import CachedCase


class AttentionRecorder(nn.Module):
    """Wraps a model whose ``forward(x, return_attention=True)`` returns ``(logits, {stage: (B, M)})``.

    Every window's weights are kept so the caller can average them per case.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.records: list[dict[str, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, weights = self.model(x, return_attention=True)
        self.records.append({k: v.detach().float().cpu() for k, v in weights.items()})
        return logits

    def mean_weights(self) -> dict[str, list[float]]:
        """Per stage, the mean weight of each modality over all recorded windows; then clears records."""
        out: dict[str, list[float]] = {}
        for stage in self.records[0] if self.records else []:
            stacked = torch.cat([r[stage] for r in self.records], dim=0)
            out[stage] = stacked.mean(dim=0).tolist()
        self.records.clear()
        return out


def _autocast(device: torch.device, amp: bool) -> Any:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


@dataclass
class InferenceSettings:
    """How a model is applied to a whole case (sizes in voxels)."""

    modalities: tuple[str, ...]
    roi_size: tuple[int, ...]
    overlap: float
    device: torch.device
    spatial_dims: int = 3
    context_slices: int = 0
    amp: bool = False
    tta: bool = False
    seed: int = 0  # the run's seed (interactive evaluation draws its clicks from it)


SLICE_BATCH = 8  # 2D models: slices per forward pass at inference


@torch.no_grad()
def predict_logits(model: nn.Module, image: torch.Tensor, settings: InferenceSettings, *,
                   sw_batch_size: int = 1, slice_batch: int = SLICE_BATCH) -> torch.Tensor:
    """Logits (n_classes, D, H, W) for one image (C, D, H, W), model in eval mode, windows of
    ``settings.roi_size`` voxels (``settings.modalities`` and ``settings.tta`` are not read here); a 2D model
    sees ``max(sw_batch_size, slice_batch)`` slices per forward pass."""
    was_training = model.training
    model.eval()
    try:
        with _autocast(settings.device, settings.amp):
            if settings.spatial_dims == 3:
                logits = sliding_window_inference(
                    image[None].to(settings.device), roi_size=tuple(settings.roi_size), sw_batch_size=sw_batch_size,
                    predictor=model, overlap=settings.overlap, mode="gaussian")[0]
            else:
                slices = volume_to_slices(image, settings.context_slices).to(settings.device)
                logits = sliding_window_inference(
                    slices, roi_size=tuple(settings.roi_size[-2:]), sw_batch_size=max(sw_batch_size, slice_batch),
                    predictor=model, overlap=settings.overlap, mode="gaussian")
                logits = slices_to_volume(logits)  # (W, K, D, H) -> (K, D, H, W)
    finally:
        model.train(was_training)
    return logits.float().cpu()


def flip_tta_logits(model: nn.Module, image: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """Mean softmax-free logits over the identity and the flips of each spatial axis (test-time augmentation)."""
    total = predict_logits(model, image, settings)
    for axis in (1, 2, 3):
        flipped = predict_logits(model, image.flip(axis), settings)
        total += flipped.flip(axis)
    return total / 4.0


def case_tensor(case: CachedCase, modalities: tuple[str, ...]) -> torch.Tensor:
    """Image channels of ``case`` for ``modalities`` as a float32 tensor (C, D, H, W)."""
    return torch.from_numpy(np.array(case.channels(modalities), dtype=np.float32))  # copy: the cache is read-only


def case_logits(model: nn.Module, case: CachedCase, settings: InferenceSettings) -> torch.Tensor:
    """Logits (K, D, H, W) of one cached case, with flip TTA when ``settings.tta``."""
    image = case_tensor(case, settings.modalities)
    if settings.tta:
        return flip_tta_logits(model, image, settings)
    return predict_logits(model, image, settings)
