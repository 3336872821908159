"""LUNA16's radius rule in the lesion metrics (metrics.lesions, froc, detection, lesion_bootstrap) and LUNA16's
submission-CSV evaluation (metrics.luna_submission): hand-made cases with hand-computed values, a literal port of
noduleCADEvaluationLIDC.py's loops on random submissions, the boxes table round trip, and the IoU-0.1 boundary of
the box rule."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data.box_utils import box_iou as monai_box_iou
from scipy import ndimage
from sklearn.metrics import roc_curve

from metrics.detection import coco_metrics, detection_metrics, lesion_counts, matching_results
from metrics.froc import FROC_FP_RATES, FROC_KEYS, froc_candidates, froc_metrics
from metrics.lesion_bootstrap import BOX_COLUMNS, BOX_KINDS, ScanSet, box_rows, scan_bootstrap_ci, scans_from_rows
from metrics.lesions import (CaseBoxes, HIT_RULES, box_centres, box_iou, boxes_to_world, case_hits, case_ignored,
                             hits, label_components, radius_hits, scored_boxes, scored_components,
                             sphere_diameter_mm, voxel_to_world)
from metrics.luna_submission import (LUNA_COUNT_KEYS, cap_marks, luna_cases, luna_froc, read_annotations,
                                     read_candidates, read_series)
from metrics.statistics import bootstrap_scans_ci


def _values(out: dict) -> list[float]:
    return [out[f"froc_fp{r:g}"] for r in FROC_FP_RATES]


def radius_case(case_id: str, centres, scores, nodules=(), excluded=()) -> CaseBoxes:
    """A case given in world mm only: marks (x, y, z) with scores, nodules and excluded findings (x, y, z, d)."""
    pts = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    nod = np.asarray(nodules, dtype=np.float64).reshape(-1, 4)
    exc = np.asarray(excluded, dtype=np.float64).reshape(-1, 4)
    return CaseBoxes(case_id, np.hstack([pts, pts]), scores, np.zeros((0, 6)), pred_centres=pts,
                     gt_centres=nod[:, :3], gt_diameters=nod[:, 3], excluded_centres=exc[:, :3],
                     excluded_diameters=exc[:, 3])


# ---- the radius rule ----

def test_radius_hit_is_strict_and_negative_diameters_count_as_10_mm() -> None:
    assert HIT_RULES == ("iou", "centre", "radius")
    points = [[4.999, 0, 0], [5, 0, 0], [3, 4, 0], [0, 0, -4.9]]   # distances 4.999, 5, 5, 4.9 from the centre
    np.testing.assert_array_equal(radius_hits(points, [[0, 0, 0]], [10.0])[:, 0], [True, False, False, True])
    # diameter -1 is 10 mm (radius 5), not 0.5 mm
    np.testing.assert_array_equal(radius_hits(points, [[0, 0, 0]], [-1.0])[:, 0], [True, False, False, True])
    np.testing.assert_array_equal(radius_hits([[0.3, 0, 0]], [[0, 0, 0]], [0.5]), [[False]])
    case = radius_case("s", points, [0.9, 0.8, 0.7, 0.6], nodules=[[0, 0, 0, 10.0]])
    np.testing.assert_array_equal(case_hits(case, rule="radius")[:, 0], [True, False, False, True])
    assert radius_hits(np.zeros((0, 3)), [[0, 0, 0]], [1.0]).shape == (0, 1)


def test_candidate_hitting_two_nodules_lends_its_score_to_both() -> None:
    case = radius_case("s", [[3, 0, 0], [50, 0, 0]], [0.7, 0.9], nodules=[[0, 0, 0, 10], [6, 0, 0, 10]])
    is_lesion, scores, n = froc_candidates([case], rule="radius")
    assert n == 2
    np.testing.assert_array_equal(is_lesion, [True, True, False])
    np.testing.assert_allclose(scores, [0.7, 0.7, 0.9], rtol=1e-7)


def test_excluded_findings_ignore_marks_hitting_no_nodule() -> None:
    case = radius_case("s", [[0, 0, 0], [50, 51, 50], [3, 0, 0], [80, 80, 80], [52, 50, 50]],
                       [0.9, 0.8, 0.7, 0.3, 0.95],
                       nodules=[[0, 0, 0, 10]], excluded=[[50, 50, 50, -1], [2, 0, 0, 4]])
    # mark 0 hits the nodule (and an excluded finding): a hit; marks 1 and 4 lie only on an excluded finding
    np.testing.assert_array_equal(case_ignored(case, rule="radius"), [False, True, False, False, True])
    np.testing.assert_array_equal(case_ignored(case, rule="iou"), [False] * 5)
    is_lesion, scores, n = froc_candidates([case], rule="radius")
    np.testing.assert_array_equal(is_lesion, [True, False])   # the nodule at .9, the mark at (80, 80, 80)
    np.testing.assert_allclose(scores, [0.9, 0.3], rtol=1e-7)
    assert lesion_counts(case, rule="radius") == {"lesions": 1, "lesions_found": 1, "lesions_missed": 0,
                                                  "fp_components": 0}
    assert lesion_counts(case, rule="radius", score_threshold=0.2)["fp_components"] == 1
    moved = radius_case("s", case.pred_centres, case.pred_scores, nodules=[[0, 0, 0, 10]])  # no excluded finding
    assert lesion_counts(moved, rule="radius", score_threshold=0.2)["fp_components"] == 3


def test_lesion_counts_under_radius_use_the_world_references_not_the_boxes() -> None:
    gt_boxes = [[0, 0, 0, 10, 10, 10]]                               # one box; two radius references
    case = CaseBoxes("c", [[0, 0, 0, 10, 10, 10], [40, 40, 40, 44, 44, 44], [60, 0, 0, 62, 2, 2]], [0.9, 0.8, 0.6],
                     gt_boxes, pred_centres=[[1, 1, 1], [30, 30, 30], [61, 1, 1]],
                     gt_centres=[[0, 0, 0], [100, 100, 100]], gt_diameters=[6, 8],
                     excluded_centres=[[30, 30, 31]], excluded_diameters=[-1])
    assert lesion_counts(case, rule="radius") == {"lesions": 2, "lesions_found": 1, "lesions_missed": 1,
                                                  "fp_components": 1}
    assert lesion_counts(case, rule="iou") == {"lesions": 1, "lesions_found": 1, "lesions_missed": 0,
                                               "fp_components": 2}
    out = detection_metrics([case], rule="radius")
    assert out["ap_10"] == coco_metrics([case])["ap_10"]                           # AP: IoU on the boxes
    assert out["froc_cpm"] == froc_metrics([case], rule="radius")["froc_cpm"]


def test_radius_rule_without_centres_is_refused() -> None:
    boxes_only = CaseBoxes("b", [[0, 0, 0, 10, 10, 10]], [0.9], [[0, 0, 0, 10, 10, 10]])
    for call in (lambda: froc_metrics([boxes_only], rule="radius"), lambda: lesion_counts(boxes_only, rule="radius"),
                 lambda: case_hits(boxes_only, rule="radius")):
        with pytest.raises(ValueError, match="'b'.*needs gt_centres"):
            call()
    no_pred_centres = CaseBoxes("p", [[0, 0, 0, 10, 10, 10]], [0.9], [], gt_centres=[[0, 0, 0]], gt_diameters=[5])
    with pytest.raises(ValueError, match="'p'.*needs pred_centres"):
        froc_metrics([no_pred_centres], rule="radius")
    empty = CaseBoxes("e", [], [], [], gt_centres=[[0, 0, 0]], gt_diameters=[5])   # no predictions: no centres needed
    assert froc_metrics([empty], rule="radius")["froc_cpm"] == 0.0
    with pytest.raises(ValueError, match="not boxes"):
        hits(np.zeros((1, 6)), np.zeros((1, 6)), rule="radius")
    with pytest.raises(ValueError, match="come together"):
        CaseBoxes("x", [], [], [], gt_centres=[[0, 0, 0]])
    with pytest.raises(ValueError, match="pred_centres has 2 rows, expected 1"):
        CaseBoxes("x", [[0, 0, 0, 1, 1, 1]], [0.5], [], pred_centres=[[0, 0, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="gt_diameters must be 1 finite"):
        CaseBoxes("x", [], [], [], gt_centres=[[0, 0, 0]], gt_diameters=[np.nan])


# ---- voxel and world coordinates, components ----

def test_box_centres_and_voxel_to_world_on_a_rotated_affine() -> None:
    np.testing.assert_array_equal(box_centres([[10, 20, 30, 11, 21, 31]]), [[10, 20, 30]])  # one voxel: its index
    boxes = np.array([[2, 4, 6, 5, 9, 7]], dtype=np.float32)     # voxels 2..4, 4..8, 6: centre (3, 6, 6)
    np.testing.assert_array_equal(box_centres(boxes), [[3, 6, 6]])
    # axes 0 and 1 rotated by 90 degrees, spacing 2 / 1.5 / 3 mm, origin (10, -5, 7)
    affine = np.array([[0, -2, 0, 10], [1.5, 0, 0, -5], [0, 0, 3, 7], [0, 0, 0, 1]], dtype=np.float64)
    # by hand: x = -2 * 6 + 10 = -2, y = 1.5 * 3 - 5 = -0.5, z = 3 * 6 + 7 = 25
    np.testing.assert_allclose(voxel_to_world(box_centres(boxes), affine), [[-2.0, -0.5, 25.0]], atol=1e-12)
    world = boxes_to_world(boxes, affine)                         # the world box's centre is the same point
    np.testing.assert_allclose((world[:, :3] + world[:, 3:]) / 2, [[-2.0, -0.5, 25.0]], atol=1e-12)
    c, s = np.cos(np.pi / 5), np.sin(np.pi / 5)                   # an oblique rotation
    oblique = np.array([[c, -s, 0, 3], [s * 0.5, c * 0.5, 0, 1], [0, 0, 2.5, -4], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    lo = rng.integers(0, 50, (6, 3))
    many = np.hstack([lo, lo + rng.integers(1, 9, (6, 3))]).astype(np.float32)
    world = boxes_to_world(many, oblique)
    np.testing.assert_allclose(voxel_to_world(box_centres(many), oblique), (world[:, :3] + world[:, 3:]) / 2,
                               atol=1e-9)
    assert voxel_to_world(np.zeros((0, 3)), oblique).shape == (0, 3)
    with pytest.raises(ValueError, match="4x4"):
        voxel_to_world([[0, 0, 0]], np.eye(3))


@pytest.mark.parametrize("seed", range(4))
def test_scored_components_centroids_equal_scipy_center_of_mass(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = np.zeros((30, 26, 22), dtype=bool)
    mask[3:25, 5:20, 2:18] = rng.random((22, 15, 16)) > 0.88
    prob = rng.random(mask.shape).astype(np.float32)
    for min_size in (1, 3):
        boxes, scores, centroids = scored_components(mask, prob, min_size=min_size)
        labels, n = label_components(mask, min_size=min_size)
        assert n > 3 and centroids.shape == (n, 3) and centroids.dtype == np.float64
        want = np.asarray(ndimage.center_of_mass(labels > 0, labels, np.arange(1, n + 1)))
        order = np.argsort(-np.asarray(ndimage.maximum(prob, labels, np.arange(1, n + 1)), np.float32), kind="stable")
        np.testing.assert_allclose(centroids, want[order], rtol=0, atol=1e-12)
        assert np.all((centroids >= boxes[:, :3]) & (centroids <= boxes[:, 3:] - 1))  # each inside its own box
        old_boxes, old_scores = scored_boxes(mask, prob, min_size=min_size)
        np.testing.assert_array_equal(old_boxes, boxes)
        np.testing.assert_array_equal(old_scores, scores)
    empty = scored_components(np.zeros((4, 4, 4), bool))
    assert [a.shape for a in empty] == [(0, 6), (0,), (0, 3)]


def test_sphere_diameter_of_a_component() -> None:
    assert sphere_diameter_mm(1, (1, 1, 1)) == pytest.approx((6 / np.pi) ** (1 / 3), rel=1e-15)
    assert sphere_diameter_mm(3, (2, 2, 2)) == pytest.approx(2 * (18 / np.pi) ** (1 / 3), rel=1e-15)
    volume = np.pi / 6 * 1000                                       # the sphere of diameter 10 mm
    assert sphere_diameter_mm(1, (volume, 1, 1)) == pytest.approx(10.0, rel=1e-14)
    assert sphere_diameter_mm(0, (1, 1, 1)) == 0.0
    with pytest.raises(ValueError):
        sphere_diameter_mm(5, (1, 0, 1))


# ---- the IoU box rule at its threshold ----

def test_iou_exactly_one_tenth_is_a_hit_as_in_monai_matching() -> None:
    gt = np.array([[0, 0, 0, 10, 10, 10]], dtype=np.float32)
    pred = np.array([[0, 0, 0, 10, 10, 1]], dtype=np.float32)     # 100 / 1000 voxels
    theirs = monai_box_iou(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    assert theirs[0, 0] == np.float32(0.1) and box_iou(pred, gt)[0, 0] == np.float32(0.1)
    assert hits(pred, gt, iou_threshold=0.1)[0, 0]
    case = CaseBoxes("c", pred, [0.9], gt)
    assert _values(froc_metrics([case])) == [1.0] * 7
    assert lesion_counts(case) == {"lesions": 1, "lesions_found": 1, "lesions_missed": 0, "fp_components": 0}
    matched = matching_results([case], max_detections=100)[0][0]
    assert matched["dtMatches"][0, 0] and matched["gtMatches"][0, 0]   # threshold 0.10 (row 0): matched too
    assert not matched["dtMatches"][1, 0]                              # 0.15: not
    assert coco_metrics([case])["ap_10"] == pytest.approx(1.0)


# ---- LUNA16 CSV files ----

def _write(path: Path, header: list[str] | None, rows: list) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def _luna_files(tmp_path: Path, candidates, nodules, excluded, series) -> tuple[Path, Path, Path, Path]:
    return (_write(tmp_path / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "probability"],
                   [[u, repr(x), repr(y), repr(z), repr(p)] for u, x, y, z, p in candidates]),
            _write(tmp_path / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
                   [[u, x, y, z, d] for u, x, y, z, d in nodules]),
            _write(tmp_path / "excluded.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "note"],
                   [[u, x, y, z, d, "extra column"] for u, x, y, z, d in excluded]),
            _write(tmp_path / "seriesuids.csv", None, [[s] for s in series]))


HAND_CANDIDATES = [("s1", 4.999, 0.0, 0.0, 0.9),     # hits A (distance 4.999 < 5)
                   ("s1", 3.0, 4.0, 0.0, 0.8),       # distance to A exactly 5 = its radius: a false positive
                   ("s1", 104.0, 0.0, 0.0, 0.6),     # hits B (diameter -1 counts as 10 mm)
                   ("s1", 50.0, 52.0, 50.0, 0.95),   # on the excluded finding E: ignored
                   ("s1", 200.0, 200.0, 200.0, 0.4),
                   ("s2", 0.0, 0.0, 0.0, 0.85),      # s2: no nodule, false positives only
                   ("s2", 10.0, 10.0, 10.0, 0.3),
                   ("s9", 0.0, 0.0, 0.0, 0.99)]      # series not listed: ignored
HAND_NODULES = [("s1", 0, 0, 0, 10), ("s1", 100, 0, 0, -1), ("s3", 0, 0, 0, 6), ("s9", 1, 1, 1, 5)]
HAND_EXCLUDED = [("s1", 50, 50, 50, -1)]


def test_luna_froc_of_a_hand_made_submission(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """s1: nodules A (d 10), B (d -1), excluded finding E; s2: no nodule; s3: a nodule, no candidate.
    Candidates by score: A .9, FP .85, FP .8, B .6, FP .4, FP .3 (E's .95 ignored): over 3 scans the curve is
    (0, 1/3) -> (2/3, 1/3) -> (2/3, 2/3) -> (4/3, 2/3): 1/3 below 2/3 FPs/scan, 2/3 from there."""
    with caplog.at_level(logging.WARNING):
        out = luna_froc(*_luna_files(tmp_path, HAND_CANDIDATES, HAND_NODULES, HAND_EXCLUDED, ["s1", "s2", "s3"]))
    assert "1 candidates of 1 series not in the series list ignored" in caplog.text
    np.testing.assert_allclose(_values(out), [1 / 3] * 3 + [2 / 3] * 4, rtol=0, atol=1e-12)
    assert out["froc_cpm"] == pytest.approx(11 / 21, abs=1e-12)
    assert {k: out[k] for k in LUNA_COUNT_KEYS} == dict(n_series=3, n_nodules=3, n_candidates=7, nodules_found=2,
                                                        ignored_candidates=1)
    assert list(out) == [*FROC_KEYS, *LUNA_COUNT_KEYS]
    # two more listed series without nodules or candidates: 5 scans, the second nodule now at 2/5 FPs/scan
    more = luna_froc(*_luna_files(tmp_path, HAND_CANDIDATES, HAND_NODULES, HAND_EXCLUDED,
                                  ["s1", "s2", "s3", "s4", "s5"]))
    np.testing.assert_allclose(_values(more), [1 / 3] * 2 + [2 / 3] * 5, rtol=0, atol=1e-12)
    assert more["n_series"] == 5 and more["n_candidates"] == 7
    # the ignored mark is neither a TP nor a FP: removing it changes nothing; without E it is the top FP
    without = luna_froc(*_luna_files(tmp_path, [c for c in HAND_CANDIDATES if c[4] != 0.95], HAND_NODULES,
                                     HAND_EXCLUDED, ["s1", "s2", "s3"]))
    assert _values(without) == _values(out) and without["ignored_candidates"] == 0
    no_e = luna_froc(*_luna_files(tmp_path, HAND_CANDIDATES, HAND_NODULES, [], ["s1", "s2", "s3"]))
    np.testing.assert_allclose(_values(no_e), [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3], rtol=0, atol=1e-12)
    assert no_e["ignored_candidates"] == 0


def test_csv_round_trip_equals_froc_metrics_on_the_same_cases(tmp_path: Path) -> None:
    series = ["s1", "s2", "s3"]
    candidates = read_candidates(_luna_files(tmp_path, HAND_CANDIDATES, HAND_NODULES, HAND_EXCLUDED, series)[0])
    cases = luna_cases(candidates, read_annotations(tmp_path / "annotations.csv"),
                       read_annotations(tmp_path / "excluded.csv"), series)
    by_hand = [radius_case("s1", [c[1:4] for c in HAND_CANDIDATES[:5]], [c[4] for c in HAND_CANDIDATES[:5]],
                           nodules=[[0, 0, 0, 10], [100, 0, 0, -1]], excluded=[[50, 50, 50, -1]]),
               radius_case("s2", [c[1:4] for c in HAND_CANDIDATES[5:7]], [0.85, 0.3]),
               radius_case("s3", [], [], nodules=[[0, 0, 0, 6]])]
    for got, want in zip(cases, by_hand):
        assert got.case_id == want.case_id
        for field in ("pred_boxes", "pred_scores", "pred_centres", "gt_centres", "gt_diameters", "excluded_centres",
                      "excluded_diameters"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    out = luna_froc(tmp_path / "candidates.csv", tmp_path / "annotations.csv", tmp_path / "excluded.csv",
                    tmp_path / "seriesuids.csv")
    want = froc_metrics(by_hand, rule="radius")
    assert all(abs(out[k] - want[k]) <= 1e-12 for k in FROC_KEYS)


def test_the_100_mark_cap(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    probs = rng.permutation(101) / 1000 + 0.1                     # 101 distinct: the lowest one is the threshold
    marks = [(float(i), 0.0, 0.0, float(p)) for i, p in enumerate(probs)]
    kept = cap_marks(marks)
    assert len(kept) == 100 and kept == [m for m in marks if m[3] != probs.min()]   # file order
    hundred = marks[:100]
    assert cap_marks(hundred) == hundred
    # ties at the threshold: 98 distinct highs, then 3 marks at 0.05 -> the 101st highest is 0.05: 98 kept
    tied = [(0.0, 0.0, 0.0, 0.05)] + [(float(i), 0.0, 0.0, 0.5 + i / 1000) for i in range(98)] + \
        [(1.0, 1.0, 1.0, 0.05)] * 2 + [(2.0, 2.0, 2.0, 0.01)]
    assert len(tied) == 102 and cap_marks(tied) == tied[1:99]
    assert cap_marks([(0.0, 0.0, 0.0, 0.5)] * 101) == []          # all tied: none strictly above
    path = _write(tmp_path / "c.csv", ["seriesuid", "coordX", "coordY", "coordZ", "probability"],
                  [["a", *m[:3], repr(m[3])] for m in marks] + [["b", *m[:3], m[3]] for m in tied])
    read = read_candidates(path)
    assert read["a"] == kept and read["b"] == tied[1:99]


def test_probabilities_distinct_only_in_float64_keep_their_order(tmp_path: Path) -> None:
    """.5 + 1e-12 and .5 are one float32: scored by ranks instead, the TP stays above the FP as in the script."""
    files = _luna_files(tmp_path, [("s", 0.0, 0.0, 0.0, 0.5 + 1e-12), ("s", 50.0, 0.0, 0.0, 0.5)],
                        [("s", 0, 0, 0, 10)], [], ["s"])
    assert _values(luna_froc(*files)) == [1.0] * 7                # a tie would give 0.125, 0.25, ... at the start


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path / "no_prob.csv", ["seriesuid", "coordX", "coordY", "coordZ"], [["a", 1, 2, 3]])
    with pytest.raises(ValueError, match=r"no_prob\.csv: missing column\(s\) \['probability'\]"):
        read_candidates(bad)
    bad = _write(tmp_path / "text.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
                 [["a", 1, 2, 3, 4], ["a", 1, "two", 3, 4]])
    with pytest.raises(ValueError, match=r"text\.csv, line 3: coordY 'two' is not a number"):
        read_annotations(bad)
    with pytest.raises(ValueError, match=r"empty\.csv: the series list is empty"):
        read_series(_write(tmp_path / "empty.csv", None, []))
    with pytest.raises(ValueError, match="no header row"):
        read_series(_write(tmp_path / "headed.csv", ["seriesuid"], [["a"]]))
    assert read_series(_write(tmp_path / "ok.csv", None, [["a"], [], ["b", "x"]])) == ["a", "b"]


# ---- literal port of noduleCADEvaluationLIDC.py (evaluateCAD + computeFROC) on random submissions ----

def _script(cand_csv: Path, ann_csv: Path, exc_csv: Path, series_csv: Path) -> tuple[list[float], dict]:
    read = lambda p: list(csv.reader(open(p)))  # noqa: E731
    series = [line[0] for line in read(series_csv)]
    ann, exc, res = read(ann_csv), read(exc_csv), read(cand_csv)
    all_nodules = {}
    for uid in series:
        nodules = [("Included", *map(float, a[1:5])) for a in ann[1:] if a[0] == uid]
        nodules += [("Excluded", *map(float, a[1:5])) for a in exc[1:] if a[0] == uid]
        all_nodules[uid] = nodules
    gt_list, prob_list, exclude, ignored, total_cands = [], [], [], 0, 0
    for uid in series:
        nodules, i = {}, 0
        for r in res[1:]:
            if r[0] == uid:
                nodules[i] = (float(r[1]), float(r[2]), float(r[3]), r[4])
                i += 1
        if len(nodules) > 100:
            probs = sorted((float(n[3]) for n in nodules.values()), reverse=True)
            threshold, nodules2, n2 = probs[100], {}, 0
            for key, n in nodules.items():
                if n2 >= 100:
                    break
                if float(n[3]) > threshold:
                    nodules2[key] = n
                    n2 += 1
            nodules = nodules2
        candidates, candidates2 = nodules, dict(nodules)
        total_cands += len(candidates)
        for state, x, y, z, diameter in all_nodules[uid]:
            diameter = 10.0 if diameter < 0.0 else diameter
            radius_squared = pow(diameter / 2.0, 2.0)
            found, matches = False, []
            for key, (x2, y2, z2, p) in candidates.items():
                dist = math.pow(x - x2, 2.) + math.pow(y - y2, 2.) + math.pow(z - z2, 2.)
                if dist < radius_squared:
                    if state == "Included":
                        found = True
                        matches.append(float(p))
                        candidates2.pop(key, None)
                    elif key in candidates2:
                        ignored += 1
                        del candidates2[key]
            if state == "Included":
                gt_list.append(1.0)
                prob_list.append(max(matches) if found else -1000000000.0)
                exclude.append(not found)
        for (_, _, _, p) in candidates2.values():
            gt_list.append(0.0)
            prob_list.append(float(p))
            exclude.append(False)
    gt_local = [g for g, e in zip(gt_list, exclude) if not e]
    prob_local = [p for p, e in zip(prob_list, exclude) if not e]
    fpr, tpr, _ = roc_curve(gt_local, prob_local)
    fps = np.zeros(len(fpr)) if sum(gt_list) == len(gt_list) else \
        fpr * (len(prob_local) - sum(gt_local)) / len(series)
    sens = tpr * sum(gt_local) / sum(gt_list)
    grid = np.linspace(0.125, 8, num=10001)
    sens_grid = np.interp(grid, fps, sens)
    counts = dict(n_series=len(series), n_nodules=int(sum(gt_list)), n_candidates=total_cands,
                  nodules_found=int(sum(gt_local)), ignored_candidates=ignored)
    return [sens_grid[np.argmin(np.abs(grid - r))] for r in FROC_FP_RATES], counts


def _random_submission(rng: np.random.Generator) -> tuple[list, list, list, list[str]]:
    series = [f"1.3.6.{i}" for i in range(int(rng.integers(2, 7)))]
    candidates, nodules, excluded = [], [], []
    for uid in series + ["unlisted"]:
        centres = rng.uniform(-150, 150, (int(rng.integers(0, 4)), 3))
        diameters = rng.choice([-1.0, 3.5, 6.0, 12.0, 25.0], len(centres))
        nodules += [(uid, *c, d) for c, d in zip(centres, diameters)]
        others = rng.uniform(-150, 150, (int(rng.integers(0, 3)), 3))
        excluded += [(uid, *c, -1.0) for c in others]
        near = np.concatenate([centres + rng.normal(0, 3, centres.shape), others + rng.normal(0, 3, others.shape)])
        many = int(rng.choice([0, 3, 8, 120]))  # 120: the cap applies
        marks = np.concatenate([near, rng.uniform(-150, 150, (many, 3))])
        probs = rng.integers(0, 40, len(marks)) / 40 if rng.random() < 0.5 else rng.random(len(marks))  # ties or not
        candidates += [(uid, float(x), float(y), float(z), float(p)) for (x, y, z), p in zip(marks, probs)]
    order = rng.permutation(len(candidates))   # series interleaved in the file
    return [candidates[i] for i in order], nodules, excluded, series


def test_random_submissions_agree_with_the_script(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    compared = 0
    for _ in range(25):
        files = _luna_files(tmp_path, *_random_submission(rng))
        ours = luna_froc(*files)
        cases = luna_cases(read_candidates(files[0]), read_annotations(files[1]), read_annotations(files[2]),
                           read_series(files[3]))
        is_lesion, _, n_lesions = froc_candidates(cases, rule="radius")
        if n_lesions == 0 or is_lesion.all() or not is_lesion.any():
            continue   # the script's own edge cases (NaN rates), tested by hand above
        values, counts = _script(*files)
        np.testing.assert_allclose(_values(ours), values, rtol=0, atol=1e-12)
        assert {k: ours[k] for k in LUNA_COUNT_KEYS} == counts
        compared += 1
    assert compared >= 15


# ---- the scan bootstrap and the boxes table under rule radius ----

def _radius_set(rng: np.random.Generator, n: int) -> list[CaseBoxes]:
    """Scans with boxes (AP) and world references (radius) whose counts differ, excluded findings, marks on them."""
    cases = []
    for i in range(n):
        centres = rng.uniform(0, 100, (int(rng.integers(0, 4)), 3))
        others = rng.uniform(0, 100, (int(rng.integers(0, 3)), 3))
        marks = np.concatenate([centres[rng.random(len(centres)) < 0.7], others[: 1]]) + rng.normal(0, 2, (1, 3))
        marks = np.concatenate([marks, rng.uniform(0, 100, (int(rng.integers(0, 4)), 3))])
        scores = (rng.integers(1, 6, len(marks)) / 5).astype(np.float32)   # ties within and across scans
        gt_boxes = np.hstack([centres[:-1] - 3, centres[:-1] + 3])          # one box fewer than references
        cases.append(CaseBoxes(f"t{i}", np.hstack([marks - 2, marks + 2]), scores, gt_boxes, pred_centres=marks,
                               gt_centres=centres, gt_diameters=rng.choice([-1.0, 5.0, 9.0], len(centres)),
                               excluded_centres=others, excluded_diameters=np.full(len(others), 6.0)))
    return cases


def _same(got: dict, want: dict) -> None:
    for key in want:
        assert (math.isnan(got[key]) and math.isnan(want[key])) or abs(got[key] - want[key]) <= 1e-12, key


def test_scan_set_under_radius_equals_froc_metrics_and_detection_metrics() -> None:
    rng = np.random.default_rng(7)
    for _ in range(8):
        cases = _radius_set(rng, int(rng.integers(2, 7)))
        scans = ScanSet(cases, rule="radius")
        _same(scans.metrics_dict(), detection_metrics(cases, rule="radius"))
        for _ in range(4):
            drawn = rng.integers(0, len(cases), len(cases))
            chosen = [cases[i] for i in drawn]
            got = scans.metrics_dict(drawn)
            _same({k: got[k] for k in FROC_KEYS}, froc_metrics(chosen, rule="radius"))
            _same(got, detection_metrics(chosen, rule="radius"))
    cases = _radius_set(np.random.default_rng(3), 6)
    fast = scan_bootstrap_ci([ScanSet(cases, rule="radius")], n_resamples=60, seed=2)
    for metric in ("froc_fp1", "froc_cpm", "map"):
        slow = bootstrap_scans_ci(list(range(6)), lambda ids: detection_metrics([cases[i] for i in ids],
                                                                                rule="radius")[metric],
                                  n_resamples=60, seed=2)
        assert fast[metric] == pytest.approx(slow, abs=1e-12, nan_ok=True), metric


def test_boxes_table_round_trips_the_radius_references(tmp_path: Path) -> None:
    cases = _radius_set(np.random.default_rng(5), 5) + [CaseBoxes("empty", [], [], [], pred_centres=[],
                                                                  gt_centres=[], gt_diameters=[])]
    rows = box_rows(cases, rule="radius", iou_threshold=0.1, max_detections=50)
    frame = pd.DataFrame(rows)
    assert list(frame.columns) == list(BOX_COLUMNS) and set(frame["kind"]) == set(BOX_KINDS)
    assert (frame["kind"] == "nodule").sum() == sum(len(c.gt_centres) for c in cases)
    assert (frame["kind"] == "gt").sum() == sum(len(c.gt_boxes) for c in cases)
    frame.to_csv(tmp_path / "boxes.csv", index=False)
    scans, settings = scans_from_rows(pd.read_csv(tmp_path / "boxes.csv"))
    assert settings == dict(rule="radius", iou_threshold=0.1, max_detections=50)
    for got, want in zip(scans, cases, strict=True):
        for field in ("pred_boxes", "pred_scores", "gt_boxes", "pred_centres", "gt_centres", "gt_diameters",
                      "excluded_centres", "excluded_diameters"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    _same(ScanSet(scans, **settings).metrics_dict(), detection_metrics(cases, rule="radius", max_detections=50))


def test_older_boxes_tables_read_as_before() -> None:
    boxes_only = [CaseBoxes("a", [[0, 0, 0, 4, 4, 4]], [0.5], [[0, 0, 0, 4, 4, 4]]), CaseBoxes("b", [], [], [])]
    frame = pd.DataFrame(box_rows(boxes_only, rule="iou", iou_threshold=0.1, max_detections=100))
    assert frame[["cx", "cy", "cz", "diameter"]].isna().all().all()
    for table in (frame, frame.drop(columns=["cx", "cy", "cz", "diameter"])):
        scans, settings = scans_from_rows(table)
        assert settings == dict(rule="iou", iou_threshold=0.1, max_detections=100)
        for got, want in zip(scans, boxes_only, strict=True):
            np.testing.assert_array_equal(got.pred_boxes, want.pred_boxes)
            np.testing.assert_array_equal(got.gt_boxes, want.gt_boxes)
            assert got.pred_centres is None and got.gt_centres is None and got.excluded_centres is None
