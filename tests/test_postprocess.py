"""nnU-Net's largest-component post-processing (``metrics.postprocess``): the component step (26-connected, removed
voxels become background, other labels untouched, ties kept) and the decision on validation predictions (a spurious
far-away blob makes the foreground step win; a step that costs another label is refused; region steps follow)."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.postprocess import (ComponentStep, apply_rule, candidate_steps, choose_postprocessing,
                                 keep_largest_component, mean_dice)
from metrics.regions import BRATS_SPEC, binary_spec, multiclass_spec

SHAPE = (24, 24, 24)


def cube(labels: np.ndarray, corner: tuple[int, int, int], size: int, value: int) -> np.ndarray:
    x, y, z = corner
    labels[x:x + size, y:y + size, z:z + size] = value
    return labels


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return 2 * float((pred & ref).sum()) / float(pred.sum() + ref.sum())


def test_the_component_step_keeps_the_largest_26_connected_component_of_the_group() -> None:
    labels = cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 4, 1)        # 64 voxels of label 1
    labels[6, 6, 6] = 2                                               # corner-touching: same 26-component
    cube(labels, (15, 15, 15), 2, 2)                                  # a far blob of label 2 (8 voxels)
    cube(labels, (15, 2, 2), 3, 3)                                    # a far blob of label 3, outside the group
    out = keep_largest_component(labels, (1, 2))
    assert out[6, 6, 6] == 2 and (out[2:6, 2:6, 2:6] == 1).all()     # diagonal neighbour kept: 26-connectivity
    assert (out[15:17, 15:17, 15:17] == 0).all()                      # the far label-2 blob became background
    assert (out[15:18, 2:5, 2:5] == 3).all()                          # labels outside the group untouched
    assert (labels[15:17, 15:17, 15:17] == 2).all()                   # the input is not modified
    tie = cube(cube(np.zeros(SHAPE, np.uint8), (1, 1, 1), 3, 1), (10, 10, 10), 3, 1)
    np.testing.assert_array_equal(keep_largest_component(tie, (1,)), tie)  # equal largest components: both kept


def test_candidate_steps_are_the_foreground_then_each_region_when_there_are_several() -> None:
    assert [s.name for s in candidate_steps(binary_spec("ich"))] == ["foreground"]
    steps = candidate_steps(BRATS_SPEC)
    assert [(s.name, s.labels) for s in steps] == [("foreground", (1, 2, 3)), ("wt", (1, 2, 3)), ("tc", (1, 3)),
                                                   ("et", (3,))]


def test_a_spurious_far_away_blob_makes_the_foreground_step_win() -> None:
    spec = binary_spec("ich")
    pairs = []
    for shift in (0, 3):
        ref = cube(np.zeros(SHAPE, np.uint8), (2 + shift, 2, 2), 6, 1)
        pred = cube(cube(np.zeros(SHAPE, np.uint8), (3 + shift, 2, 2), 6, 1), (18, 18, 18), 3, 1)
        pairs.append((pred, ref))
    decision = choose_postprocessing(pairs, spec)
    hand_before = np.mean([dice(p > 0, r > 0) for p, r in pairs])
    hand_after = np.mean([dice(keep_largest_component(p, (1,)) > 0, r > 0) for p, r in pairs])
    assert hand_after > hand_before
    assert decision.label == "foreground" and [s.name for s in decision.rule] == ["foreground"]
    assert decision.dice_before["dice_ich"] == pytest.approx(hand_before)
    assert decision.dice_after["dice_ich"] == pytest.approx(hand_after)
    assert decision.tried[0]["kept"] and decision.n_cases == 2
    for pred, ref in pairs:  # the rule applied: only the blob is gone
        np.testing.assert_array_equal(apply_rule(pred, decision.rule), cube(np.zeros(SHAPE, np.uint8),
                                                                            tuple(np.argwhere(pred)[0]), 6, 1))


def test_a_prediction_that_only_loses_by_the_step_keeps_no_rule() -> None:
    ref = cube(cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 6, 1), (16, 16, 16), 4, 1)  # two true lesions
    decision = choose_postprocessing([(ref.copy(), ref)], binary_spec("ich"))
    assert decision.rule == [] and decision.label == "none"
    assert decision.dice_after == decision.dice_before and decision.dice_before["dice_ich"] == 1.0


def test_a_step_that_raises_the_mean_but_costs_a_label_is_refused_and_region_steps_follow() -> None:
    spec = multiclass_spec(("a", "b"), [("ab", (1, 2))])  # dice_mean over region ab only
    ref = cube(cube(np.zeros(SHAPE, np.uint8), (1, 1, 1), 8, 1), (18, 1, 1), 2, 2)  # big a, small separate b
    pred = cube(ref.copy(), (1, 16, 16), 4, 1)                                     # plus a spurious a blob
    decision = choose_postprocessing([(pred, ref)], spec)
    foreground = decision.tried[0]
    assert foreground["step"] == "foreground" and not foreground["kept"]
    assert foreground["dice_after"]["dice_mean"] > foreground["dice_before"]["dice_mean"]  # ab rises ...
    assert foreground["worsened"] == ["dice_b"]                                            # ... but b is lost
    assert [s.name for s in decision.rule] == ["a"]  # label a's own step removes the blob and costs nothing
    np.testing.assert_array_equal(apply_rule(pred, decision.rule), ref)
    assert decision.dice_after == mean_dice([(ref, ref)], spec)


def test_apply_rule_without_steps_is_a_copy() -> None:
    labels = cube(np.zeros(SHAPE, np.uint8), (1, 1, 1), 2, 1)
    out = apply_rule(labels, [])
    np.testing.assert_array_equal(out, labels)
    assert out is not labels
    assert ComponentStep("x", (1,)) == ComponentStep("x", (1,))


def test_the_component_step_agrees_with_monais_keep_largest_connected_component() -> None:
    pytest.importorskip("skimage")  # MONAI labels components with scikit-image
    from monai.transforms import KeepLargestConnectedComponent

    rng = np.random.default_rng(0)
    labels = (rng.random(SHAPE) > 0.7).astype(np.uint8) * rng.integers(1, 4, SHAPE).astype(np.uint8)
    monai = KeepLargestConnectedComponent(applied_labels=[1, 2], is_onehot=False, independent=False)
    np.testing.assert_array_equal(keep_largest_component(labels, (1, 2)), np.asarray(monai(labels[None]))[0])
