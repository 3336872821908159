"""Patch augmentation with MONAI dictionary transforms, reproducible per sample.

Applied to an already cropped patch (image (C, *spatial) float32, label (*spatial) integer), in
this order: random flip on each spatial axis (p 0.5 each); random 90-degree rotation in each plane
whose two axes have equal patch size (p 0.5); intensity scale by (1 + U(-0.1, 0.1)) (p 0.3); shift by
U(-0.1, 0.1) (p 0.3); gamma in (0.7, 1.5) with the mean and std retained (MONAI
``RandAdjustContrastd(retain_stats=True)``, over all channels together, p 0.3); Gaussian noise with
std up to 0.1 (p 0.15). Spatial transforms move image and label together (label values stay the same
integers); intensity transforms touch the image only. Works for 2D (C, H, W) and 3D (C, D, H, W).

Reproducibility: ``apply_augmentation`` reseeds the whole ``Compose`` with the given seed, so the
same (patch, seed) always gives the same output, whatever process or worker runs it.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

KEYS = ("image", "label")


def build_augmentation(spatial_dims: int, patch_size: Sequence[int]) -> Compose:
    """The augmentation pipeline for patches of ``patch_size`` (``spatial_dims`` = 2 or 3 entries)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch_size {tuple(patch_size)} must have {spatial_dims} entries")
    transforms: list = [RandFlipd(keys=KEYS, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    for a, b in itertools.combinations(range(spatial_dims), 2):
        if patch_size[a] == patch_size[b]:
            transforms.append(RandRotate90d(keys=KEYS, prob=0.5, max_k=3, spatial_axes=(a, b)))
    transforms += [
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), retain_stats=True, prob=0.3),
        RandGaussianNoised(keys="image", mean=0.0, std=0.1, prob=0.15),
    ]
    return Compose(transforms)


def apply_augmentation(
    aug: Compose,
    image: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one patch reproducibly.

    Args:
        aug: from :func:`build_augmentation`.
        image: (C, *spatial) float.
        label: (*spatial) integer labels.
        seed: per-sample seed in [0, 2**32).

    Returns:
        ``(image, label)`` as plain (non-Meta) contiguous torch tensors: float32 (C, *spatial) and
        the label with its input dtype and shape.
    """
    img = torch.as_tensor(image, dtype=torch.float32)
    lab = torch.as_tensor(label)
    if tuple(img.shape[1:]) != tuple(lab.shape):
        raise ValueError(f"image spatial shape {tuple(img.shape[1:])} != label shape {tuple(lab.shape)}")
    aug.set_random_state(seed=int(seed) % (2**32))
    out = aug({"image": img, "label": lab[None]})
    return _plain(out["image"]).float().contiguous(), _plain(out["label"])[0].to(lab.dtype).contiguous()


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)
