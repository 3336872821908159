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

Fast path: the pipeline is defined by the MONAI ``Compose`` of :func:`build_augmentation`, and every random
draw is made by those MONAI objects (their ``RandomState`` seeded as ``Compose.set_random_state`` seeds
them, each transform's ``randomize`` called in the order of its dictionary ``__call__``), but the
arithmetic runs without MONAI: all flips and rotations become one strided copy of the patch, written
straight from the source (e.g. the memory-mapped cache), and the intensity changes run in place on plain
tensors (no MetaTensor, no dictionaries, no intermediate copies). The output is bitwise equal to the
``Compose``'s, including the order of the float32 reductions of the contrast transform, whose memory layout
is replayed on meta tensors (``tests/test_augment_stats.py`` checks this over many seeds and shapes), with one
exception: the Gaussian noise values. MONAI draws them as float64 from its legacy ``RandomState`` and converts
them (~1 s per 4x128^3 patch, a third of the augmentation's time); here its ``RandomState`` still decides
whether noise is added and draws its std, then draws one seed for a float32 ``torch.Generator`` that fills the
noise in place (~4x faster): the same N(0, std^2) noise, other values. ``monai_noise=True`` keeps MONAI's values
(then the output is bitwise the ``Compose``'s). What is left is MONAI's float32 arithmetic, chiefly the contrast
transform's ``pow``. A ``Compose`` holding other transforms (e.g. the lesion track's zoom) or other options runs
through MONAI itself.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoise,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.transforms import Randomizable, RandomizableTransform
from monai.transforms.utils import map_spatial_axes
from monai.utils import MAX_SEED

KEYS = ("image", "label")
_SPATIAL = (RandFlipd, RandRotate90d)
_INTENSITY = (RandScaleIntensityd, RandShiftIntensityd, RandAdjustContrastd, RandGaussianNoised)


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
    monai_noise: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment one patch reproducibly.

    Args:
        aug: from :func:`build_augmentation` (any ``Compose`` works; others run through MONAI).
        image: (C, *spatial) float.
        label: (*spatial) integer labels.
        seed: per-sample seed in [0, 2**32).
        monai_noise: on the fast path, draw the Gaussian noise values with MONAI's float64 ``RandomState``
            (bitwise the ``Compose``'s output) instead of a float32 ``torch.Generator`` (see the module doc).

    Returns:
        ``(image, label)`` as plain (non-Meta) contiguous torch tensors: float32 (C, *spatial) and
        the label with its input dtype and shape.
    """
    img = torch.as_tensor(image, dtype=torch.float32).detach().cpu().numpy()
    lab = torch.as_tensor(label).detach().cpu().numpy()
    if tuple(img.shape[1:]) != tuple(lab.shape):
        raise ValueError(f"image spatial shape {tuple(img.shape[1:])} != label shape {tuple(lab.shape)}")

    def copy_in(img_out: np.ndarray, lab_out: np.ndarray) -> None:
        img_out[...] = img
        lab_out[...] = lab

    return augment_into(aug, tuple(img.shape), copy_in, seed, lab.dtype, monai_noise=monai_noise)


def augment_into(aug: Compose, image_shape: tuple[int, ...], fill: Callable[[np.ndarray, np.ndarray], None],
                 seed: int, label_dtype: Any = np.int64, monai_noise: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment the patch that ``fill`` writes, with the result of :func:`apply_augmentation` on that patch.

    ``fill(image, label)`` must write the un-augmented patch (float32 ``image_shape`` = (C, *spatial), and
    the label (*spatial)) into the two zero-initialised arrays it is given, which may be strided views:
    on the fast path they are views of the output buffers through the inverse flips and rotations, so the
    patch is copied once, straight to its augmented place (e.g. from a memory-mapped cache). ``monai_noise``:
    as in :func:`apply_augmentation`.

    Returns:
        float32 image (C, *spatial) and label (*spatial, ``label_dtype``), contiguous plain tensors.
    """
    image_shape = tuple(int(s) for s in image_shape)
    if not _fast_path_supported(aug):
        aug.set_random_state(seed=int(seed) % MAX_SEED)
        img = np.zeros(image_shape, dtype=np.float32)
        lab = np.zeros(image_shape[1:], dtype=label_dtype)
        fill(img, lab)
        out = aug({"image": torch.from_numpy(img), "label": torch.from_numpy(lab)[None]})
        return (_plain(out["image"]).float().contiguous(),
                _plain(out["label"])[0].to(torch.from_numpy(lab).dtype).contiguous())
    _set_random_state(aug, int(seed) % MAX_SEED)
    plan = _draw_plan(aug, torch.empty(image_shape, device="meta"), monai_noise=monai_noise)
    return _run_plan(plan, image_shape, fill, label_dtype)


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)


@dataclass
class _Plan:
    """The draws of one call: spatial ops on tensor dims, in order, and intensity ops, in order.

    ``spatial`` holds ``("flip", dims, 0)`` and ``("rot90", dims, k)``; ``intensity`` holds
    ``("scale", 1 + factor)``, ``("shift", offset)``, ``("contrast", (gamma, retain_stats, invert))`` and
    ``("noise", (mean, std, generator seed))`` or, with MONAI's noise values, ``("monai_noise", float32 array)``.
    """

    spatial: list[tuple[str, tuple[int, ...], int]] = field(default_factory=list)
    intensity: list[tuple[str, Any]] = field(default_factory=list)


def _fast_path_supported(aug: Compose) -> bool:
    """Whether every transform of ``aug`` is one the fast path replays exactly (types, keys and options)."""
    if getattr(aug, "lazy", False) or getattr(aug, "map_items", True) not in (True, 1) or aug.unpack_items:
        return False
    seen_intensity = False
    for t in aug.transforms:
        if isinstance(t, _SPATIAL):
            ok = tuple(t.keys) == KEYS and not t.lazy and not seen_intensity
        elif isinstance(t, RandScaleIntensityd):
            s = t.scaler
            ok = not s.channel_wise and s.dtype in (np.float32, torch.float32)
        elif isinstance(t, RandShiftIntensityd):
            ok = not t.shifter.channel_wise and all(k is None for k in t.factor_key)
        elif isinstance(t, RandAdjustContrastd):
            ok = True
        elif isinstance(t, RandGaussianNoised):
            ok = t.rand_gaussian_noise.dtype in (np.float32, torch.float32)
        else:
            return False
        if isinstance(t, _INTENSITY):
            ok = ok and tuple(t.keys) == ("image",)
            seen_intensity = True
        if not ok or getattr(t, "allow_missing_keys", False):
            return False
    return True


def _set_random_state(aug: Compose, seed: int) -> None:
    """``aug.set_random_state(seed)`` (same states), reseeding the existing ``RandomState`` objects in place.

    MONAI makes a new ``np.random.RandomState`` per transform and inner transform on every call (~0.15 ms
    each: a new one first seeds itself from OS entropy); ``RandomState.seed`` gives the same state.
    """
    _reseed(aug, seed)
    for t in aug.transforms:
        s = int(aug.R.randint(MAX_SEED, dtype="uint32"))  # as Compose.set_random_state draws them
        inner = [getattr(t, a) for a in ("scaler", "shifter", "adjuster", "rand_gaussian_noise") if hasattr(t, a)]
        for obj in (t, *inner):
            _reseed(obj, s)


def _reseed(obj: Randomizable, seed: int) -> None:
    if "R" in vars(obj):  # its own RandomState (not yet the class-level one shared by all transforms)
        obj.R.seed(seed % MAX_SEED)
    else:
        Randomizable.set_random_state(obj, seed=seed)


def _draw_plan(aug: Compose, img: torch.Tensor, monai_noise: bool = False) -> _Plan:
    """Make every draw with the MONAI objects, in the order their dictionary ``__call__`` makes them
    (the noise values excepted unless ``monai_noise``: :func:`_noise_draw`)."""
    plan = _Plan()
    ndim = img.ndim
    for t in aug.transforms:
        if isinstance(t, RandFlipd):
            t.randomize(None)
            if t._do_transform:
                plan.spatial.append(("flip", tuple(map_spatial_axes(ndim, t.flipper.spatial_axis)), 0))
        elif isinstance(t, RandRotate90d):
            t.randomize()
            if t._do_transform:
                plan.spatial.append(("rot90", tuple(map_spatial_axes(ndim, t.spatial_axes)), int(t._rand_k)))
        else:
            t.randomize(None)
            if not t._do_transform:
                continue
            if isinstance(t, RandScaleIntensityd):
                t.scaler.randomize(img)
                plan.intensity.append(("scale", 1 + t.scaler.factor))
            elif isinstance(t, RandShiftIntensityd):
                t.shifter.randomize(img)
                plan.intensity.append(("shift", t.shifter._offset))
            elif isinstance(t, RandAdjustContrastd):
                t.adjuster.randomize(None)
                a = t.adjuster
                plan.intensity.append(("contrast", (a.gamma_value, a.retain_stats, a.invert_image)))
            elif monai_noise:  # RandGaussianNoised: MONAI's float64 draws of the image shape, converted to float32
                t.rand_gaussian_noise.randomize(img)
                plan.intensity.append(("monai_noise", t.rand_gaussian_noise.noise))
            else:
                draw = _noise_draw(t.rand_gaussian_noise)
                if draw is not None:
                    plan.intensity.append(("noise", draw))
    return plan


def _noise_draw(noise: RandGaussianNoise) -> tuple[float, float, int] | None:
    """``(mean, std, seed)``: ``RandGaussianNoise.randomize``'s own probability and std draws from its
    ``RandomState``, then one seed (in place of its float64 normal draws) for a float32 ``torch.Generator``;
    ``None`` when its probability draw says no noise."""
    RandomizableTransform.randomize(noise, None)  # its probability draw (1.0 inside the dictionary transform)
    if not noise._do_transform:
        return None
    std = noise.R.uniform(0, noise.std) if noise.sample_std else noise.std
    return float(noise.mean), float(std), int(noise.R.randint(MAX_SEED, dtype="uint32"))


def _monai_strides(shape: tuple[int, ...], spatial: list[tuple[str, tuple[int, ...], int]]) -> tuple[int, ...]:
    """Strides of the image as MONAI hands it to the intensity transforms, replayed on a meta tensor.

    ``torch.flip``/``torch.rot90`` keep (or permute) the input's strides, and every MONAI transform first
    passes its input through ``.to(memory_format=torch.contiguous_format)``, which copies tensors whose
    strides look channels-last; the float32 sums of the contrast transform follow this memory order.
    """
    t = torch.empty(shape, device="meta")
    for kind, dims, k in spatial:
        t = t.to(memory_format=torch.contiguous_format)
        t = torch.flip(t, dims) if kind == "flip" else torch.rot90(t, k, dims)
    return tuple(t.to(memory_format=torch.contiguous_format).stride())


def _inverse_view(a: np.ndarray, spatial: list[tuple[str, tuple[int, ...], int]]) -> np.ndarray:
    """The view ``v`` of ``a`` such that flipping/rotating ``v`` by ``spatial`` gives ``a`` (no copy):
    writing the un-augmented patch into ``v`` puts every voxel where the flips and rotations move it."""
    for kind, dims, k in reversed(spatial):
        a = np.flip(a, dims) if kind == "flip" else np.rot90(a, -k, dims)
    return a


def _new_buffer(shape: tuple[int, ...], dtype: Any, strides: tuple[int, ...] | None
                ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """A zeroed array of ``shape`` laid out with the (element) ``strides`` given, or C-contiguous.

    Returns ``(array, tensor, flat)``: the numpy array and a torch tensor of the same memory in logical
    order (``shape``), and the whole memory as one contiguous 1-D tensor (for order-free reductions).
    """
    order = list(range(len(shape))) if strides is None else sorted(range(len(shape)), key=lambda d: -strides[d])
    buf = np.zeros([shape[d] for d in order], dtype=dtype)  # memory order: outermost tensor dim first
    back = np.argsort(order).tolist()
    flat = torch.from_numpy(buf.reshape(-1))
    return buf.transpose(back), torch.from_numpy(buf).permute(*back), flat


def _contrast(x: torch.Tensor, flat: torch.Tensor, gamma: float, retain_stats: bool, invert: bool) -> None:
    """MONAI ``AdjustContrast`` in place, with the same float32 operations in the same order.

    ``flat`` is ``x``'s memory as one contiguous vector: min and max are exact in any order, and read
    far faster from it than through ``x``'s permuted strides.
    """
    if invert:
        x.neg_()
    if retain_stats:
        mn, sd = x.mean(), x.std()
    lo, hi = torch.aminmax(flat)
    rng = hi - lo
    x.sub_(lo).div_(float(rng + 1e-7)).pow_(gamma).mul_(rng).add_(lo)
    if retain_stats:
        x.sub_(x.mean())
        x.div_(x.std() + 1e-8)
        x.mul_(sd).add_(mn)
    if invert:
        x.neg_()


def _run_plan(plan: _Plan, image_shape: tuple[int, ...], fill: Callable[[np.ndarray, np.ndarray], None],
              label_dtype: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Execute ``plan``: ``fill`` writes through the inverse spatial view, then the intensity ops in place.

    Without a contrast change the image buffer is C-contiguous; with one it has MONAI's memory layout
    (so its float32 mean and std are summed in MONAI's order) and is made contiguous at the end.
    """
    strides = _monai_strides(image_shape, plan.spatial) if any(k == "contrast" for k, _ in plan.intensity) else None
    img_np, x, flat = _new_buffer(image_shape, np.float32, strides)
    lab_np, y, _ = _new_buffer(image_shape[1:], label_dtype, None)
    fill(_inverse_view(img_np, plan.spatial), _inverse_view(lab_np[None], plan.spatial)[0])
    for kind, value in plan.intensity:
        if kind == "scale":
            x.mul_(value)
        elif kind == "shift":
            x.add_(value)
        elif kind == "contrast":
            _contrast(x, flat, *value)
        elif kind == "noise":
            mean, std, seed = value
            generator = torch.Generator().manual_seed(seed)
            x.add_(torch.empty(x.shape, dtype=torch.float32).normal_(mean, std, generator=generator))
        else:
            x.add_(torch.from_numpy(value))
    return x.contiguous(), y

