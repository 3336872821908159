"""The scan bootstrap of the dataset-level lesion metrics: metrics.lesion_bootstrap against MONAI's COCOMetric
(via coco_metrics and directly) and froc_metrics on random resamples and edge cases, the bootstrap against a slow
loop of detection_metrics, a hand-made interval, the boxes table of the lesion accumulator (round trip, ranks) and
the intervals model_comparison.csv gets from it (engine.results.comparison_stats)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch

from engine.results.comparison_stats import extend_comparison, lesion_scan_intervals
from engine.results.job_results import read_result_csv
from engine.results.reducer import build_comparison, metric_columns
from engine.options.stats_options import StatsOptions
from engine.tasks.lesion_metrics import LesionAccumulator, LesionSettings
from lesion_helpers import random_cases
from metrics.detection import LESION_COLUMNS, CaseBoxes, coco_metrics, detection_metrics
from metrics.lesion_bootstrap import BOX_COLUMNS, ScanSet, box_rows, scan_bootstrap_ci, scans_from_rows
from metrics.lesions import box_iou
from metrics.statistics import bootstrap_ci, bootstrap_scans_ci

CUBE = [0, 0, 0, 10, 10, 10]
FAR = [50, 50, 50, 60, 60, 60]
OTHER = [20, 20, 20, 30, 30, 30]


def case(preds, scores, gts, case_id="c") -> CaseBoxes:
    return CaseBoxes(case_id, np.array(preds, dtype=np.float32), np.array(scores), np.array(gts, dtype=np.float32))


def _assert_same(got: dict[str, float], want: dict[str, float], where: str = "") -> None:
    for key in want:
        a, b = got[key], want[key]
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12, (where, key, a, b)


def _edge_sets(rng: np.random.Generator) -> list[list[CaseBoxes]]:
    """Case sets with ties in score (within and across cases), lesion-free cases, cases without predictions,
    empty cases, and more predictions than max_detections."""
    tied = []
    for i in range(5):
        cases = random_cases(rng, max_cases=5, hit_share=0.7, jitter=1.0)
        for c in cases:  # scores on a 3-level grid: many ties, TPs and FPs tied with each other
            c.pred_scores = (rng.integers(1, 4, c.pred_scores.size) / 3).astype(np.float32)
        tied.append(cases)
    many = [case(np.repeat([CUBE, FAR, OTHER], 3, axis=0), rng.random(9), [CUBE, OTHER], "many"),
            case([FAR] * 5, [0.5] * 5, [], "fp_only"), case([], [], [CUBE], "missed"), case([], [], [], "empty")]
    return [*tied, many, [case([], [], [CUBE], "a"), case([], [], [], "b")],  # lesions, no prediction at all
            [case([FAR], [0.9], [], "a"), case([], [], [], "b")]]  # predictions, no lesion: NaN


@pytest.mark.parametrize("max_detections", [100, 2])
def test_resampled_metrics_equal_detection_metrics(max_detections: int) -> None:
    rng = np.random.default_rng(11)
    sets = [random_cases(rng, max_cases=6, hit_share=0.7, jitter=1.0) for _ in range(12)] + _edge_sets(rng)
    for n, cases in enumerate(sets):
        for rule in ("iou", "centre"):
            scans = ScanSet(cases, rule=rule, max_detections=max_detections)
            _assert_same(scans.metrics_dict(), detection_metrics(cases, rule=rule, max_detections=max_detections),
                         f"set {n} whole")
            for _ in range(4):  # resamples with duplicates, in draw order
                drawn = rng.integers(0, len(cases), len(cases))
                want = detection_metrics([cases[i] for i in drawn], rule=rule, max_detections=max_detections)
                _assert_same(scans.metrics_dict(drawn), want, f"set {n} draw {drawn}")


def test_resampled_ap_equals_monai_coco_metric_called_directly() -> None:
    """The MONAI calls written out per resample (matching_batch at COCOMetric's own thresholds, box IoU as
    coco_metrics computes it; iou_list 0.3 and the range's 0.30000000000000004 make 10 thresholds here)."""
    rng = np.random.default_rng(3)
    metric = COCOMetric(classes=["lesion"], iou_list=(0.1, 0.3, 0.5), iou_range=(0.1, 0.5, 0.05),
                        max_detection=(100,), per_class=False, verbose=False)
    checked = 0
    for cases in [random_cases(rng, max_cases=5, hit_share=0.8, jitter=1.0) for _ in range(10)] + _edge_sets(rng):
        scans = ScanSet(cases)
        drawn = rng.integers(0, len(cases), len(cases))
        chosen = [cases[i] for i in drawn]
        if sum(len(c.gt_boxes) for c in chosen) == 0:
            assert math.isnan(scans.metrics_dict(drawn)["map"])
            continue
        values, _ = metric(matching_batch(
            iou_fn=box_iou, iou_thresholds=metric.iou_thresholds, pred_boxes=[c.pred_boxes for c in chosen],
            pred_classes=[np.zeros(len(c.pred_boxes), int) for c in chosen],
            pred_scores=[c.pred_scores for c in chosen],
            gt_boxes=[c.gt_boxes for c in chosen], gt_classes=[np.zeros(len(c.gt_boxes), int) for c in chosen]))
        ours = scans.metrics_dict(drawn)
        for key, name in (("ap_10", "AP_IoU_0.10_MaxDet_100"), ("ap_30", "AP_IoU_0.30_MaxDet_100"),
                          ("ap_50", "AP_IoU_0.50_MaxDet_100"), ("map", "mAP_IoU_0.10_0.50_0.05_MaxDet_100")):
            assert abs(ours[key] - values[name]) <= 1e-12, key
        assert abs(ours["mar"] - coco_metrics(chosen)["mar"]) <= 1e-12  # COCOMetric's mAR, each threshold once
        checked += 1
    assert checked >= 10


def test_scan_bootstrap_equals_a_slow_loop_of_detection_metrics() -> None:
    rng = np.random.default_rng(21)
    gts = [np.array([[5 + 10 * i, 5, 5, 12 + 10 * i, 12, 12]], np.float32) if i % 3 else np.zeros((0, 6), np.float32)
           for i in range(6)]
    runs = []
    for _ in range(2):  # two runs: the same scans and lesions, different predictions
        runs.append([CaseBoxes(f"s{i}", np.concatenate([g + rng.normal(0, 1.5, g.shape), [[40, 40, 40, 45, 45, 45]]]),
                               rng.random(len(g) + 1), g) for i, g in enumerate(gts)])
    fast = scan_bootstrap_ci([ScanSet(r) for r in runs], n_resamples=100, seed=4)
    for metric in ("ap_10", "map", "mar", "froc_fp1", "froc_cpm"):
        slow = bootstrap_scans_ci(list(range(6)), lambda ids: float(np.nanmean(
            [detection_metrics([r[i] for i in ids])[metric] for r in runs])), n_resamples=100, seed=4)
        assert fast[metric] == pytest.approx(slow, abs=1e-12), metric


def test_hand_made_interval() -> None:
    """Scan A: its lesion found (score 0.9); scan B: its lesion missed and a false positive scored 0.95. Resamples
    AA (1/4): AP 1; BB (1/4): AP 0; AB or BA (1/2): FP then TP, recall 0.5 at precision 0.5, AP = 51 x 0.5 / 101.
    So the 2.5% / 97.5% percentiles of 1000 resamples are 0 and 1, and every resample takes one of the 3 values."""
    a = case([CUBE], [0.9], [CUBE], "A")
    b = case([FAR], [0.95], [OTHER], "B")
    scans = ScanSet([a, b])
    assert scans.metrics_dict([0, 1])["ap_10"] == pytest.approx(25.5 / 101, abs=1e-12)
    assert scans.metrics_dict([0, 0])["ap_10"] == 1.0 and scans.metrics_dict([1, 1])["ap_10"] == 0.0
    assert scans.metrics_dict([1, 0])["mar"] == pytest.approx(0.5)
    draws = np.random.default_rng(0).integers(0, 2, size=(1000, 2))
    assert {round(scans.metrics_dict(d)["ap_10"], 9) for d in draws} == {0.0, round(25.5 / 101, 9), 1.0}
    ci = scan_bootstrap_ci([scans, scans], n_resamples=1000, seed=0)
    assert ci["ap_10"] == (0.0, 1.0) and ci["map"] == (0.0, 1.0) and ci["mar"] == (0.0, 1.0)
    lesion_free = ScanSet([case([FAR], [0.5], [], "x"), case([], [], [], "y")])
    assert all(math.isnan(v) for pair in scan_bootstrap_ci([lesion_free], n_resamples=100).values() for v in pair)
    assert all(math.isnan(v) for v in scan_bootstrap_ci([ScanSet([a])], n_resamples=100)["map"])  # one scan


def test_runs_over_different_scans_are_refused() -> None:
    with pytest.raises(ValueError, match="same scans"):
        scan_bootstrap_ci([ScanSet([case([], [], [CUBE], "a")]), ScanSet([case([], [], [CUBE], "b")])])


# ---- the boxes table ----

def test_accumulator_boxes_table_round_trips_and_survives_rank_merges(tmp_path) -> None:
    rng = np.random.default_rng(9)
    cases = random_cases(rng, max_cases=6, hit_share=0.7, jitter=1.0) + [case([], [], [], "empty")]
    settings = LesionSettings(hit_rule="centre", max_detections=3)
    whole = LesionAccumulator(settings)
    ranks = [LesionAccumulator(settings) for _ in range(2)]
    for i, c in enumerate(cases):
        for acc in (whole, ranks[i % 2]):
            acc.add_boxes(c.case_id, c.pred_boxes, c.pred_scores, c.gt_boxes)
    ranks[0].merge([ranks[1].share()], [c.case_id for c in cases])
    frame = pd.DataFrame(whole.tables()["boxes"])
    pd.testing.assert_frame_equal(pd.DataFrame(ranks[0].tables()["boxes"]), frame)
    assert list(frame.columns) == list(BOX_COLUMNS)
    assert (frame["kind"] == "case").sum() == len(cases)  # the empty case counts as a scan
    assert (frame["kind"] == "pred").sum() == sum(len(c.pred_scores) for c in cases)
    path = tmp_path / "boxes.csv"
    frame.assign(model="m", seed=1, fold=pd.NA).to_csv(path, index=False)
    scans, read = scans_from_rows(read_result_csv(path))
    assert read == dict(rule="centre", iou_threshold=0.1, max_detections=3)
    assert [s.case_id for s in scans] == [c.case_id for c in cases]
    for got, want in zip(scans, cases):  # float32 values come back exactly
        np.testing.assert_array_equal(got.pred_boxes, want.pred_boxes)
        np.testing.assert_array_equal(got.pred_scores, want.pred_scores)
        np.testing.assert_array_equal(got.gt_boxes, want.gt_boxes)
    again = ScanSet(scans, **read).metrics_dict()
    _assert_same(again, {k: whole.aggregate()[k] for k in LESION_COLUMNS})


def _lesion_sweep_tables(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Models "det" (3 ok runs with boxes, 1 failed run) and "old" (2 ok runs, no boxes) on 8 shared test scans;
    run values = detection_metrics of each run's cases."""
    gts = [np.array([[5 + 7 * i, 5, 5, 11 + 7 * i, 12, 12]], np.float32) if i % 4 else np.zeros((0, 6), np.float32)
           for i in range(8)]
    runs, boxes, cases_of = [], [], {}
    for model, seeds in (("det", (1, 2, 3, 4)), ("old", (1, 2))):
        for seed in seeds:
            cases = [CaseBoxes(f"t{i}", np.concatenate([g + rng.normal(0, 1.0, g.shape), rng.uniform(30, 50, (2, 6))])
                               .reshape(-1, 6) if i % 2 else g,
                               rng.random(len(g) + 2 if i % 2 else len(g)), g) for i, g in enumerate(gts)]
            for c in cases:
                c.pred_boxes[:, 3:] = np.maximum(c.pred_boxes[:, 3:], c.pred_boxes[:, :3] + 1)
            status = "failed" if seed == 4 else "ok"
            runs.append(dict(model=model, seed=seed, fold=pd.NA, status=status, **detection_metrics(cases)))
            cases_of[(model, seed)] = cases
            if model == "det":
                boxes += [dict(model=model, seed=seed, fold=pd.NA, **r)
                          for r in box_rows(cases, rule="iou", iou_threshold=0.1, max_detections=100)]
    frames = pd.DataFrame(runs), pd.DataFrame(boxes)
    for f in frames:
        f["fold"] = f["fold"].astype("Int64")
    return frames[0], frames[1], cases_of


def test_comparison_intervals_bootstrap_scans_where_boxes_exist(caplog: pytest.LogCaptureFixture) -> None:
    runs, boxes, cases_of = _lesion_sweep_tables(np.random.default_rng(1))
    options = StatsOptions(stats_seed=5, bootstrap_resamples=200)
    metrics = metric_columns(runs)
    basic = build_comparison(runs)
    with caplog.at_level(logging.WARNING):
        table = extend_comparison(basic, runs, metrics, options=options, boxes=boxes).set_index("model")
    assert "differ from the runs table" not in caplog.text  # the boxes reproduce every run's values
    expected = scan_bootstrap_ci([ScanSet(cases_of[("det", s)]) for s in (1, 2, 3)], n_resamples=200, seed=5)
    over_runs = extend_comparison(basic, runs, metrics, options=options).set_index("model")
    for metric in LESION_COLUMNS:
        assert (table.at["det", f"{metric}_ci_low"], table.at["det", f"{metric}_ci_high"]) == expected[metric]
        # "old" has no boxes: its intervals stay over runs (bootstrap_ci of its 2 run values)
        want = bootstrap_ci(runs.loc[runs["model"] == "old", metric], n_resamples=200, seed=5)
        got = (table.at["old", f"{metric}_ci_low"], table.at["old", f"{metric}_ci_high"])
        assert got == pytest.approx(want, nan_ok=True)
        assert (over_runs.at["old", f"{metric}_ci_low"], over_runs.at["old", f"{metric}_ci_high"]) == \
            pytest.approx(got, nan_ok=True)
    assert table.at["det", "map_ci_low"] <= table.at["det", "map_mean"] <= table.at["det", "map_ci_high"]


def test_scan_intervals_fall_back_or_warn_when_the_boxes_do_not_fit(caplog: pytest.LogCaptureFixture) -> None:
    runs, boxes, _ = _lesion_sweep_tables(np.random.default_rng(2))
    options = StatsOptions(bootstrap_resamples=100)
    det = runs[(runs["model"] == "det") & (runs["status"] == "ok")]
    with caplog.at_level(logging.INFO):
        assert lesion_scan_intervals("det", det, boxes[boxes["seed"] != 2], LESION_COLUMNS, options) == {}
    assert "have no boxes table" in caplog.text
    assert lesion_scan_intervals("det", det, None, LESION_COLUMNS, options) == {}
    assert lesion_scan_intervals("det", det, boxes, ["dice_ich"], options) == {}
    fewer = boxes[~((boxes["seed"] == 3) & (boxes["case_id"] == "t7"))]  # run 3 lacks a scan
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = lesion_scan_intervals("det", det, fewer, ["map"], options)
    assert set(out) == {"map_ci_low", "map_ci_high"} and "the 7 scans all of them hold" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        lesion_scan_intervals("det", det.assign(map=0.123), boxes, ["map"], options)
    assert "map recomputed from its boxes differ" in caplog.text
