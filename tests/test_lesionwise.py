"""BraTS 2023 lesion-wise Dice / HD95 (metrics.lesionwise): hand-made cases, MONAI Dice and HD95 on random ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from metrics.lesionwise import DILATION_STRUCTURE, lesionwise_scores

SHAPE = (40, 40, 40)
SP = (1.0, 1.0, 1.0)


def vol():
    return np.zeros(SHAPE, dtype=bool)


def cube(m, lo, size=5):
    m[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return m


def monai_hd95(pred, ref, spacing):
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        out = compute_hausdorff_distance(torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None],
                                         include_background=True, percentile=95, spacing=list(spacing))
    return float(out.reshape(-1)[0])


def test_dilation_structure_is_26_connected():
    assert DILATION_STRUCTURE.shape == (3, 3, 3) and DILATION_STRUCTURE.all()


def test_one_matched_lesion():
    ref = cube(vol(), (10, 10, 10))                  # 125 voxels
    pred = cube(vol(), (11, 10, 10))                 # shifted by one voxel: overlap 100
    out = lesionwise_scores(pred, ref, (2.0, 1.0, 1.5))
    assert out["n_lesions"] == 1 and out["n_fp"] == 0
    assert out["lesion_dice"] == pytest.approx(0.8)
    assert out["lesion_hd95"] == pytest.approx(monai_hd95(pred, ref, (2.0, 1.0, 1.5)))
    assert out["lesion_hd95"] > 0
    perfect = lesionwise_scores(ref, ref, SP)
    assert perfect == {"lesion_dice": 1.0, "lesion_hd95": 0.0, "n_lesions": 1, "n_fp": 0}


def test_missed_lesion_scores_zero_and_penalty():
    ref = cube(cube(vol(), (2, 2, 2)), (30, 30, 30))
    pred = cube(vol(), (2, 2, 2))
    out = lesionwise_scores(pred, ref, SP)
    assert out == pytest.approx({"lesion_dice": 0.5, "lesion_hd95": 187.0, "n_lesions": 2, "n_fp": 0})


def test_false_positive_component():
    ref = cube(vol(), (2, 2, 2))
    pred = cube(cube(vol(), (2, 2, 2)), (30, 30, 30), size=2)
    out = lesionwise_scores(pred, ref, SP)
    assert out == pytest.approx({"lesion_dice": 0.5, "lesion_hd95": 187.0, "n_lesions": 1, "n_fp": 1})
    assert lesionwise_scores(pred, ref, SP, hd95_penalty=100.0)["lesion_hd95"] == pytest.approx(50.0)
    only_fp = lesionwise_scores(pred & ~ref, vol(), SP)
    assert only_fp == {"lesion_dice": 0.0, "lesion_hd95": 374.0, "n_lesions": 0, "n_fp": 1}


def test_two_predicted_components_merge_into_one_match():
    ref = cube(vol(), (10, 10, 10))
    pred = ref.copy()
    pred[12] = False                                 # two slabs of 50 voxels, one slice apart
    out = lesionwise_scores(pred, ref, SP)
    assert out["n_lesions"] == 1 and out["n_fp"] == 0
    assert out["lesion_dice"] == pytest.approx(200 / 225)
    assert out["lesion_hd95"] == pytest.approx(monai_hd95(pred, ref, SP))


def test_prediction_near_the_lesion_is_matched_far_one_is_a_false_positive():
    ref = cube(vol(), (10, 10, 10))                  # axis-0 extent 10..14
    near = cube(vol(), (17, 10, 10), size=2)         # 2 empty slices between: inside 3 dilations
    out = lesionwise_scores(near, ref, SP)
    assert out["n_fp"] == 0 and out["lesion_dice"] == 0.0
    assert out["lesion_hd95"] == pytest.approx(monai_hd95(near, ref, SP))
    far = cube(vol(), (19, 10, 10), size=2)          # 4 empty slices between: outside
    assert lesionwise_scores(far, ref, SP) == {"lesion_dice": 0.0, "lesion_hd95": 374.0, "n_lesions": 1,
                                               "n_fp": 1}
    assert lesionwise_scores(far, ref, SP, dilation_iterations=5)["n_fp"] == 0


def test_diagonal_reach_follows_the_26_connected_dilation():
    ref = cube(vol(), (10, 10, 10))                  # corner voxel (14, 14, 14)
    pred = vol()
    pred[17, 17, 17] = True                          # offset (3, 3, 3): reached in 3 26-connected steps
    assert lesionwise_scores(pred, ref, SP)["n_fp"] == 0   # (the BraTS code's 18-connected element would not)
    pred = vol()
    pred[18, 18, 18] = True                          # offset (4, 4, 4): beyond 3 dilations
    assert lesionwise_scores(pred, ref, SP)["n_fp"] == 1


def test_small_reference_lesions_are_dropped():
    ref = cube(cube(vol(), (2, 2, 2)), (30, 30, 30), size=2)   # 125 voxels + 8 voxels
    pred = ref.copy()
    out = lesionwise_scores(pred, ref, SP)
    assert out == {"lesion_dice": 1.0, "lesion_hd95": 0.0, "n_lesions": 1, "n_fp": 0}  # its match is no FP
    out = lesionwise_scores(cube(vol(), (2, 2, 2)), ref, SP)
    assert out == {"lesion_dice": 1.0, "lesion_hd95": 0.0, "n_lesions": 1, "n_fp": 0}
    fifty = vol()
    fifty[5:10, 5:10, 5:7] = True                   # exactly 50 voxels: dropped ("or fewer")
    assert lesionwise_scores(vol(), fifty, SP) == {"lesion_dice": 1.0, "lesion_hd95": 0.0, "n_lesions": 0,
                                                   "n_fp": 0}
    fifty[5, 5, 7] = True                           # 51 voxels: kept, missed
    assert lesionwise_scores(vol(), fifty, SP) == {"lesion_dice": 0.0, "lesion_hd95": 374.0, "n_lesions": 1,
                                                   "n_fp": 0}
    assert lesionwise_scores(vol(), fifty, SP, min_lesion_size=51)["n_lesions"] == 0


def test_nearby_reference_lesions_merge_by_dilation():
    ref = cube(cube(vol(), (10, 10, 10)), (17, 10, 10))        # two cubes, 2 empty slices apart
    pred = cube(vol(), (10, 10, 10))
    out = lesionwise_scores(pred, ref, SP)
    assert out["n_lesions"] == 1 and out["n_fp"] == 0
    assert out["lesion_dice"] == pytest.approx(250 / 375)
    separate = lesionwise_scores(pred, ref, SP, dilation_iterations=0)
    assert separate == pytest.approx({"lesion_dice": 0.5, "lesion_hd95": 187.0, "n_lesions": 2, "n_fp": 0})


def test_empty_and_invalid():
    assert lesionwise_scores(vol(), vol(), SP) == {"lesion_dice": 1.0, "lesion_hd95": 0.0, "n_lesions": 0,
                                                   "n_fp": 0}
    with pytest.raises(ValueError, match="shape"):
        lesionwise_scores(vol()[:-1], vol(), SP)
    with pytest.raises(ValueError, match=">= 0"):
        lesionwise_scores(vol(), vol(), SP, dilation_iterations=-1)


def _ellipsoid(rng, centre):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).astype(float)
    radii = rng.uniform(3.0, 7.0, 3)
    return (((grid - centre) / radii) ** 2).sum(-1) <= 1.0


@pytest.mark.parametrize("seed", range(4))
def test_single_lesion_agrees_with_monai_dice_and_hd95(seed):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(14, 26, 3)
    ref = _ellipsoid(rng, centre)
    pred = _ellipsoid(rng, centre + rng.normal(0, 1.5, 3))
    spacing = tuple(rng.uniform(0.5, 2.0, 3))
    out = lesionwise_scores(pred, ref, spacing)
    assert out["n_lesions"] == 1 and out["n_fp"] == 0
    t_pred, t_ref = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(ref)[None, None].float()
    assert out["lesion_dice"] == pytest.approx(float(compute_dice(t_pred, t_ref).reshape(-1)[0]), rel=1e-6)
    assert out["lesion_hd95"] == pytest.approx(monai_hd95(pred, ref, spacing), rel=1e-6)
