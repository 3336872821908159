"""Write predictions in each image's original space, so they open over the original images in any viewer.

For a :class:`~dataio.types.CachedCase` (cropped to the brain box, internal labels):

- labels: ``argmax`` of the logits -> pasted back into the original shape (0 outside the crop) ->
  converted back to the dataset's own label convention (``from_internal``; BraTS 2018-2021: ET = 4)
  -> ``{case_id}.nii.gz``, uint8, with the original image's affine.
- probabilities (optional): softmax over the classes, pasted back (background 1, other classes 0
  outside the crop), float32, channel ``k`` = internal label ``k`` (0 background, 1 NCR/NET, 2 ED,
  3 ET; the file label of each channel is ``probability_labels``), written either as a 4D NIfTI
  ``{case_id}_probabilities.nii.gz`` (channels last, same affine) or as ``{case_id}_probabilities.npz``
  with arrays ``probabilities`` (K, X, Y, Z), ``labels`` (file label per channel) and ``affine``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from dataio.conventions import from_internal
from dataio.nifti_io import save_volume
from dataio.preprocess import paste_back
from dataio.types import CachedCase
from utils.atomic import atomic_path

logger = logging.getLogger(__name__)

PROBABILITY_FORMATS = ("nifti", "npz")


def labels_in_original_space(labels: np.ndarray, case: CachedCase) -> np.ndarray:
    """Internal labels (D, H, W) on the case's crop -> uint8 labels in the original shape and convention."""
    full = paste_back(np.asarray(labels, dtype=np.uint8), case.crop, case.original_shape, fill=0)
    return from_internal(full, case.convention)


def probabilities_in_original_space(logits: torch.Tensor, case: CachedCase) -> np.ndarray:
    """Softmax of logits (K, D, H, W) on the crop -> float32 (K, X, Y, Z) in the original shape.

    Outside the crop the background channel is 1 and every other channel 0.
    """
    probs = torch.softmax(logits.float(), dim=0).numpy().astype(np.float32)
    full = paste_back(probs, case.crop, case.original_shape, fill=0.0)
    outside = np.ones(case.original_shape, dtype=bool)
    outside[case.crop.slices()] = False
    full[0][outside] = 1.0
    return full


def probability_labels(n_classes: int, convention: str) -> list[int]:
    """File label of each probability channel (channel k = internal label k), e.g. [0, 1, 2, 4]."""
    return from_internal(np.arange(n_classes, dtype=np.uint8), convention).astype(int).tolist()


def save_case_prediction(case: CachedCase, logits: torch.Tensor, out_dir: Path, *,
                         save_probabilities: bool = False, probability_format: str = "nifti") -> list[Path]:
    """Write the label map (and optionally the probabilities) of one case; returns the written files.

    Raises:
        ValueError: unknown ``probability_format`` or logits whose spatial shape is not the crop's.
    """
    if probability_format not in PROBABILITY_FORMATS:
        raise ValueError(f"--probability_format {probability_format!r} is not one of {PROBABILITY_FORMATS}")
    if tuple(logits.shape[1:]) != tuple(case.image.shape[1:]):
        raise ValueError(f"case {case.case_id}: logits shape {tuple(logits.shape)} does not match the cached "
                         f"image {tuple(case.image.shape)}")
    out_dir = Path(out_dir)
    label_path = out_dir / f"{case.case_id}.nii.gz"
    save_volume(label_path, labels_in_original_space(logits.argmax(0).numpy(), case), case.affine)
    written = [label_path]
    if save_probabilities:
        probs = probabilities_in_original_space(logits, case)
        if probability_format == "nifti":
            path = out_dir / f"{case.case_id}_probabilities.nii.gz"
            save_volume(path, np.moveaxis(probs, 0, -1), case.affine)
        else:
            path = out_dir / f"{case.case_id}_probabilities.npz"
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, probabilities=probs, affine=np.asarray(case.affine),
                                        labels=np.asarray(probability_labels(probs.shape[0], case.convention)))
        written.append(path)
    logger.debug("wrote prediction of %s to %s", case.case_id, out_dir)
    return written
