"""nnU-Net's U-Net topology rule: stage count, convolution kernels and strides for a patch size and spacing.

A port of ``get_pool_and_conv_props`` (nnunetv2 ``experiment_planning/experiment_planners/network_topology.py``,
as used by the default and the ResEnc planners with a minimum bottleneck edge of 4 voxels): nnunetv2 is not a
dependency of volbench (it pulls its whole training stack), so the ~30-line rule is ported here and tested on
plans nnU-Net itself gives. Only the topology is planned: nnU-Net's search for the patch size that fits a GPU
memory budget is not, since volbench takes the patch from the user (``--patch_size``) or the registry.

Conventions: sizes in voxels and spacing in mm, both in the array's axis order (volbench: D, H, W); stage 0 has
stride 1 (it works at full resolution), stage ``i > 0`` downsamples by ``strides[i]`` at its first convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

NNUNET_MIN_FEATURE_MAP = 4  # nnU-Net's UNet_featuremap_min_edge_length: bottleneck edge >= 4 voxels
NNUNET_BASE_FEATURES = 32  # UNet_base_num_features
NNUNET_MAX_FEATURES_3D = 320  # UNet_max_features_3d
# ResEncUNetPlanner.UNet_blocks_per_stage_encoder (residual blocks per encoder stage; decoder: 1 conv per stage)
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)


@dataclass(frozen=True)
class UNetPlan:
    """One nnU-Net topology.

    Attributes:
        kernel_sizes: convolution kernel per stage (voxels per axis), full resolution first.
        strides: downsampling per stage and axis; ``strides[0]`` is all ones.
        patch_size: the patch padded up to ``divisible_by`` (nnU-Net's ``pad_shape``; equal to the input when it
            already divides).
        divisible_by: per axis, 2 ** (number of downsamplings along it): every input size must be a multiple.
    """

    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        """Resolution stages (encoder stages; the decoder has one fewer)."""
        return len(self.strides)


def plan_unet(patch_size: Sequence[int], spacing: Sequence[float] | None = None, *,
              min_feature_map_size: int = NNUNET_MIN_FEATURE_MAP, max_numpool: int = 999999) -> UNetPlan:
    """nnU-Net's ``get_pool_and_conv_props``: downsample every axis that is still at least twice the minimum
    feature-map edge and whose spacing is within a factor 2 of the finest; an axis gets 3-voxel kernels once its
    spacing is within a factor 2 of the finest (1 before: anisotropic data start with in-plane kernels).

    ``spacing`` None means isotropic (1 mm). Raises ``ValueError`` for sizes or spacings that are not positive.
    """
    size = [float(s) for s in patch_size]
    spacing_now = [1.0] * len(size) if spacing is None else [float(s) for s in spacing]
    if len(spacing_now) != len(size) or min(size) <= 0 or min(spacing_now) <= 0:
        raise ValueError(f"plan_unet needs positive patch_size and spacing of the same length, got {tuple(patch_size)}"
                         f" and {None if spacing is None else tuple(spacing)}")
    dim = len(size)
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if size[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        finest = min(spacing_now[i] for i in valid)
        valid = [i for i in valid if spacing_now[i] / finest < 2 and pools[i] < max_numpool]
        if not valid or (len(valid) == 1 and size[valid[0]] < 3 * min_feature_map_size):
            break
        for d in range(dim):  # nnunetv2 master's rule (current_spacing[d]), not the 2023 release's index slip
            if kernel[d] != 3 and spacing_now[d] / min(spacing_now) < 2:
                kernel[d] = 3
        for v in valid:
            pools[v] += 1
            spacing_now[v] *= 2
            size[v] = math.ceil(size[v] / 2)
        strides.append(tuple(2 if i in valid else 1 for i in range(dim)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)  # the bottleneck always has 3-voxel kernels
    divisible = tuple(2 ** p for p in pools)
    padded = tuple(int(math.ceil(int(s) / d) * d) for s, d in zip(patch_size, divisible))
    return UNetPlan(kernel_sizes=tuple(kernels), strides=tuple(strides), patch_size=padded, divisible_by=divisible)


def features_per_stage(n_stages: int, base: int = NNUNET_BASE_FEATURES,
                       max_features: int = NNUNET_MAX_FEATURES_3D) -> tuple[int, ...]:
    """nnU-Net's widths: ``base`` doubling per stage, capped at ``max_features`` (32, 64, ..., 320, 320)."""
    return tuple(min(max_features, base * 2 ** i) for i in range(n_stages))


def check_divisible(patch_size: Sequence[int], plan: UNetPlan, model: str) -> None:
    """Raise ``ValueError`` when ``patch_size`` is not a multiple of the plan's divisors (nnU-Net would pad it to
    ``plan.patch_size``)."""
    if tuple(int(p) for p in patch_size) != plan.patch_size:
        raise ValueError(f"{model}: nnU-Net's plan for patch {tuple(patch_size)} downsamples by "
                         f"{plan.divisible_by} per axis, which does not divide it; nnU-Net pads the patch to "
                         f"{plan.patch_size}: use that --patch_size")
