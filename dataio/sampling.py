"""Training patch sampling from cached cases: 3D patches (:class:`PatchDataset`) and 2D / 2.5D
slices (:class:`SliceDataset`).

Conventions:
- Arrays are channel-first (C, D, H, W), labels (D, H, W) with internal labels {0, 1, 2, 3}.
- A patch of size ``p`` centred at ``c`` covers ``[c - p // 2, c - p // 2 + p)`` on each axis; what
  lies outside the volume is zero (image 0, label 0 = background), which matches the brain-cropped,
  zero-outside-brain cache.
- Foreground sampling: sample k of case c in epoch e is foreground-forced when
  ``ceil((j + 1) f) > ceil(j f)`` for ``f = foreground_fraction`` and the running count
  ``j = (e + c) * samples_per_volume + k``. So the forced fraction is f (to within one sample per case
  and epoch) for any ``samples_per_volume``, even 1 or 2 (then the forced cases rotate over epochs);
  when ``samples_per_volume`` is a multiple of 3 and f = 1/3 this is exactly ``k % 3 == 0``. A
  forced sample picks a random class among those
  present, then a random voxel of that class as the patch centre (so the centre voxel is
  foreground; near the border the patch is zero-padded rather than shifted). Other samples use a
  uniform centre that keeps the patch inside the volume where the volume is large enough.
- Centre jitter (``SampleRules.centre_jitter`` = j > 0, 2D slices only): a foreground-forced centre is moved
  in-plane by an offset drawn uniformly from [-j, j] on each of D and H (then clipped into the volume), so the
  foreground voxel lies anywhere in the middle of the crop: the LUNA chapter's random 64 x 64 crops of
  96 x 96 chunks centred on a nodule are j = 16. j = 0 draws nothing (results as before).
- Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``, so a sample depends
  only on (seed, epoch, index), never on the number of workers or the order of requests.
- Indices may be plain ints or ``(epoch, index)`` pairs (see ``dataio.loaders``): the pair form
  lets persistent DataLoader workers follow ``set_epoch`` without being restarted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from math import ceil
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dataio.augment import apply_augmentation, augment_into, build_augmentation
from dataio.types import CachedCase

logger = logging.getLogger(__name__)

MAX_FG_COORDS = 10_000  # foreground voxel coordinates kept per class and case
DEFAULT_FOREGROUND_FRACTION = 1 / 3


@dataclass(frozen=True)
class SampleRules:
    """How a model's training samples are drawn (see the module docstring; sizes in voxels).

    Attributes:
        foreground_fraction: share of samples centred on a foreground voxel (1.0: positive samples only).
        centre_jitter: in-plane jitter of a foreground centre (2D slices), voxels.
        context_slices: 2D models: neighbouring slices on each side read as extra channels.
    """

    foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION
    centre_jitter: int = 0
    context_slices: int = 0


def sample_patch_center(
    shape: Sequence[int],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    fg_coords: dict[int, np.ndarray] | None = None,
) -> tuple[int, ...]:
    """Voxel index of a patch centre.

    Args:
        shape: spatial shape of the volume.
        patch_size: spatial patch size (same length).
        rng: numpy Generator.
        fg_coords: class -> (N, ndim) voxel coordinates. Given (and non-empty): a random class among
            those with coordinates, then a random voxel of it. Otherwise uniform: the centre is drawn so
            that the patch lies inside the volume on each axis where ``shape >= patch``; on an axis
            where the volume is smaller the patch is centred on the volume.
    """
    if len(shape) != len(patch_size):
        raise ValueError(f"shape {tuple(shape)} and patch_size {tuple(patch_size)} differ in length")
    present = [c for c, xyz in (fg_coords or {}).items() if len(xyz)]
    if present:
        coords = fg_coords[present[int(rng.integers(len(present)))]]  # type: ignore[index]
        return tuple(int(v) for v in coords[int(rng.integers(len(coords)))])
    center = []
    for s, p in zip(shape, patch_size):
        if s >= p:
            center.append(int(rng.integers(0, s - p + 1)) + p // 2)
        else:
            center.append((s - p) // 2 + p // 2)
    return tuple(center)


def _crop_windows(
    shape: Sequence[int], center: Sequence[int], patch_size: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(source slices in the volume, destination slices in the patch) of the overlap."""
    src, dst = [], []
    for s, c, p in zip(shape, center, patch_size):
        start = int(c) - p // 2
        lo, hi = max(start, 0), min(start + p, s)
        if hi <= lo:  # no overlap on this axis: an all-padding patch
            lo = hi = 0
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, lo - start + (hi - lo)))
    return tuple(src), tuple(dst)


