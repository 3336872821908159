"""Downsampling planned from the voxel spacing, as nnU-Net plans anisotropic data.

A network that halves every axis ``n`` times turns head CT of 0.9 x 0.9 x 4.5 mm voxels into cells 5x longer
across slices than within them (a 16-slice scan is 2 cells deep after three halvings). Planned from the spacing, an
axis ``k`` times coarser than the finest is halved about ``log2(k)`` times less, and always at the *last* steps (the
fine axes are halved first; the coarse one once they have caught up), so the cells end up about as long in mm on
every axis. Isotropic voxels keep every halving. Used by DetSeg3D's detector grid and mobile_unetr_3d.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def halvings_for_spacing(spacing: Sequence[float] | None, n: int) -> tuple[int, int, int]:
    """Halvings per axis out of ``n``: the integer in ``[0, n]`` nearest to ``log2(2**n * finest / spacing)``
    (spacing in mm per axis); ``None``: ``n`` on every axis.

    Raises:
        ValueError: ``spacing`` is not three positive finite sizes.
    """
    if spacing is None:
        return (int(n),) * 3
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or (sp <= 0).any():
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing}")
    power = np.clip(np.round(np.log2(2**n * sp.min() / sp)), 0, n)
    return tuple(int(p) for p in power)  # type: ignore[return-value]


def step_strides(halvings: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """Per-step strides (``n`` tuples of 1 or 2 per axis) halving axis ``a`` at the last ``halvings[a]`` steps."""
    if any(not 0 <= int(h) <= n for h in halvings):
        raise ValueError(f"halvings must each be in [0, {n}], got {tuple(halvings)}")
    return [tuple(2 if k >= n - int(h) else 1 for h in halvings) for k in range(n)]
