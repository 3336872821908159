"""Overlap metrics, regions, per-case metrics and the accumulator (metrics.overlap/regions/segmentation)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from metrics import (BRATS_SPEC, EMPTY_MASK_RULES, MetricSpec, SegmentationMetricAccumulator, binary_spec,
                     case_metrics, confusion_matrix, dice, precision_recall, region_mask)


def _box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# ---------------------------------------------------------------- Dice, precision, recall
def test_two_cubes_known_overlap():
    pred = _box((8, 8, 8), (0, 0, 0), (4, 4, 4))   # 64 voxels
    ref = _box((8, 8, 8), (2, 0, 0), (6, 4, 2))    # 32 voxels, overlap 2*4*2 = 16
    assert dice(pred, ref) == pytest.approx(2 * 16 / (64 + 32))
    prec, rec = precision_recall(pred, ref)
    assert prec == pytest.approx(16 / 64)
    assert rec == pytest.approx(16 / 32)
    assert dice(pred, pred) == 1.0


def test_empty_mask_rules():
    empty, full = np.zeros((3, 3), bool), np.ones((3, 3), bool)
    assert math.isnan(dice(empty, empty))
    assert dice(empty, full) == 0.0 and dice(full, empty) == 0.0
    p, r = precision_recall(empty, empty)
    assert math.isnan(p) and math.isnan(r)
    p, r = precision_recall(empty, full)            # missed lesion
    assert p == 0.0 and r == 0.0
    p, r = precision_recall(full, empty)            # hallucinated lesion
    assert p == 0.0 and math.isnan(r)
    assert set(EMPTY_MASK_RULES) == {"dice", "precision", "recall", "hd95"}


def test_dice_agrees_with_monai():
    rng = np.random.default_rng(0)
    metric = DiceMetric(include_background=True, reduction="none")
    for _ in range(5):
        p, r = rng.random((6, 7, 5)) > 0.6, rng.random((6, 7, 5)) > 0.5
        expected = metric(torch.from_numpy(p)[None, None].float(), torch.from_numpy(r)[None, None].float())
        assert dice(p, r) == pytest.approx(float(expected.item()), abs=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


# ---------------------------------------------------------------- confusion matrix
def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(1)
    pred, ref = rng.integers(0, 4, (5, 6, 7)), rng.integers(0, 4, (5, 6, 7))
    cm = confusion_matrix(pred, ref, 4)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, sk_confusion_matrix(ref.ravel(), pred.ravel(), labels=[0, 1, 2, 3]))
    cm_missing = confusion_matrix(np.zeros(4, int), np.zeros(4, int), 3)  # absent classes still get rows
    assert cm_missing.shape == (3, 3) and cm_missing[0, 0] == 4 and cm_missing.sum() == 4


@pytest.mark.parametrize("bad", [np.array([0, 4]), np.array([-1, 0])])
def test_confusion_matrix_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        confusion_matrix(bad, np.array([0, 1]), 4)


# ---------------------------------------------------------------- regions and specs
def test_brats_regions_from_label_map():
    labels = np.array([0, 1, 2, 3, 3, 2])
    np.testing.assert_array_equal(region_mask(labels, BRATS_SPEC.regions["wt"]), [0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(region_mask(labels, BRATS_SPEC.regions["tc"]), [0, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(region_mask(labels, BRATS_SPEC.regions["et"]), [0, 0, 0, 1, 1, 0])
    assert dict(BRATS_SPEC.classes) == {"ncr": 1, "ed": 2}
    with pytest.raises(ValueError, match="empty"):
        region_mask(labels, ())


def test_binary_spec_and_validation():
    spec = binary_spec("ich")
    assert dict(spec.regions) == {"ich": (1,)} and dict(spec.classes) == {} and spec.n_classes == 2
    with pytest.raises(ValueError, match=r"\[1, 2\)"):
        MetricSpec(name="bad", regions={"x": (2,)}, n_classes=2)


# ---------------------------------------------------------------- case metrics
def _brats_pair():
    ref = np.zeros((6, 6, 6), dtype=np.uint8)
    ref[1:5, 1:5, 1:5] = 2           # oedema shell
    ref[2:4, 2:4, 2:4] = 3           # enhancing core (8 voxels)
    ref[2, 2, 2] = 1                 # one necrotic voxel
    pred = ref.copy()
    pred[ref == 1] = 3               # NCR predicted as ET: WT and TC perfect, ET/NCR imperfect
    return pred, ref


def test_case_metrics_keys_and_values():
    pred, ref = _brats_pair()
    m = case_metrics(pred, ref, (1.0, 1.0, 2.0))
    expected = {f"{k}_{r}" for r in ("wt", "tc", "et") for k in ("dice", "hd95", "precision", "recall")}
    expected |= {f"{k}_{c}" for c in ("ncr", "ed") for k in ("dice", "precision", "recall")} | {"dice_mean"}
    assert set(m) == expected
    assert m["dice_wt"] == 1.0 and m["dice_tc"] == 1.0 and m["hd95_wt"] == 0.0
    assert m["dice_et"] == pytest.approx(2 * 7 / (8 + 7))
    assert m["precision_et"] == pytest.approx(7 / 8) and m["recall_et"] == 1.0
    assert m["dice_ncr"] == 0.0 and m["precision_ncr"] == 0.0 and m["recall_ncr"] == 0.0
    assert m["dice_ed"] == 1.0
    assert m["dice_mean"] == pytest.approx((1 + 1 + 14 / 15) / 3)
    assert set(case_metrics(pred, ref, 1.0, include_hd95=False)) == {k for k in expected if not k.startswith("hd95")}


def test_case_metrics_torch_input_nan_mean_and_shape_error():
    pred, ref = _brats_pair()
    from_torch = case_metrics(torch.from_numpy(pred).long(), torch.from_numpy(ref).long(), 1.0, include_hd95=False)
    assert from_torch == case_metrics(pred, ref, 1.0, include_hd95=False)
    empty = np.zeros((4, 4), dtype=np.int64)
    m = case_metrics(empty, empty, 1.0)
    assert math.isnan(m["dice_mean"]) and math.isnan(m["hd95_wt"])
    only_ed = np.full((4, 4), 2)                    # WT perfect, TC/ET both empty -> NaN, mean over WT only
    assert case_metrics(only_ed, only_ed, 1.0)["dice_mean"] == 1.0
    with pytest.raises(ValueError, match=r"\(4, 4\) and \(4, 5\)"):
        case_metrics(empty, np.zeros((4, 5), dtype=np.int64), 1.0)


# ---------------------------------------------------------------- accumulator
def test_accumulator_nanmean_counts_duplicates(caplog):
    spec = binary_spec("les")
    acc = SegmentationMetricAccumulator(spec, include_hd95=False)
    ref = np.array([[1, 1, 0, 0]])
    acc.update(np.array([[1, 0, 0, 0]]), ref, 1.0, "a")     # dice 2/3
    acc.update(np.zeros((1, 4), int), np.zeros((1, 4), int), 1.0, "b")  # dice NaN
    acc.update(ref, ref, 1.0, "c")                          # dice 1
    with caplog.at_level(logging.WARNING, logger="metrics.segmentation"):
        assert acc.update(np.zeros((1, 4), int), ref, 1.0, "a") is None  # padded repeat: ignored
    assert "'a'" in caplog.text
    rows = acc.per_case()
    assert [r["case_id"] for r in rows] == ["a", "b", "c"] and list(rows[0])[0] == "case_id"
    agg = acc.aggregate()
    assert agg["n_cases"] == 3
    assert agg["dice_les"] == pytest.approx((2 / 3 + 1) / 2) and agg["n_dice_les"] == 2
    assert agg["recall_les"] == pytest.approx((0.5 + 1) / 2) and agg["n_recall_les"] == 2
    np.testing.assert_array_equal(acc.confusion_matrix, [[2 + 4 + 2, 0], [1, 1 + 2]])
    acc.reset()
    assert acc.per_case() == [] and acc.confusion_matrix.sum() == 0 and acc.aggregate() == {"n_cases": 0}


# ---------------------------------------------------------------- one-pass region counts, crops, label masks
def _nan_equal(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.uint16])
def test_region_dice_equals_dice_of_region_masks_and_monai(dtype):
    from metrics.overlap import region_counts, region_dice

    rng = np.random.default_rng(5)
    ref = np.zeros((20, 22, 18), dtype)
    ref[4:15, 5:17, 3:14] = rng.integers(1, 4, (11, 12, 11))
    pred = np.where(rng.random(ref.shape) < 0.1, rng.integers(0, 4, ref.shape), ref).astype(dtype)
    got, counts = region_dice(pred, ref, BRATS_SPEC.regions), region_counts(pred, ref, BRATS_SPEC.regions)
    metric = DiceMetric(include_background=True, reduction="none")
    for name, members in BRATS_SPEC.regions.items():
        p, r = region_mask(pred, members), region_mask(ref, members)
        assert got[name] == dice(p, r)
        tp = int((p & r).sum())
        assert counts[name] == (tp, int(p.sum()) - tp, int(r.sum()) - tp)
        monai = metric(torch.from_numpy(p)[None, None].float(), torch.from_numpy(r)[None, None].float())
        assert np.float32(got[name]) == np.float32(monai.item())   # exactly, in MONAI's float32


@pytest.mark.parametrize("regions", [{"neg": (-1,), "pos": (2,)}, {"big": (300,), "small": (1,)},
                                     {"with_bg": (0, 1)}, {"bool": (1,)}])
def test_region_counts_unusual_labels_fall_back_to_masks(regions):
    from metrics.overlap import region_counts

    rng = np.random.default_rng(2)
    values = [-1, 0, 1, 2, 300] if "neg" in regions or "big" in regions else [0, 1]
    pred, ref = rng.choice(values, (6, 7, 5)), rng.choice(values, (6, 7, 5))
    if "bool" in regions:
        pred, ref = pred.astype(bool), ref.astype(bool)
    got = region_counts(pred, ref, regions)
    for name, members in regions.items():
        p, r = np.isin(pred, members), np.isin(ref, members)
        tp = int((p & r).sum())
        assert got[name] == (tp, int(p.sum()) - tp, int(r.sum()) - tp)


def test_region_dice_empty_maps_and_errors():
    from metrics.overlap import region_dice

    empty = np.zeros((5, 4, 3), np.uint8)
    assert all(math.isnan(v) for v in region_dice(empty, empty, BRATS_SPEC.regions).values())
    some = empty.copy()
    some[4, 3, 2] = 3                                   # in a corner: the crop must keep it
    got = region_dice(some, empty, BRATS_SPEC.regions)
    assert got == {"wt": 0.0, "tc": 0.0, "et": 0.0}
    assert _nan_equal(region_dice(some, some, {"ncr": (1,)})["ncr"], float("nan"))
    with pytest.raises(ValueError, match="same shape"):
        region_dice(empty, empty[:, :, :2], BRATS_SPEC.regions)
    with pytest.raises(ValueError, match="integer label map"):
        region_dice(empty.astype(float), empty, BRATS_SPEC.regions)


def test_foreground_box_and_label_mask():
    from metrics.crop import foreground_box, label_mask

    a = np.zeros((7, 8, 9), np.int64)
    assert foreground_box(a) is None and foreground_box(np.zeros((0, 3))) is None
    a[1, 2, 3], a[5, 0, 8] = -4, 2                      # negative labels count as foreground
    b = np.zeros((7, 8, 9), bool)
    b[6, 7, 0] = True
    assert foreground_box(a) == (slice(1, 6), slice(0, 3), slice(3, 9))
    assert foreground_box(a, b) == (slice(1, 7), slice(0, 8), slice(0, 9))
    assert foreground_box(np.array([0, 0, 1.5, 0])) == (slice(2, 3),)
    labels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for dtype in (np.uint8, np.int64, np.int8, np.uint16):
        x = labels.astype(dtype)
        for members in ([1, 2, 3], [3], [0, 7], [1, 9], [200], [1, 2, 3, 4, 5]):
            np.testing.assert_array_equal(label_mask(x[::2, 1::3], members), np.isin(x[::2, 1::3], members))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_case_metrics_equal_the_per_mask_definitions(seed: int) -> None:
    """case_metrics (one bincount + cropped HD95) gives exactly the values of the per-region mask functions."""
    from metrics.overlap import dice, precision_recall
    from metrics.regions import BRATS_SPEC, region_mask
    from metrics.segmentation import case_metrics
    from metrics.surface import hd95

    rng = np.random.default_rng(seed)
    ref = np.zeros((20, 18, 16), np.uint8)
    ref[4:14, 3:12, 2:10] = rng.integers(0, 4, (10, 9, 8))
    pred = np.where(rng.random(ref.shape) < 0.2, rng.integers(0, 4, ref.shape), ref).astype(np.uint8)
    if seed == 2:
        pred[pred == 3] = 0  # an empty ET prediction against a non-empty reference
    got = case_metrics(pred, ref, (1.0, 1.5, 2.0), image_shape=(30, 30, 30))
    for name, members in BRATS_SPEC.regions.items():
        p, r = region_mask(pred, members), region_mask(ref, members)
        assert got[f"dice_{name}"] == dice(p, r)
        assert got[f"hd95_{name}"] == hd95(p, r, (1.0, 1.5, 2.0), image_shape=(30, 30, 30))
        assert (got[f"precision_{name}"], got[f"recall_{name}"]) == pytest.approx(precision_recall(p, r), nan_ok=True)
    for name, label in BRATS_SPEC.classes.items():
        assert got[f"dice_{name}"] == dice(pred == label, ref == label)
