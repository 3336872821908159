"""HD95 in mm (metrics.surface): hand-computed cases, empty-mask rules, agreement with MONAI and scipy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import HausdorffDistanceMetric
from scipy import ndimage

from metrics import hd95, worst_case_distance


def test_parallel_planes_anisotropic():
    a, b = np.zeros((8, 6, 7), bool), np.zeros((8, 6, 7), bool)
    a[2], b[5] = True, True                     # 3 voxels apart along axis 0
    assert hd95(a, b, (2.0, 0.5, 0.7)) == pytest.approx(6.0)
    a, b = np.zeros((6, 6, 8), bool), np.zeros((6, 6, 8), bool)
    a[:, :, 1], b[:, :, 5] = True, True         # 4 voxels apart along axis 2
    assert hd95(a, b, (2.0, 0.5, 0.7)) == pytest.approx(2.8)


def test_single_voxels_2d():
    a, b = np.zeros((6, 7), bool), np.zeros((6, 7), bool)
    a[1, 1], b[4, 5] = True, True
    assert hd95(a, b, (2.0, 1.0)) == pytest.approx(math.sqrt(6.0 ** 2 + 4.0 ** 2))
    assert hd95(a, a, (2.0, 1.0)) == 0.0


def test_empty_mask_rules():
    empty, some = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    some[1, 1, 1] = True
    assert math.isnan(hd95(empty, empty, (1.0, 2.0, 3.0)))
    diag = math.sqrt(4.0 ** 2 + 10.0 ** 2 + 18.0 ** 2)
    assert hd95(empty, some, (1.0, 2.0, 3.0)) == pytest.approx(diag)
    assert hd95(some, empty, (1.0, 2.0, 3.0)) == pytest.approx(diag)
    assert worst_case_distance((240, 240, 155), 1.0) == pytest.approx(373.13, abs=0.01)


def test_bad_inputs_raise():
    m = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="one value per array axis"):
        hd95(m, m, (1.0, 1.0))
    with pytest.raises(ValueError, match="> 0"):
        hd95(m, m, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="same shape"):
        hd95(m, np.ones((3, 3, 4), bool), 1.0)


def _scipy_hd95(p, r, spacing):
    """Independent reference: surfaces by erosion, distances by EDT, max of the two directed 95th percentiles."""
    sp, sr = p & ~ndimage.binary_erosion(p), r & ~ndimage.binary_erosion(r)
    d_pr = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    d_rp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))


def _random_blob(rng, shape):
    m = np.zeros(shape, bool)
    inner = ndimage.binary_dilation(rng.random((shape[0] - 4, shape[1] - 4, shape[2] - 4)) > 0.93, iterations=1)
    m[2:-2, 2:-2, 2:-2] = inner                 # kept off the border so erosion conventions cannot differ
    return m


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
def test_agrees_with_monai_and_scipy_on_random_masks():
    rng = np.random.default_rng(0)
    spacing = (1.0, 0.6, 2.5)
    metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    for _ in range(3):
        p, r = _random_blob(rng, (14, 12, 10)), _random_blob(rng, (14, 12, 10))
        assert p.any() and r.any()
        ours = hd95(p, r, spacing)
        monai = metric(torch.from_numpy(p)[None, None].float(), torch.from_numpy(r)[None, None].float(),
                       spacing=list(spacing))
        assert ours == pytest.approx(float(monai.item()), rel=1e-5)
        assert ours == pytest.approx(_scipy_hd95(p, r, spacing), rel=1e-5)


def test_worst_case_uses_the_original_image_when_the_masks_are_a_crop() -> None:
    from metrics.segmentation import case_metrics

    pred = np.zeros((4, 4, 4), dtype=np.int64)
    ref = np.zeros_like(pred)
    ref[1, 1, 1] = 1  # reference tumour, prediction empty -> worst case
    spacing = (1.0, 2.0, 3.0)
    cropped = case_metrics(pred, ref, spacing, include_hd95=True)
    full = case_metrics(pred, ref, spacing, include_hd95=True, image_shape=(240, 240, 155))
    assert cropped["hd95_wt"] == pytest.approx(float(np.sqrt(4**2 + 8**2 + 12**2)))
    assert full["hd95_wt"] == pytest.approx(float(np.sqrt(240**2 + 480**2 + 465**2)))


# ---------------------------------------------------------------- the hand-written engine vs MONAI
def _monai_hd95(p, r, spacing):
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_hausdorff_distance(torch.from_numpy(p)[None, None], torch.from_numpy(r)[None, None],
                                         include_background=True, percentile=95, spacing=list(spacing))
    return float(out.item())


def _smooth_mask(rng, shape, sigma, keep):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f > np.quantile(f, 1.0 - keep)


CASES = [  # shape, spacing: 2D and 3D, isotropic and anisotropic
    ((40, 36), (1.0, 1.0)), ((64, 50), (0.7, 2.5)), ((18, 20, 16), (1.0, 1.0, 1.0)),
    ((24, 22, 14), (0.9, 0.9, 3.0)), ((30, 12, 20), (2.0, 0.5, 0.7)),
]


@pytest.mark.parametrize("shape,spacing", CASES)
def test_equals_monai_on_random_masks_touching_the_border(shape, spacing):
    rng = np.random.default_rng(sum(shape))
    for _ in range(4):
        p = _smooth_mask(rng, shape, 2.0, rng.uniform(0.05, 0.4))
        r = p if rng.random() < 0.2 else _smooth_mask(rng, shape, 2.0, rng.uniform(0.05, 0.4))
        assert hd95(p, r, spacing) == pytest.approx(_monai_hd95(p, r, spacing), rel=1e-6)


@pytest.mark.parametrize("radius", [0.4, 1.0, 3.0])
def test_equals_monai_whichever_phase_resolves_the_distances(radius, monkeypatch):
    """A tiny look-up ball sends nearly every distance through the k-d tree phases; far outliers too."""
    import metrics.surface_distance as sd

    monkeypatch.setattr(sd, "GATHER_RADIUS", radius)
    rng = np.random.default_rng(7)
    for shape, spacing in CASES:
        p = _smooth_mask(rng, shape, 2.5, 0.2)
        r = np.roll(p, 2, axis=0) ^ (rng.random(shape) < 0.02)
        p[(0,) * len(shape)] = True             # an isolated voxel far from everything
        assert hd95(p, r, spacing) == pytest.approx(_monai_hd95(p, r, spacing), rel=1e-6)


@pytest.mark.parametrize("cell", [1.0, 3.0, 6.0])
def test_equals_monai_when_most_distances_are_bounded_by_cells(cell, monkeypatch):
    """Poor predictions (surfaces 3-10 voxels apart) go through the cell bounds; any cell size is exact."""
    import metrics.surface_distance as sd

    monkeypatch.setattr(sd, "CELL_SIZE", cell)
    bounded = []
    original = sd._Direction.bound
    monkeypatch.setattr(sd._Direction, "bound", lambda self, *a: (bounded.append(1), original(self, *a)))
    rng = np.random.default_rng(11)
    for shape, spacing in CASES:
        p = _smooth_mask(rng, shape, 3.0, 0.25)
        r = np.roll(p, int(rng.integers(3, 8)), axis=int(rng.integers(0, len(shape)))) | (rng.random(shape) < 0.003)
        assert hd95(p, r, spacing) == pytest.approx(_monai_hd95(p, r, spacing), rel=1e-6)
    assert bounded, "no case reached the bounding phase"


@pytest.mark.parametrize("far_radius", [0.9, 1.5, 2.2])
def test_equals_monai_when_the_look_up_leaves_the_ball_early(far_radius, monkeypatch):
    """FAR_PENDING = 0 leaves the ball at the first shell >= far_radius whenever a point is pending; the
    bounds then start from that shell's distance instead of the ball's radius."""
    import metrics.surface_distance as sd

    monkeypatch.setattr(sd, "FAR_RADIUS", far_radius)
    monkeypatch.setattr(sd, "FAR_PENDING", 0.0)
    floors = []
    original = sd._Direction.bound
    monkeypatch.setattr(sd._Direction, "bound", lambda self, *a: (floors.append(self.reached), original(self, *a)))
    rng = np.random.default_rng(5)
    left_early = False
    for shape, spacing in CASES:
        p = _smooth_mask(rng, shape, 2.5, 0.2)
        r = np.roll(p, int(rng.integers(1, 6)), axis=int(rng.integers(0, len(shape)))) ^ (rng.random(shape) < 0.01)
        floors.clear()
        assert hd95(p, r, spacing) == pytest.approx(_monai_hd95(p, r, spacing), rel=1e-6)
        ball = sd.GATHER_RADIUS * min(spacing)
        left_early |= any(far_radius * min(spacing) <= f < ball for f in floors)
    assert left_early, "the look-up never left the ball early"


def _shape_in(shape, index):
    m = np.zeros(shape, bool)
    m[index] = True
    return m


EDGE_CASES = {
    "single voxels": (_shape_in((9, 8, 7), (1, 1, 1)), _shape_in((9, 8, 7), (7, 5, 2))),
    "same single voxel": (_shape_in((9, 8, 7), (4, 4, 4)), _shape_in((9, 8, 7), (4, 4, 4))),
    "one-voxel planes": (_shape_in((9, 8, 7), np.s_[2]), _shape_in((9, 8, 7), np.s_[:, :, 5])),
    "one-voxel lines": (_shape_in((9, 8, 7), np.s_[1, :, 3]), _shape_in((9, 8, 7), np.s_[:, 6, 0])),
    "whole volume vs a corner": (np.ones((6, 7, 5), bool), _shape_in((6, 7, 5), np.s_[:2, :2, :2])),
    "border slabs": (_shape_in((10, 9, 8), np.s_[-1]), _shape_in((10, 9, 8), np.s_[:, :, :1])),
    "2D border rows": (_shape_in((12, 10), np.s_[0]), _shape_in((12, 10), np.s_[:, -1])),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_equal_monai(name):
    p, r = EDGE_CASES[name]
    spacing = (1.0, 0.6, 2.5)[:p.ndim]
    assert hd95(p, r, spacing) == pytest.approx(_monai_hd95(p, r, spacing), rel=1e-6)


def test_empty_masks_follow_volbench_rules_not_monai():
    empty, some = np.zeros((5, 6, 7), bool), _shape_in((5, 6, 7), np.s_[0, 0, :])  # touching the border
    assert math.isnan(hd95(empty, empty, 1.0))
    assert hd95(empty, some, 1.0) == pytest.approx(worst_case_distance((5, 6, 7), 1.0))
    assert hd95(some, empty, 2.0, image_shape=(240, 240, 155)) == pytest.approx(2 * 373.1287, rel=1e-6)


def test_torch_quantile_replica_is_bitwise():
    from metrics.surface_distance import torch_quantile_f32

    rng = np.random.default_rng(3)
    for n in list(range(1, 60)) + [997, 4096, 12345]:
        v = (rng.random(n) * rng.choice([1.0, 30.0, 400.0])).astype(np.float32)
        for q in (0.0, 0.5, 0.95, 1.0):
            assert torch_quantile_f32(v.astype(np.float64), q) == float(torch.quantile(torch.from_numpy(v), q))


def test_region_hd95_equals_hd95_of_the_region_masks():
    from metrics import BRATS_REGIONS, region_mask
    from metrics.surface import region_hd95

    rng = np.random.default_rng(11)
    ref = np.zeros((30, 28, 26), np.uint8)
    ref[8:20, 6:22, 5:20] = 2
    ref[11:17, 10:18, 8:16] = 3
    ref[13:15, 12:15, 10:13] = 1
    pred = np.where(rng.random(ref.shape) < 0.05, rng.integers(0, 4, ref.shape), ref).astype(np.uint8)
    pred[0, 27, 25] = 2                                   # a false positive in the corner
    spacing = (1.0, 1.2, 2.0)
    got = region_hd95(pred, ref, BRATS_REGIONS, spacing, image_shape=(240, 240, 155))
    for name, members in BRATS_REGIONS.items():
        p, r = region_mask(pred, members), region_mask(ref, members)
        assert got[name] == hd95(p, r, spacing, image_shape=(240, 240, 155))
        assert got[name] == pytest.approx(_monai_hd95(p, r, spacing), rel=1e-6)
    only_ed = np.where(ref == 2, 2, 0).astype(np.uint8)   # TC and ET empty in the prediction only
    got = region_hd95(only_ed, ref, BRATS_REGIONS, spacing, image_shape=(240, 240, 155))
    assert got["tc"] == got["et"] == pytest.approx(worst_case_distance((240, 240, 155), spacing))
    with pytest.raises(ValueError, match="same shape"):
        region_hd95(pred, ref[:-1], BRATS_REGIONS, spacing)
