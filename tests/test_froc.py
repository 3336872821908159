"""FROC by the LUNA16 rules (metrics.froc): hand-computed curves, denominators, hit rules, and a literal
re-implementation of LUNA16's evaluateCAD/computeFROC loops on random case sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from lesion_helpers import random_cases
from metrics.detection import CaseBoxes, detection_metrics
from metrics.froc import (FROC_FP_RATES, FROC_KEYS, fast_roc, froc_at, froc_candidates, froc_curve, froc_metrics,
                          froc_values)
from metrics.lesions import hits

CUBE = [0, 0, 0, 10, 10, 10]
FAR = [50, 50, 50, 60, 60, 60]
OTHER = [20, 20, 20, 30, 30, 30]
L2 = [60, 0, 0, 70, 10, 10]


def case(preds, scores, gts, case_id="c"):
    return CaseBoxes(case_id, np.array(preds, dtype=np.float32), np.array(scores), np.array(gts, dtype=np.float32))


def _values(out):
    return [out[f"froc_fp{r:g}"] for r in FROC_FP_RATES]


def test_keys():
    assert FROC_KEYS == ("froc_fp0.125", "froc_fp0.25", "froc_fp0.5", "froc_fp1", "froc_fp2", "froc_fp4",
                         "froc_fp8", "froc_cpm")


def hand_cases():
    a = case([CUBE, [0, 0, 0, 10, 10, 8], FAR], [0.9, 0.35, 0.8], [CUBE, L2], "a")   # L2 never hit
    b = case([OTHER, [80, 80, 80, 90, 90, 90]], [0.6, 0.7], [OTHER], "b")
    c = case([[0, 0, 0, 5, 5, 5], [30, 30, 30, 35, 35, 35]], [0.5, 0.3], [], "c")     # no lesion: 2 FPs
    return [a, b, c]


def test_hand_computed_curve():
    # 3 scans, 3 lesions (1 never hit), candidates by score: L1 .9, FP .8, FP .7, L3 .6, FP .5, FP .3
    # (the .35 box hits L1: not a FP). FPs/scan = #FP above / 3, sensitivity = #lesions above / 3:
    # (0, 1/3) -> (2/3, 1/3) -> (2/3, 2/3) -> (4/3, 2/3), flat afterwards (tops out at 2/3).
    out = froc_metrics(hand_cases())
    np.testing.assert_allclose(_values(out), [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3], atol=1e-12)
    assert out["froc_cpm"] == pytest.approx(11 / 21)
    is_lesion, scores, n_lesions = froc_candidates(hand_cases())
    assert n_lesions == 3 and int(is_lesion.sum()) == 2 and int((~is_lesion).sum()) == 4
    np.testing.assert_allclose(np.sort(scores[is_lesion]), [0.6, 0.9], rtol=1e-6)
    fps, sens = froc_curve(hand_cases())
    assert fps.max() == pytest.approx(4 / 3) and sens.max() == pytest.approx(2 / 3)
    assert np.all(np.diff(fps) >= 0)


def test_prediction_hitting_a_lesion_is_never_a_false_positive():
    c = case([CUBE, [0, 0, 0, 10, 10, 9], [1, 1, 1, 10, 10, 10]], [0.5, 0.9, 0.7], [CUBE])
    is_lesion, scores, _ = froc_candidates([c])
    np.testing.assert_array_equal(is_lesion, [True])
    assert scores[0] == pytest.approx(0.9)        # the lesion takes the best hitting score
    fps, sens = froc_curve([c])
    assert np.all(fps == 0) and sens.max() == 1.0
    assert _values(froc_metrics([c])) == [1.0] * 7
    # a box hitting two lesions counts once for each
    both = case([[0, 0, 0, 20, 10, 10]], [0.8], [CUBE, [10, 0, 0, 20, 10, 10]])
    is_lesion, scores, n = froc_candidates([both])
    np.testing.assert_array_equal(is_lesion, [True, True])
    assert n == 2


def test_every_scan_counts_in_the_fp_denominator():
    # one scan: FP .9 .8 .7 then the lesion at .6 -> sensitivity jumps to 1 at 3 FPs/scan
    a = case([FAR, OTHER, L2, CUBE], [0.9, 0.8, 0.7, 0.6], [CUBE], "a")
    assert _values(froc_metrics([a])) == [0, 0, 0, 0, 0, 1, 1]
    # 4 more scans without lesions or predictions: the jump moves to 3/5 FPs/scan
    empty = [case([], [], [], f"e{i}") for i in range(4)]
    out = froc_metrics([a, *empty])
    assert _values(out) == [0, 0, 0, 1, 1, 1, 1] and out["froc_cpm"] == pytest.approx(4 / 7)
    # the same 4 scans each with a FP scored .95: 7 FPs over 5 scans, the jump at 7/5
    noisy = [case([FAR], [0.95], [], f"n{i}") for i in range(4)]
    out = froc_metrics([a, *noisy])
    assert _values(out) == [0, 0, 0, 0, 1, 1, 1] and out["froc_cpm"] == pytest.approx(3 / 7)


def test_centre_rule_and_iou_rule_differ():
    big = case([[-10, -10, -10, 20, 20, 20]], [0.9], [CUBE])   # IoU 1000/27000 < 0.1, centre inside
    assert _values(froc_metrics([big], rule="iou")) == [0.0] * 7
    assert _values(froc_metrics([big], rule="centre")) == [1.0] * 7
    shifted = case([[5, 0, 0, 15, 10, 10]], [0.9], [CUBE])    # IoU 1/3, centre x = 10 on the upper edge
    assert _values(froc_metrics([shifted], rule="iou")) == [1.0] * 7
    assert _values(froc_metrics([shifted], rule="centre")) == [0.0] * 7
    assert froc_metrics([shifted], iou_threshold=0.5)["froc_cpm"] == 0.0
    out = detection_metrics([big], rule="centre")
    assert out["froc_cpm"] == 1.0 and out["ap_10"] == 0.0   # AP always matches by IoU


def test_no_lesions_nan_and_no_predictions_zero():
    for cases in ([], [case([FAR], [0.9], [])], [case([], [], [])]):
        out = froc_metrics(cases)
        assert all(math.isnan(out[k]) for k in FROC_KEYS)
        fps, sens = froc_curve(cases)
        assert fps.size == 0 and sens.size == 0
    out = froc_metrics([case([], [], [CUBE]), case([], [], [OTHER])])
    assert all(out[k] == 0.0 for k in FROC_KEYS)
    out = froc_metrics([case([FAR], [0.9], [CUBE])])      # only a FP
    assert all(out[k] == 0.0 for k in FROC_KEYS)


def test_interpolation_uses_luna_grid():
    # a straight ramp from (0, 0) to (8, 1): the value at each rate is the nearest grid point's
    grid = np.linspace(0.125, 8, 10001)
    got = froc_at(np.array([0.0, 8.0]), np.array([0.0, 1.0]))
    expected = [grid[np.argmin(np.abs(grid - r))] / 8 for r in FROC_FP_RATES]
    np.testing.assert_allclose(got, expected, atol=1e-15)
    np.testing.assert_allclose(got, np.array(FROC_FP_RATES) / 8, atol=5e-5)


# ---- literal re-implementation of LUNA16's evaluateCAD + computeFROC (dict deletion, roc_curve) ----

def _luna(cases, rule):
    gt_list, prob_list, exclude = [], [], []
    for c in cases:
        candidates = {i: (c.pred_boxes[i:i + 1], float(c.pred_scores[i])) for i in range(len(c.pred_boxes))}
        remaining = dict(candidates)
        for g in range(len(c.gt_boxes)):
            matches = [s for key, (box, s) in candidates.items() if hits(box, c.gt_boxes[g:g + 1], rule=rule)[0, 0]]
            for key, (box, s) in candidates.items():
                if hits(box, c.gt_boxes[g:g + 1], rule=rule)[0, 0]:
                    remaining.pop(key, None)
            gt_list.append(1.0)
            prob_list.append(max(matches) if matches else -1e9)
            exclude.append(not matches)
        for _, s in remaining.values():
            gt_list.append(0.0)
            prob_list.append(s)
            exclude.append(False)
    local_gt = [g for g, e in zip(gt_list, exclude) if not e]
    local_prob = [p for p, e in zip(prob_list, exclude) if not e]
    fpr, tpr, _ = roc_curve(local_gt, local_prob)
    fps = fpr * (len(local_prob) - sum(local_gt)) / len(cases)
    sens = tpr * sum(local_gt) / sum(gt_list)
    grid = np.linspace(0.125, 8, num=10001)
    sens_grid = np.interp(grid, fps, sens)
    return [sens_grid[np.argmin(np.abs(grid - r))] for r in FROC_FP_RATES]


@pytest.mark.parametrize("rule", ["iou", "centre"])
def test_random_sets_agree_with_literal_luna(rule):
    rng = np.random.default_rng(16)
    compared = 0
    for _ in range(20):
        cases = random_cases(rng, max_cases=5, hit_share=0.7, jitter=2.0)
        is_lesion, _, n_lesions = froc_candidates(cases, rule=rule)
        if n_lesions == 0 or is_lesion.all() or not is_lesion.any():
            continue   # LUNA's own edge cases (tested by hand above)
        np.testing.assert_allclose(_values(froc_metrics(cases, rule=rule)), _luna(cases, rule), atol=1e-12)
        compared += 1
    assert compared >= 10


def test_fast_roc_equals_sklearn_bit_for_bit_with_ties():
    rng = np.random.default_rng(5)
    for size in (2, 3, 5, 40, 300):
        for levels in (3, 10, 0):  # few distinct scores (many ties), some, all distinct
            is_lesion = rng.random(size) < 0.4
            is_lesion[:2] = [True, False]  # both classes present (the only inputs fast_roc takes)
            scores = rng.integers(0, levels, size) / levels if levels else rng.random(size)
            fpr, tpr, _ = roc_curve(is_lesion.astype(int), scores)
            ours = fast_roc(is_lesion, scores)
            np.testing.assert_array_equal(ours[0], fpr)
            np.testing.assert_array_equal(ours[1], tpr)


@pytest.mark.parametrize("rule", ["iou", "centre"])
def test_froc_values_of_pooled_candidates_equal_froc_metrics(rule):
    """Per-scan candidates concatenated (a scan drawn twice counted twice) give froc_metrics of the scan list."""
    rng = np.random.default_rng(8)
    for _ in range(25):
        cases = random_cases(rng, max_cases=5, hit_share=0.6, jitter=2.0)
        cases.append(case([FAR], [0.5], [], "fp_only"))
        cases.append(case([], [], [], "empty"))
        drawn = [cases[i] for i in rng.integers(0, len(cases), len(cases))]
        own = [froc_candidates([c], rule=rule) for c in drawn]
        got = froc_values(np.concatenate([o[0] for o in own]), np.concatenate([o[1] for o in own]),
                          sum(o[2] for o in own), len(drawn))
        want = froc_metrics(drawn, rule=rule)
        np.testing.assert_allclose(got, [want[k] for k in FROC_KEYS], atol=1e-12, rtol=0)
    assert np.isnan(froc_values(np.zeros(0, bool), np.zeros(0), 0, 3)).all()
