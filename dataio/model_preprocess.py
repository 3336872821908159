"""A model's own input preprocessing, applied on top of the dataset's preprocessing (``ModelInfo.preprocessing``).

Some models were trained on inputs prepared their own way (SAM-Med3D: 1.5 mm isotropic voxels, z-normalisation over
the foreground voxels). Such a model declares it in its registry entry; the cache then keeps a second entry per case,
keyed by the dataset's preprocessing *and* the model's (:meth:`dataio.cache.PreprocessedCache.model_inputs`), while
every model without a declaration keeps sharing the dataset's one entry.

Rules (the parameters, as stored in the cache key, are ``{"target_spacing": [mm, mm, mm] | None, "intensity":
"none" | "zscore_nonzero"}``):

- Geometry: the dataset's cached grid (its crop, its spacing) is resampled to ``target_spacing`` with MONAI's
  ``Spacing``: the first voxel's centre stays where it is, the new spacing is exactly the target, and the extent is
  the largest that fits (``Spacing``'s rule). Images are interpolated trilinearly, labels by nearest neighbour.
- Intensity ``zscore_nonzero``: per channel, mean 0 and std 1 over the channel's non-zero voxels, zeros stay 0
  (MONAI ``NormalizeIntensity(nonzero=True, channel_wise=True)``), after resampling, as SAM-Med3D's evaluation
  normalises after its resampling. SAM-Med3D's own mask is ``> 0`` of the raw image; on the dataset's output the
  non-background voxels are the non-zero ones (MRI: zero outside the brain after the crop's z-scoring; CT: the HU
  window maps to [0, 1], so 0 is at or below the window's lower bound), so ``nonzero`` is that mask here.
- Back to the dataset's grid (:func:`to_dataset_grid`): predictions are scored where every other model's are, on the
  dataset's cached grid; logits (and click masks as 0/1 floats, thresholded at 0.5 afterwards) are resampled
  trilinearly with MONAI's ``SpatialResample`` from the model's grid onto that grid, border values extended past the
  model grid's last voxel centre.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity, Spacing, SpatialResample

from .types import CachedCase, CropBox

logger = logging.getLogger(__name__)

INTENSITY_RULES: tuple[str, ...] = ("none", "zscore_nonzero")
MODEL_PREPROCESS_PARAMS: tuple[str, ...] = ("target_spacing", "intensity")


def check_model_params(params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the bad key or value of a model preprocessing dict (rules: module docstring)."""
    unknown = sorted(set(params) - set(MODEL_PREPROCESS_PARAMS))
    if unknown:
        raise ValueError(f"unknown model preprocessing parameters {unknown}; known: {MODEL_PREPROCESS_PARAMS}")
    spacing = params.get("target_spacing")
    if spacing is not None and (len(spacing) != 3 or any(float(s) <= 0 for s in spacing)):
        raise ValueError(f"model preprocessing target_spacing must be 3 positive mm values, got {spacing}")
    if params.get("intensity", "none") not in INTENSITY_RULES:
        raise ValueError(f"model preprocessing intensity {params.get('intensity')!r} is not one of {INTENSITY_RULES}")


def _local_affine(spacing: tuple[float, ...]) -> torch.Tensor:
    """The grid's affine in its own frame: voxel (0, 0, 0) at the origin, axes along the array axes, in mm."""
    return torch.diag(torch.tensor([*map(float, spacing), 1.0], dtype=torch.float64))


def apply_model_preprocessing(case: CachedCase, params: dict[str, Any]) -> CachedCase:
    """``case`` (the dataset's preprocessing) with the model's own preprocessing ``params`` applied (module docstring).

    The returned case has the new ``image`` (float32, C x D x H x W), ``label`` (uint8), ``spacing``, an ``affine``
    moved to the new grid (the cached grid's corner shifted by the crop, scaled to the new spacing), its own shape as
    ``original_shape`` and a crop covering it: predictions on it are mapped back with :func:`to_dataset_grid` and
    scored on ``case``'s grid, never written from here.
    """
    check_model_params(params)
    image = torch.from_numpy(np.array(case.image, dtype=np.float32))  # a copy: cached arrays are read-only
    label = None if case.label is None else torch.from_numpy(np.array(case.label, dtype=np.float32))[None]
    spacing = tuple(float(s) for s in case.spacing)
    target = params.get("target_spacing")
    if target is not None:
        target = tuple(float(s) for s in target)
        resample = Spacing(pixdim=target, mode="bilinear", padding_mode="border")
        image = resample(MetaTensor(image, affine=_local_affine(spacing))).as_tensor()
        if label is not None:
            nearest = Spacing(pixdim=target, mode="nearest", padding_mode="border")
            label = nearest(MetaTensor(label, affine=_local_affine(spacing))).as_tensor()
        scale = np.diag([*(t / s for t, s in zip(target, spacing)), 1.0])
        shift = np.eye(4)
        shift[:3, 3] = case.crop.start
        affine, spacing = np.asarray(case.affine, dtype=np.float64) @ shift @ scale, target
    else:
        affine = np.asarray(case.affine, dtype=np.float64)
    if params.get("intensity", "none") == "zscore_nonzero":
        image = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    image_np = np.ascontiguousarray(torch.as_tensor(image).numpy(), dtype=np.float32)
    label_np = None if label is None else np.ascontiguousarray(torch.as_tensor(label)[0].round().numpy(),
                                                               dtype=np.uint8)
    shape = tuple(int(s) for s in image_np.shape[1:])
    return replace(case, image=image_np, label=label_np, spacing=spacing, affine=affine, original_shape=shape,
                   crop=CropBox(start=(0, 0, 0), stop=shape),  # type: ignore[arg-type]
                   foreground_voxels=None if label_np is None else int(np.count_nonzero(label_np)))


def to_dataset_grid(values: torch.Tensor, model_spacing: tuple[float, ...], dataset_spacing: tuple[float, ...],
                    dataset_shape: tuple[int, ...]) -> torch.Tensor:
    """``values`` (C x D' x H' x W') on a model's own grid (spacing ``model_spacing``, from
    :func:`apply_model_preprocessing`) resampled trilinearly onto the dataset's grid (``dataset_spacing``,
    ``dataset_shape``); float32 on the CPU."""
    if tuple(map(float, model_spacing)) == tuple(map(float, dataset_spacing)) \
            and tuple(values.shape[1:]) == tuple(dataset_shape):
        return values.detach().float().cpu()
    source = MetaTensor(values.detach().float().cpu(), affine=_local_affine(tuple(model_spacing)))
    out = SpatialResample(mode="bilinear", padding_mode="border")(
        source, dst_affine=_local_affine(tuple(dataset_spacing)), spatial_size=tuple(int(s) for s in dataset_shape))
    return torch.as_tensor(out).float()
