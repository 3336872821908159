"""HD95 in mm (metrics.surface): hand-computed cases, empty-mask rules, agreement with MONAI and scipy."""

from __future__ import annotations

import math

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
