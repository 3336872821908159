"""Patch / slice sampling, cropping, augmentation and loader settings on tiny synthetic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import RandRotate90d

from dataio.augment import apply_augmentation, build_augmentation
from dataio.loaders import LoaderSettings, make_train_loader, set_epoch
from dataio.sampling import (
    PatchDataset,
    SliceDataset,
    crop_patch,
    is_foreground_sample,
    sample_patch_center,
    slices_to_volume,
    volume_to_slices,
)
from dataio.types import CachedCase, CropBox


def _case(image: np.ndarray, label: np.ndarray, case_id: str = "c0") -> CachedCase:
    shape = label.shape
    return CachedCase(case_id=case_id, patient_id=case_id, image=image, label=label, spacing=(1.0, 1.0, 1.0),
                      affine=np.eye(4), original_shape=shape, crop=CropBox((0, 0, 0), shape), convention="internal")


def _small_fg_case(shape=(40, 40, 40), case_id: str = "c0") -> CachedCase:
    """Constant image per channel (channel m = m + 0.5) and a 28-voxel foreground away from borders."""
    image = np.ones((4, *shape), dtype=np.float32) * (np.arange(4, dtype=np.float32) + 0.5)[:, None, None, None]
    label = np.zeros(shape, dtype=np.uint8)
    label[20:23, 20:23, 20:23] = 1
    label[10, 12, 30] = 3
    return _case(image, label, case_id)


def test_foreground_rule_every_third_sample() -> None:
    assert [is_foreground_sample(k, 1 / 3) for k in range(7)] == [True, False, False, True, False, False, True]
    ds = PatchDataset([_small_fg_case(), _small_fg_case(case_id="c1")], ("flair", "t1"), (8, 8, 8),
                      samples_per_volume=9, augment=False, seed=5)
    assert len(ds) == 18
    uniform_hits = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == (2, 8, 8, 8) and s["image"].dtype == torch.float32
            assert s["label"].shape == (8, 8, 8) and s["label"].dtype == torch.int64
            assert s["case_id"] == ("c0" if i < 9 else "c1")
            # channel order follows the requested modalities: flair (3.5) then t1 (0.5); padding is 0
            assert set(torch.unique(s["image"][0]).tolist()) <= {0.0, 3.5}
            assert set(torch.unique(s["image"][1]).tolist()) <= {0.0, 0.5}
            centre_fg = bool(s["label"][4, 4, 4] > 0)
            if (i % 9) % 3 == 0:
                assert centre_fg, f"sample {i} should be foreground-forced"
            else:
                uniform_hits += centre_fg
    assert uniform_hits <= 1  # 28 foreground voxels out of 64000: uniform centres almost never hit


@pytest.mark.parametrize("spv", [1, 2, 4, 8])
def test_foreground_fraction_holds_for_any_samples_per_volume(spv: int) -> None:
    """One third of the patches are foreground-forced whatever samples_per_volume is (the default is 8;
    quick runs use 1), and with spv = 1 every case still gets forced samples in some epochs."""
    cases = [_small_fg_case(case_id=f"c{i}") for i in range(6)]
    ds = PatchDataset(cases, ("t1",), (4, 4, 4), samples_per_volume=spv, augment=False, seed=0)
    forced_per_case = [0] * len(cases)
    for epoch in range(3):
        forced = 0
        for i in range(len(ds)):
            case_index, _, _, fg = ds._resolve((epoch, i))
            forced += fg is not None
            forced_per_case[case_index] += fg is not None
        assert abs(forced - len(ds) / 3) <= 1, (epoch, forced, len(ds))
    assert all(n > 0 for n in forced_per_case)


def test_uniform_centre_keeps_patch_inside() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = sample_patch_center((20, 9, 5), (8, 8, 8), rng, None)
        assert 4 <= c[0] <= 16 and 4 <= c[1] <= 5  # start = c - 4 in [0, s - p]
        assert c[2] - 4 == (5 - 8) // 2  # volume smaller than the patch: centred
    fg = {1: np.array([[3, 4, 2]]), 2: np.zeros((0, 3), dtype=int)}
    assert sample_patch_center((20, 9, 5), (8, 8, 8), rng, fg) == (3, 4, 2)


def test_crop_pads_small_volume_from_memmap(tmp_path) -> None:
    rng = np.random.default_rng(1)
    src = rng.random((2, 4, 5, 6), dtype=np.float32) + 1.0
    mm = np.memmap(tmp_path / "img.dat", dtype=np.float32, mode="w+", shape=src.shape)
    mm[:] = src
    mm.flush()
    image = np.memmap(tmp_path / "img.dat", dtype=np.float32, mode="r", shape=src.shape)
    label = np.ones((4, 5, 6), dtype=np.uint8)
    centre = sample_patch_center((4, 5, 6), (8, 8, 8), rng, None)
    img, lab = crop_patch(image, label, centre, (8, 8, 8), channels=[1, 0])
    assert img.shape == (2, 8, 8, 8) and lab.shape == (8, 8, 8) and img.dtype == np.float32
    off = [c - 4 for c in centre]  # patch start in volume coordinates (negative: padding before)
    inner = tuple(slice(-o, -o + s) for o, s in zip(off, (4, 5, 6)))
    np.testing.assert_array_equal(img[(slice(None),) + inner], src[[1, 0]])
    assert lab[inner].all()
    mask = np.zeros((8, 8, 8), bool)
    mask[inner] = True
    assert not img[:, ~mask].any() and not lab[~mask].any()
    # a border crop of a larger volume: only the overlapping corner is copied
    big = np.arange(1000, dtype=np.float32).reshape(1, 10, 10, 10) + 1
    img, _ = crop_patch(big, None, (0, 0, 0), (4, 4, 4))
    np.testing.assert_array_equal(img[0, 2:, 2:, 2:], big[0, :2, :2, :2])
    assert img[0, :2].sum() == 0 and img[0, :, :2].sum() == 0


def test_patch_determinism_and_epochs() -> None:
    cases = [_small_fg_case()]
    rng = np.random.default_rng(2)
    cases[0].image = rng.standard_normal(cases[0].image.shape).astype(np.float32)
    a = PatchDataset(cases, ("t1", "t1ce", "t2", "flair"), (8, 8, 8), samples_per_volume=6, seed=3)
    b = PatchDataset(cases, ("t1", "t1ce", "t2", "flair"), (8, 8, 8), samples_per_volume=6, seed=3)
    b.set_epoch(0)
    for i in (0, 1, 4):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["label"], b[i]["label"])
        assert torch.equal(a[(1, i)]["image"], b[(1, i)]["image"])  # explicit (epoch, index)
    b.set_epoch(1)
    assert torch.equal(b[1]["image"], a[(1, 1)]["image"])
    assert not torch.equal(a[1]["image"], b[1]["image"])  # another epoch: another patch / augmentation
    c = PatchDataset(cases, ("t1", "t1ce", "t2", "flair"), (8, 8, 8), samples_per_volume=6, seed=4)
    assert not torch.equal(a[1]["image"], c[1]["image"])


@pytest.mark.parametrize("patch", [(8, 8, 4), (12, 12)])
def test_augmentation_shapes_labels_alignment(patch) -> None:
    aug = build_augmentation(len(patch), patch)
    rot_planes = [t.spatial_axes for t in aug.transforms if isinstance(t, RandRotate90d)]
    assert rot_planes == [(0, 1)]  # only planes whose two axes have equal patch size
    rng = np.random.default_rng(0)
    label = torch.from_numpy(rng.integers(0, 4, patch)).long()
    image = torch.stack([label.float() * 10, torch.from_numpy(rng.standard_normal(patch)).float()])
    changed = False
    for seed in range(12):
        img, lab = apply_augmentation(aug, image, label, seed)
        assert type(img) is torch.Tensor and type(lab) is torch.Tensor
        assert img.shape == image.shape and lab.shape == label.shape and lab.dtype == torch.int64
        # flips and rotations permute voxels: the label histogram is unchanged
        assert torch.equal(torch.bincount(lab.flatten(), minlength=4), torch.bincount(label.flatten(), minlength=4))
        # intensity transforms are increasing maps (+ small noise): image ch0 still orders by label
        for c in range(3):
            assert img[0][lab == c].max() < img[0][lab == c + 1].min()
        again = apply_augmentation(aug, image, label, seed)
        assert torch.equal(again[0], img) and torch.equal(again[1], lab)
        changed |= not torch.equal(lab, label)
    assert changed


def _coded_case(shape=(6, 7, 5)) -> CachedCase:
    """image[m, d, h, w] = 1 + m*1e6 + w*1e4 + d*100 + h; foreground only on the edge slice w = 0."""
    m, d, h, w = np.meshgrid(*(np.arange(n) for n in (4, *shape)), indexing="ij")
    image = (1 + m * 1_000_000 + w * 10_000 + d * 100 + h).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:4, 3:5, 0] = 2
    return _case(image, label)


@pytest.mark.parametrize("k", [0, 2])
def test_slice_dataset_context_channels(k: int) -> None:
    case = _coded_case()
    ds = SliceDataset([case], ("t2", "t1"), (4, 4), samples_per_volume=6, augment=False, seed=1, context_slices=k)
    n_ctx = 2 * k + 1
    for i in range(len(ds)):
        s = ds[i]
        img = s["image"].numpy().astype(np.int64)
        assert img.shape == (2 * n_ctx, 4, 4) and s["label"].shape == (4, 4)
        valid = img[k] > 0  # centre slice of the first modality; 0 = zero padding
        z = int(((img[k][valid] % 1_000_000) // 10_000)[0])
        for mi, m in enumerate((2, 0)):
            for t in range(n_ctx):
                ch = img[mi * n_ctx + t][valid]
                assert (ch // 1_000_000 == m).all()
                assert ((ch % 1_000_000) // 10_000 == min(max(z - k + t, 0), 4)).all()  # replicate at edges
        dh = img[k][valid] % 10_000 - 1  # undo the +1 offset
        np.testing.assert_array_equal(s["label"].numpy()[valid], case.label[dh // 100, dh % 100, z])
        if i % 3 == 0:  # foreground-forced: the only foreground is on slice 0
            assert z == 0 and s["label"][2, 2] == 2


def test_volume_to_slices_layout() -> None:
    vol = torch.randn(2, 3, 4, 5)
    out = volume_to_slices(vol, 1)
    assert out.shape == (5, 6, 3, 4)
    for w in range(5):
        for m in range(2):
            for t in range(3):
                torch.testing.assert_close(out[w, m * 3 + t], vol[m, :, :, min(max(w - 1 + t, 0), 4)])
    assert torch.equal(slices_to_volume(volume_to_slices(vol, 0)), vol)


def test_loader_settings_validation() -> None:
    LoaderSettings().validate()
    for kwargs, flag in (({"num_workers": -1}, "--num_workers must be >= 0, got -1"),
                         ({"batch_size": 0}, "--batch_size must be >= 1"),
                         ({"sharing_strategy": "shared_banana"}, "--sharing_strategy must be one of")):
        with pytest.raises(ValueError, match=flag):
            LoaderSettings(**kwargs).validate()


def test_train_loader_seeded_and_worker_independent() -> None:
    ds = PatchDataset([_small_fg_case(), _small_fg_case(case_id="c1")], ("t1",), (8, 8, 8),
                      samples_per_volume=3, seed=0)

    def epochs(workers: int, persistent: bool = False) -> list[list[torch.Tensor]]:
        loader = make_train_loader(ds, LoaderSettings(batch_size=2, num_workers=workers,
                                                      persistent_workers=persistent), seed=9)
        out = []
        for e in range(2):
            set_epoch(loader, e)
            out.append([(b["image"], b["label"], tuple(b["case_id"])) for b in loader])
        return out

    ref = epochs(0)
    assert len(ref[0]) == 3 and ref[0][-1][0].shape == (2, 1, 8, 8, 8)
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(ref[0], ref[1]))  # epochs differ
    for got in (epochs(0), epochs(2, persistent=True)):
        for ep_ref, ep_got in zip(ref, got):
            for (i1, l1, c1), (i2, l2, c2) in zip(ep_ref, ep_got):
                assert torch.equal(i1, i2) and torch.equal(l1, l2) and c1 == c2


def test_datasets_with_their_own_channel_names_are_served_and_cached(tmp_path) -> None:
    import json

    from dataio.cache import PreprocessedCache, _meta
    from dataio.sampling import PatchDataset
    from dataio.types import CachedCase, CropBox

    label = np.zeros((16, 16, 16), dtype=np.uint8)
    label[4:8, 4:8, 4:8] = 1
    image = np.stack([np.full(label.shape, 7.0, np.float32), label.astype(np.float32)])
    case = CachedCase("ct_001", "p1", image, label, (0.5, 0.5, 5.0), np.eye(4), (16, 16, 16),
                      CropBox((0, 0, 0), (16, 16, 16)), "internal", channel_names=("ct", "mask_hint"))
    sample = PatchDataset([case], ("mask_hint",), (8, 8, 8), samples_per_volume=3, augment=False, seed=0)[0]
    assert sample["image"].shape == (1, 8, 8, 8)
    assert torch.equal(sample["image"][0] > 0, sample["label"] > 0)  # the named channel, not channel 0
    with pytest.raises(ValueError, match="unknown"):
        PatchDataset([case], ("flair",), (8, 8, 8))
    entry = tmp_path / "ct_001"
    entry.mkdir()
    np.save(entry / "image.npy", image)
    np.save(entry / "label.npy", label)
    (entry / "meta.json").write_text(json.dumps(_meta(case, {}, [])))
    assert PreprocessedCache._read(entry).channel_names == ("ct", "mask_hint")
    meta = json.loads((entry / "meta.json").read_text())
    del meta["channel_names"]  # entries written before channel names were recorded are BraTS entries
    (entry / "meta.json").write_text(json.dumps(meta))
    assert PreprocessedCache._read(entry).channel_names == ("t1", "t1ce", "t2", "flair")