def crop_patch(
    image: np.ndarray,
    label: np.ndarray | None,
    center: Sequence[int],
    patch_size: Sequence[int],
    channels: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop a zero-padded patch (any number of spatial dims).

    Args:
        image: (C, *spatial), e.g. a read-only memmap; only the crop is read.
        label: (*spatial) or ``None``.
        center, patch_size: as in :func:`sample_patch_center`.
        channels: channel indices to keep (in this order); ``None`` keeps all.

    Returns:
        float32 image patch (C', *patch_size) and label patch (*patch_size, label dtype) or ``None``.
    """
    n_channels = image.shape[0] if channels is None else len(channels)
    out = np.zeros((n_channels, *patch_size), dtype=np.float32)
    lab = None if label is None else np.zeros(tuple(patch_size), dtype=label.dtype)
    crop_into(image, label, center, patch_size, channels, out, lab)
    return out, lab


def crop_into(
    image: np.ndarray,
    label: np.ndarray | None,
    center: Sequence[int],
    patch_size: Sequence[int],
    channels: Sequence[int] | None,
    out_image: np.ndarray,
    out_label: np.ndarray | None,
) -> None:
    """Write the crop of :func:`crop_patch` into zero-initialised ``out_image`` (C', *patch_size) and
    ``out_label`` (*patch_size), which may be any strided views (e.g. of an augmented patch's buffer).

    Each channel is copied straight from ``image`` (basic slicing: a memmap reads only the crop).
    """
    spatial = image.shape[1:]
    if len(spatial) != len(patch_size) or len(center) != len(patch_size):
        raise ValueError(f"image spatial shape {spatial}, centre {tuple(center)} and patch_size "
                         f"{tuple(patch_size)} must have the same length")
    src, dst = _crop_windows(spatial, center, patch_size)
    for j, c in enumerate(range(image.shape[0]) if channels is None else channels):
        out_image[j][dst] = image[(int(c),) + src]
    if label is not None and out_label is not None:
        out_label[dst] = label[src]


def foreground_coords(label: np.ndarray, max_per_class: int = MAX_FG_COORDS, seed: int = 0) -> dict[int, np.ndarray]:
    """class -> (N, ndim) int32 voxel coordinates of each non-zero class (at most ``max_per_class``,
    a seeded random subset)."""
    arr = np.asarray(label)
    nz = np.nonzero(arr)
    values = arr[nz]
    coords = np.stack(nz, axis=1).astype(np.int32)
    rng = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for cls in np.unique(values):
        xyz = coords[values == cls]
        if len(xyz) > max_per_class:
            xyz = xyz[np.sort(rng.choice(len(xyz), max_per_class, replace=False))]
        out[int(cls)] = xyz
    return out


def is_foreground_sample(k: int, foreground_fraction: float) -> bool:
    """Whether position ``k`` of the running sample count is foreground-forced (``k % 3 == 0`` for 1/3)."""
    f = Fraction(foreground_fraction).limit_denominator(1000)
    return ceil((k + 1) * f) > ceil(k * f)


class _CaseSampler(Dataset):
    """Shared logic: index -> (case, rng, foreground flag), lazy per-case foreground coordinates."""

    def __init__(self, cases: list[CachedCase], modalities: tuple[str, ...], samples_per_volume: int,
                 foreground_fraction: float, seed: int) -> None:
        if not cases:
            raise ValueError("the dataset needs at least one case")
        if samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be >= 1, got {samples_per_volume}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        names = cases[0].channel_names
        unknown = [m for m in modalities if m not in names]
        if unknown or not modalities:
            raise ValueError(f"modalities {tuple(modalities)}: unknown {unknown}; known {names}")
        for case in cases:
            if case.label is None:
                raise ValueError(f"case {case.case_id} has no label; training samples need labels")
            if case.channel_names != names:
                raise ValueError(f"case {case.case_id} has channels {case.channel_names} but case "
                                 f"{cases[0].case_id} has {names}; one dataset needs one channel layout")
        self.cases = list(cases)
        self.modalities = tuple(modalities)
        self.channel_idx = cases[0].channel_indices(modalities)
        self.samples_per_volume = int(samples_per_volume)
        self.foreground_fraction = float(foreground_fraction)
        self.seed = int(seed)
        self.epoch = 0
        self._fg: dict[int, dict[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.cases) * self.samples_per_volume

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch used in the sample RNG (plain-int indices)."""
        self.epoch = int(epoch)

    def fg_coords(self, case_index: int) -> dict[int, np.ndarray]:
        """Foreground coordinates of one case, computed on first use and cached."""
        if case_index not in self._fg:
            self._fg[case_index] = foreground_coords(self.cases[case_index].label, seed=case_index)
            logger.debug("case %s: foreground voxels per class (kept) %s", self.cases[case_index].case_id,
                         {c: len(v) for c, v in self._fg[case_index].items()})
        return self._fg[case_index]

    def _resolve(self, index: int | tuple[int, int]) -> tuple[int, CachedCase, np.random.Generator, dict | None]:
        epoch, i = (int(index[0]), int(index[1])) if isinstance(index, (tuple, list)) else (self.epoch, int(index))
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        case_index, k = divmod(i, self.samples_per_volume)
        rng = np.random.default_rng([self.seed, epoch, i])
        fg = None
        # the count runs on over cases and epochs, so that f holds even when samples_per_volume < 1 / f
        if is_foreground_sample((epoch + case_index) * self.samples_per_volume + k, self.foreground_fraction):
            fg = self.fg_coords(case_index) or None
        return case_index, self.cases[case_index], rng, fg


class PatchDataset(_CaseSampler):
    """3D training patches: ``{"image": float32 (C, *patch), "label": int64 (*patch), "case_id": str}``.

    Length ``len(cases) * samples_per_volume``; index i draws from case ``i // samples_per_volume``.
    See the module docstring for the foreground rule and the RNG.
    """

    def __init__(self, cases: list[CachedCase], modalities: tuple[str, ...], patch_size: tuple[int, int, int],
                 samples_per_volume: int = 4, foreground_fraction: float = 1 / 3, augment: bool = True,
                 seed: int = 0) -> None:
        super().__init__(cases, modalities, samples_per_volume, foreground_fraction, seed)
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive ints, got {tuple(patch_size)}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.augment = build_augmentation(3, self.patch_size) if augment else None

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        _, case, rng, fg = self._resolve(index)
        center = sample_patch_center(case.label.shape, self.patch_size, rng, fg)
        if self.augment is None:
            img, lab = crop_patch(case.image, case.label, center, self.patch_size, self.channel_idx)
            return _finish(img, lab, case.case_id, None, rng)

        def fill(out_image: np.ndarray, out_label: np.ndarray) -> None:
            crop_into(case.image, case.label, center, self.patch_size, self.channel_idx, out_image, out_label)

        # the crop is written straight to its flipped/rotated place (same values as crop, then augment)
        image, label = augment_into(self.augment, (len(self.channel_idx), *self.patch_size), fill,
                                    int(rng.integers(2**32)), np.int64)
        return {"image": image, "label": label, "case_id": case.case_id}


class SliceDataset(_CaseSampler):
    """2D / 2.5D training slices along the LAST spatial axis (W; axial for RAS-stored BraTS volumes).

    A 3D centre is sampled with the same rule as :class:`PatchDataset` (patch depth 1 on the last
    axis); its last coordinate picks slice z. The image holds, for each modality, slices
    ``z - k .. z + k`` (``k = context_slices``, edge slices replicated) as channels, cropped to
    ``patch_size`` (D, H) around the centre with zero padding; the label is slice z.
    Returns ``{"image": float32 (C * (2k + 1), pD, pH), "label": int64 (pD, pH), "case_id": str}``.
    Memory-map reads along the last axis are strided (it is the fastest-varying axis on disk).
    """

    def __init__(self, cases: list[CachedCase], modalities: tuple[str, ...], patch_size: tuple[int, int],
                 samples_per_volume: int = 4, foreground_fraction: float = 1 / 3, augment: bool = True,
                 seed: int = 0, context_slices: int = 0, centre_jitter: int = 0) -> None:
        super().__init__(cases, modalities, samples_per_volume, foreground_fraction, seed)
        if len(patch_size) != 2 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be 2 positive ints for 2D slices, got {tuple(patch_size)}")
        if context_slices < 0:
            raise ValueError(f"context_slices must be >= 0, got {context_slices}")
        if centre_jitter < 0:
            raise ValueError(f"centre_jitter must be >= 0 voxels, got {centre_jitter}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.context_slices = int(context_slices)
        self.centre_jitter = int(centre_jitter)
        self.augment = build_augmentation(2, self.patch_size) if augment else None

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        _, case, rng, fg = self._resolve(index)
        depth = case.label.shape[-1]
        center = sample_patch_center(case.label.shape, (*self.patch_size, 1), rng, fg)
        if fg is not None and self.centre_jitter:
            offset = rng.integers(-self.centre_jitter, self.centre_jitter + 1, size=2)
            center = tuple(int(np.clip(c + o, 0, n - 1)) for c, o, n in zip(center[:2], offset, case.label.shape)) \
                + (center[2],)
        z, k = center[-1], self.context_slices
        z_idx = np.clip(np.arange(z - k, z + k + 1), 0, depth - 1)
        src, dst = _crop_windows(case.label.shape[:2], center[:2], self.patch_size)
        view = case.image[(slice(None),) + src + (slice(None),)]  # (4, d', h', W) view, not read yet
        stack = np.asarray(view[..., z_idx], dtype=np.float32)[self.channel_idx]  # (C, d', h', 2k+1)
        img = np.zeros((len(self.channel_idx), *self.patch_size, 2 * k + 1), dtype=np.float32)
        img[(slice(None),) + dst] = stack
        img = img.transpose(0, 3, 1, 2).reshape(-1, *self.patch_size)  # modality-major, then slices
        lab = np.zeros(self.patch_size, dtype=case.label.dtype)
        lab[dst] = np.asarray(case.label[src + (z,)])
        return _finish(img, lab, case.case_id, self.augment, rng)


def _finish(img: np.ndarray, lab: np.ndarray, case_id: str, augment, rng: np.random.Generator) -> dict:
    image = torch.from_numpy(np.ascontiguousarray(img))
    label = torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))
    if augment is not None:
        image, label = apply_augmentation(augment, image, label, int(rng.integers(2**32)))
    return {"image": image, "label": label, "case_id": case_id}


def volume_to_slices(image: np.ndarray | torch.Tensor, context_slices: int = 0) -> torch.Tensor:
    """Whole-volume 2D inference input: (C, D, H, W) -> (W, C * (2k + 1), D, H).

    Slice w holds, for each modality, slices ``w - k .. w + k`` of the last axis (edges replicated),
    the same channel order as :class:`SliceDataset`.
    """
    vol = torch.as_tensor(image)
    if vol.ndim != 4:
        raise ValueError(f"volume_to_slices expects (C, D, H, W), got shape {tuple(vol.shape)}")
    if context_slices < 0:
        raise ValueError(f"context_slices must be >= 0, got {context_slices}")
    c, d, h, w = vol.shape
    k = context_slices
    idx = (torch.arange(w)[:, None] + torch.arange(-k, k + 1)[None, :]).clamp_(0, w - 1)  # (W, 2k+1)
    out = vol[..., idx]  # (C, D, H, W, 2k+1)
    return out.permute(3, 0, 4, 1, 2).reshape(w, c * (2 * k + 1), d, h).contiguous()


def slices_to_volume(slices: torch.Tensor) -> torch.Tensor:
    """Stack per-slice 2D outputs back: (W, K, D, H) -> (K, D, H, W)."""
    if slices.ndim != 4:
        raise ValueError(f"slices_to_volume expects (W, K, D, H), got shape {tuple(slices.shape)}")
    return slices.permute(1, 2, 3, 0).contiguous()
