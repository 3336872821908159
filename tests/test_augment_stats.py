"""The fast augmentation path (dataio.augment) against MONAI's own ``Compose``: bitwise equal outputs with
MONAI's noise values (so the same draws), the float32 noise of the default path against MONAI's (same
probability and std draws, same distribution), and the declared probabilities and ranges of the draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandZoomd

from dataio.augment import KEYS, _draw_plan, _fast_path_supported, apply_augmentation, build_augmentation
from dataio.sampling import PatchDataset, crop_patch, sample_patch_center
from dataio.types import CachedCase, CropBox


def _monai(aug: Compose, image: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the MONAI ``Compose`` itself, as ``apply_augmentation`` called it before the fast path."""
    aug.set_random_state(seed=seed)
    out = aug({"image": image.float(), "label": label[None]})
    return out["image"].as_tensor().float().contiguous(), out["label"].as_tensor()[0].to(label.dtype).contiguous()


def _pipeline(shape: tuple[int, int, int], seed: int) -> tuple[Compose, torch.Tensor, torch.Tensor]:
    """The 3D augmentation for ``shape`` and a random four-channel patch of that shape with its label."""
    return (build_augmentation(3, shape), *_patch(shape, 4, seed=seed))


def _patch(shape: tuple[int, ...], channels: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((channels, *shape), generator=g) * 2 + 0.5, torch.randint(0, 4, shape, generator=g)


@pytest.mark.parametrize("shape,channels", [((8, 8, 8), 4), ((8, 8, 8), 1), ((8, 8, 6), 2), ((6, 8, 8), 3),
                                            ((8, 6, 8), 2), ((12, 12), 2), ((10, 7), 1)])
def test_fast_path_is_bitwise_monai(shape: tuple[int, ...], channels: int) -> None:
    aug = build_augmentation(len(shape), shape)
    assert _fast_path_supported(aug)
    image, label = _patch(shape, channels)
    noisy = 0
    for seed in range(100):  # covers every flip/rotation combination with and without contrast and noise
        fast = apply_augmentation(aug, image, label, seed, monai_noise=True)
        default = apply_augmentation(aug, image, label, seed)
        img, lab = _monai(aug, image, label, seed)
        noised = bool(aug.transforms[-1]._do_transform)  # RandGaussianNoised of this draw
        noisy += noised
        assert torch.equal(fast[0], img) and torch.equal(fast[1], lab), f"seed {seed}"
        assert fast[0].is_contiguous() and fast[1].dtype == label.dtype
        assert torch.equal(default[1], lab) and torch.equal(default[0], img) is not noised, f"seed {seed}"
    assert 0 < noisy < 40


def test_fast_path_is_bitwise_monai_on_larger_patches() -> None:
    """Large enough for multi-block float32 reductions in the contrast transform's mean and std."""
    aug, image, label = _pipeline((40, 40, 40), seed=2)
    contrast_seen = 0
    for seed in range(24):
        fast = apply_augmentation(aug, image, label, seed, monai_noise=True)
        img, lab = _monai(aug, image, label, seed)
        contrast_seen += bool(aug.transforms[-2]._do_transform)  # RandAdjustContrastd of this draw
        assert torch.equal(fast[0], img) and torch.equal(fast[1], lab), f"seed {seed}"
    assert contrast_seen >= 3


def test_numpy_inputs_and_label_dtype_kept() -> None:
    aug = build_augmentation(3, (6, 6, 6))
    image, label = _patch((6, 6, 6), 2)
    lab8 = label.to(torch.uint8)
    for seed in range(4):
        img, lab = apply_augmentation(aug, image.numpy(), lab8.numpy(), seed, monai_noise=True)
        ref = _monai(aug, image, lab8, seed)
        assert lab.dtype == torch.uint8 and torch.equal(img, ref[0]) and torch.equal(lab, ref[1])
    assert torch.equal(image, _patch((6, 6, 6), 2)[0])  # the input is not modified in place


def test_other_pipelines_run_through_monai() -> None:
    shape = (8, 8, 8)
    zoom = RandZoomd(keys=KEYS, mode=("trilinear", "nearest"), keep_size=True, prob=0.5)
    aug = Compose([zoom, *build_augmentation(3, shape).transforms])
    assert not _fast_path_supported(aug)
    image, label = _patch(shape, 2)
    for seed in range(6):
        out = apply_augmentation(aug, image, label, seed)  # MONAI's own noise on this path
        ref = _monai(aug, image, label, seed)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def _case(shape: tuple[int, int, int] = (20, 18, 16)) -> CachedCase:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((4, *shape)).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[3:8, 2:6, 1:5] = 1
    label[12:15, 10:16, 9:15] = 3
    return CachedCase("c0", "c0", image, label, (1.0, 1.0, 1.0), np.eye(4), shape, CropBox((0, 0, 0), shape),
                      "internal")


def test_patch_dataset_crop_into_place_equals_crop_then_augment() -> None:
    """PatchDataset writes the crop straight to its augmented place: same as crop_patch + apply_augmentation
    (itself bitwise the Compose but for the noise values, tested above)."""
    case = _case()
    patch = (12, 12, 12)  # larger than some axes of the case near the border: zero padding
    ds = PatchDataset([case], ("t2", "t1", "flair"), patch, samples_per_volume=24, seed=5)
    for i in range(len(ds)):
        sample = ds[i]
        _, _, rng, fg = ds._resolve(i)
        centre = sample_patch_center(case.label.shape, patch, rng, fg)
        img, lab = crop_patch(case.image, case.label, centre, patch, ds.channel_idx)
        ref = apply_augmentation(ds.augment, torch.from_numpy(img), torch.from_numpy(lab.astype(np.int64)),
                                 int(rng.integers(2**32)))
        assert torch.equal(sample["image"], ref[0]) and torch.equal(sample["label"], ref[1]), f"index {i}"
        assert sample["label"].dtype == torch.int64


def test_draw_statistics_match_declared_probabilities_and_ranges() -> None:
    """Flip frequency per axis, rotation k, and the intensity draws' probabilities and ranges."""
    shape = (4, 4, 4)
    aug = build_augmentation(3, shape)
    n = 1200
    flips = np.zeros(3)
    rot_k: dict[tuple[int, ...], list[int]] = {}
    values: dict[str, list] = {"scale": [], "shift": [], "contrast": [], "noise": []}
    for seed in range(n):
        aug.set_random_state(seed=seed)
        plan = _draw_plan(aug, torch.empty((1, *shape), device="meta"))
        for kind, dims, k in plan.spatial:
            if kind == "flip":
                flips[dims[0] - 1] += 1
            else:
                rot_k.setdefault(dims, []).append(k)
        for kind, value in plan.intensity:
            values[kind].append(value)
    tol = 4 * np.sqrt(0.25 / n)  # 4 standard errors of a frequency near 0.5
    assert np.all(np.abs(flips / n - 0.5) < tol)
    assert sorted(rot_k) == [(1, 2), (1, 3), (2, 3)]
    for ks in rot_k.values():
        assert abs(len(ks) / n - 0.5) < tol and set(ks) == {1, 2, 3}
        assert np.all(np.abs(np.bincount(ks, minlength=4)[1:] / len(ks) - 1 / 3) < 0.06)
    for kind, p in (("scale", 0.3), ("shift", 0.3), ("contrast", 0.3), ("noise", 0.15)):
        assert abs(len(values[kind]) / n - p) < 4 * np.sqrt(p * (1 - p) / n), kind
    scale = np.array(values["scale"]) - 1
    shift = np.array(values["shift"])
    gamma = np.array([v[0] for v in values["contrast"]])
    for x, lo, hi in ((scale, -0.1, 0.1), (shift, -0.1, 0.1), (gamma, 0.7, 1.5)):
        assert x.min() >= lo and x.max() <= hi and abs(x.mean() - (lo + hi) / 2) < 0.1 * (hi - lo)
    noise_mean = np.array([v[0] for v in values["noise"]])
    noise_std = np.array([v[1] for v in values["noise"]])  # std ~ U(0, 0.1), as MONAI's sample_std draws it
    assert np.all(noise_mean == 0.0) and noise_std.min() >= 0 and noise_std.max() <= 0.1
    assert abs(noise_std.mean() - 0.05) < 4 * 0.1 / np.sqrt(12 * len(noise_std))
    assert len({v[2] for v in values["noise"]}) == len(noise_std)  # a generator seed of its own per draw


def test_float32_noise_has_monai_noise_std_and_distribution() -> None:
    """Where noise fires, the default path adds N(0, std^2) with the std MONAI draws, but other values."""
    aug, image, label = _pipeline((32, 32, 32), seed=3)
    fired = 0
    for seed in range(80):
        default = apply_augmentation(aug, image, label, seed)
        img, _ = _monai(aug, image, label, seed)
        noise = aug.transforms[-1].rand_gaussian_noise
        if not aug.transforms[-1]._do_transform:
            continue
        fired += 1
        monai_noise = torch.as_tensor(noise.noise)
        ours = (default[0] - (img - monai_noise)).double()  # the same base patch, other noise values
        n = ours.numel()
        assert abs(float(ours.std()) / float(monai_noise.std()) - 1) < 0.01, f"seed {seed}"
        assert abs(float(ours.mean())) < 5 * float(monai_noise.std()) / np.sqrt(n) + 1e-6, f"seed {seed}"
        assert abs(float(torch.corrcoef(torch.stack([ours.flatten(), monai_noise.double().flatten()]))[0, 1])) < 0.02
        kurtosis = float(((ours - ours.mean()) ** 4).mean() / ours.var() ** 2)
        assert abs(kurtosis - 3) < 0.1, f"seed {seed}: not Gaussian"
    assert fired >= 4
