"""Benchmark: volbench's segmentation and lesion metrics vs MONAI / scipy on the same arrays.

Usage: python benchmarks/bench_metrics.py [--quick] [--repeats N] [--seed 0]

Segmentation (one BraTS-like case, 240x240x155 at 1 mm, internal labels 0/1/2/3; WT = {1, 2, 3},
TC = {1, 3}, ET = {3}; a prediction with typical model errors and one false-positive blob):
  ours:  ``metrics.overlap.region_dice`` + ``metrics.surface.region_hd95`` on the two label maps;
  MONAI: ``DiceMetric`` + ``HausdorffDistanceMetric(percentile=95)`` on the one-hot float tensors of the
         three regions (building them is timed apart and not charged to MONAI).
Also timed: the per-region path ``case_metrics`` takes today (``region_mask`` + ``dice`` + ``hd95`` per
region) and ``case_metrics`` itself (which adds precision, recall and the class Dice). Values must agree:
Dice exactly (float32 of ours == MONAI's float32), HD95 to relative 1e-6; exit 1 otherwise.
The full mode adds a poor prediction (boundary errors of ~6 mm) and an anisotropic-spacing case.

Lesions (CT-like binary masks with several lesions; many cases of boxes):
  ``metrics.lesions.label_components`` / ``scored_boxes`` vs ``scipy.ndimage.label`` (26-connectivity) +
  ``find_objects`` + ``ndimage.maximum``; ``metrics.detection.coco_metrics`` vs MONAI's ``matching_batch``
  + one ``COCOMetric`` over IoU 0.10:0.50:0.05. Equal labels, boxes, scores and AP/AR are checked.

Timings are the median of ``--repeats`` runs, ours and the reference interleaved; the 1-minute load
average (``os.getloadavg``) is printed beside each block, since other processes may share the cores.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics import BRATS_REGIONS, dice, hd95, region_mask  # noqa: E402
from metrics.detection import MAP_IOU_THRESHOLDS, CaseBoxes, coco_metrics  # noqa: E402
from metrics.lesions import STRUCTURE_26, box_iou, label_components, scored_boxes  # noqa: E402
from metrics.overlap import region_dice  # noqa: E402
from metrics.segmentation import case_metrics  # noqa: E402
from metrics.surface import region_hd95  # noqa: E402

SHAPE = (240, 240, 155)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="typical case only, fewer repeats and lesion cases")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 3 quick, 7 full)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic cases")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    return args


# ---------------------------------------------------------------- synthetic cases
def _smooth(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Smooth zero-mean, unit-std noise with about ``cells`` blobs per axis (float32)."""
    low = rng.standard_normal(tuple(cells + 2 for _ in shape)).astype(np.float32)
    field = ndimage.zoom(low, [n / (cells + 2) for n in shape], order=1, prefilter=False)
    field = field[tuple(slice(0, n) for n in shape)]
    return (field - field.mean()) / (field.std() + 1e-8)


def _ellipsoid(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)).astype(np.float32)


def brats_case(seed: int, error: float) -> tuple[np.ndarray, np.ndarray]:
    """(pred, ref) uint8 label maps of SHAPE: an irregular tumour (ED halo, ET rim, NCR core) and a
    prediction whose boundaries are moved by smooth noise of relative amplitude ``error`` (0.06 is a
    good model, ~2 mm; 0.2 a poor one), part of the core mislabelled, plus one false-positive blob.
    The fields are drawn in a 112x112x96 box around the tumour (everything outside is background)."""
    rng = np.random.default_rng(seed)
    sub = (112, 112, 96)
    centre = np.array(sub) / 2.0
    dist = np.sqrt(_ellipsoid(sub, centre, np.array([34.0, 30.0, 27.0])))
    shape_noise = 0.18 * _smooth(rng, sub, 4)
    ref_level, pred_level = dist + shape_noise, dist + shape_noise + error * _smooth(rng, sub, 7)
    core_noise = 0.1 * _smooth(rng, sub, 6)
    origin = (np.array(SHAPE) * np.array([0.5, 0.45, 0.55]) - centre).astype(int)
    place = tuple(slice(o, o + n) for o, n in zip(origin, sub))
    labels = []
    for level, extra in ((ref_level, 0.0), (pred_level, error * 0.5)):
        lab = np.zeros(sub, dtype=np.uint8)
        lab[level < 1.0] = 2
        lab[level + core_noise + extra * _smooth(rng, sub, 6) < 0.6] = 3
        lab[level + core_noise < 0.35] = 1
        full = np.zeros(SHAPE, dtype=np.uint8)
        full[place] = lab
        labels.append(full)
    ref, pred = labels
    blob_at = origin + centre.astype(int) + np.array([-60, 70, -40]) - 8
    blob = np.sqrt(_ellipsoid((16, 16, 16), np.array([8.0, 8.0, 8.0]), np.array([4.0, 5.0, 3.0]))) < 1.0
    pred[tuple(slice(o, o + 16) for o in blob_at)][blob] = 2
    return pred, ref


def lesion_masks(seed: int, n_cases: int, shape: tuple[int, int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask, probability) pairs of CT-like scans: 0-6 lesions each, radii 1-12 voxels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_cases):
        level = np.full(shape, np.inf, dtype=np.float32)
        for _ in range(int(rng.integers(0, 7))):
            centre = rng.uniform(15, np.array(shape) - 15)
            level = np.minimum(level, np.sqrt(_ellipsoid(shape, centre, rng.uniform(1.0, 12.0, 3))))
        out.append((level < 1.0, np.clip(1.2 - 0.5 * level, 0, 1).astype(np.float32)))
    return out


def box_cases(seed: int, n_cases: int) -> list[CaseBoxes]:
    """Cases of ground-truth boxes and jittered, scored predictions (with misses and false positives)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_cases):
        n_gt = int(rng.integers(0, 6))
        lo = rng.uniform(0, 200, (n_gt, 3))
        gt = np.concatenate([lo, lo + rng.uniform(3, 40, (n_gt, 3))], axis=1)
        keep = gt[rng.random(n_gt) < 0.8]
        jitter = rng.normal(0, 2.0, keep.shape)
        pred = np.concatenate([keep + jitter, np.concatenate([(fp := rng.uniform(0, 200, (2, 3))),
                                                               fp + rng.uniform(3, 20, (2, 3))], axis=1)])
        pred = np.concatenate([np.minimum(pred[:, :3], pred[:, 3:]), np.maximum(pred[:, :3], pred[:, 3:])], axis=1)
        cases.append(CaseBoxes(f"case{i}", pred.astype(np.float32), rng.random(len(pred)).astype(np.float32),
                               gt.astype(np.float32)))
    return cases


# ---------------------------------------------------------------- timing
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def race(methods: dict[str, Callable[[], object]],
         repeats: int) -> tuple[dict[str, float], dict[str, object], tuple[float, float]]:
    """Median seconds of each method over ``repeats`` interleaved runs (after one warm-up each), their
    last outputs, and the 1-minute load averages before and after."""
    load_before = os.getloadavg()[0]
    outputs = {name: fn() for name, fn in methods.items()}  # warm-up (imports, caches)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            t, outputs[name] = timed(fn)
            times[name].append(t)
    return {n: statistics.median(t) for n, t in times.items()}, outputs, (load_before, os.getloadavg()[0])


# ---------------------------------------------------------------- segmentation metrics
def monai_metrics(y_pred: torch.Tensor, y: torch.Tensor, spacing: tuple[float, ...],
                  which: str) -> dict[str, float]:
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        if which in ("dice", "both"):
            d = DiceMetric(include_background=True, reduction="none")(y_pred, y).reshape(-1)
            out.update({f"dice_{r}": float(v) for r, v in zip(BRATS_REGIONS, d)})
        if which in ("hd95", "both"):
            h = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
                y_pred, y, spacing=list(spacing)).reshape(-1)
            out.update({f"hd95_{r}": float(v) for r, v in zip(BRATS_REGIONS, h)})
    return out


def ours_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], which: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if which in ("dice", "both"):
        out.update({f"dice_{r}": v for r, v in region_dice(pred, ref, BRATS_REGIONS).items()})
    if which in ("hd95", "both"):
        out.update({f"hd95_{r}": v for r, v in region_hd95(pred, ref, BRATS_REGIONS, spacing).items()})
    return out


def per_region_path(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """What ``case_metrics`` runs for Dice and HD95 today: two region masks, ``dice``, ``hd95`` per region."""
    out: dict[str, float] = {}
    for r, members in BRATS_REGIONS.items():
        p, q = region_mask(pred, members), region_mask(ref, members)
        out[f"dice_{r}"], out[f"hd95_{r}"] = dice(p, q), hd95(p, q, spacing)
    return out


def one_hot(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([region_mask(labels, m) for m in BRATS_REGIONS.values()])[None]).float()


def compare(ours: dict[str, float], monai: dict[str, float]) -> list[str]:
    """Mismatches: Dice must be equal in float32, HD95 within relative 1e-6."""
    bad = []
    for key, want in monai.items():
        got = ours[key]
        ok = np.float32(got) == np.float32(want) if key.startswith("dice") else \
            math.isclose(got, want, rel_tol=1e-6, abs_tol=0.0)
        if not ok:
            bad.append(f"{key}: ours {got!r} vs MONAI {want!r}")
    return bad


def segmentation_block(name: str, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
                       repeats: int) -> list[str]:
    """Time and compare one case; prints a table; returns the mismatches."""
    t_hot, (y_pred, y) = timed(lambda: (one_hot(pred), one_hot(ref)))
    rows, bad = [], []
    for which in ("dice", "hd95", "both"):
        times, outs, load = race({"ours": lambda w=which: ours_metrics(pred, ref, spacing, w),
                                  "monai": lambda w=which: monai_metrics(y_pred, y, spacing, w)}, repeats)
        bad += compare(outs["ours"], outs["monai"])
        rows.append((which, times["ours"], times["monai"], load))
    times, outs, load = race({"per_region": lambda: per_region_path(pred, ref, spacing),
                              "case_metrics": lambda: case_metrics(pred, ref, spacing)}, repeats)
    bad += compare(outs["per_region"], monai_metrics(y_pred, y, spacing, "both"))
    values = ours_metrics(pred, ref, spacing, "both")
    print(f"\n### {name}: spacing {spacing} mm; " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    print("\n| metrics (WT, TC, ET) | ours ms | MONAI ms | MONAI / ours | load 1-min (before, after) |")
    print("|---|---|---|---|---|")
    for which, ours_s, monai_s, (l0, l1) in rows:
        label = {"dice": "Dice", "hd95": "HD95", "both": "Dice + HD95"}[which]
        print(f"| {label} | {1000 * ours_s:.1f} | {1000 * monai_s:.1f} | **{monai_s / ours_s:.1f}x** | "
              f"{l0:.2f}, {l1:.2f} |")
    monai_both = rows[-1][2]
    print(f"\nsame Dice + HD95 through other volbench paths (load {load[0]:.2f}, {load[1]:.2f}): per-region masks + "
          f"dice + hd95 {1000 * times['per_region']:.1f} ms ({monai_both / times['per_region']:.1f}x); "
          f"case_metrics (adds precision, recall, class Dice) {1000 * times['case_metrics']:.1f} ms "
          f"({monai_both / times['case_metrics']:.1f}x). Building MONAI's one-hot tensors (not charged): "
          f"{1000 * t_hot:.0f} ms.")
    monai_values = monai_metrics(y_pred, y, spacing, "hd95")
    n_bitwise = sum(values[k] == v for k, v in monai_values.items())
    print("values: " + (f"equal (Dice exactly in float32, HD95 within rel 1e-6; {n_bitwise}/{len(monai_values)} "
                        "HD95 bit-equal to MONAI's float32)" if not bad else "MISMATCH " + "; ".join(bad)))
    return bad


# ---------------------------------------------------------------- lesion metrics
def scipy_scored_boxes(mask: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: scipy label (26-connectivity), find_objects boxes, maximum probability, stable sort."""
    labels, n = ndimage.label(mask, structure=STRUCTURE_26)
    if n == 0:
        return np.zeros((0, 6), np.float32), np.zeros(0, np.float32)
    boxes = np.asarray([[s.start for s in sl] + [s.stop for s in sl] for sl in ndimage.find_objects(labels)],
                       dtype=np.float32)
    scores = np.asarray(ndimage.maximum(prob, labels, index=np.arange(1, n + 1)), dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def monai_coco(cases: list[CaseBoxes], max_detections: int = 100) -> dict[str, float]:
    """Reference: MONAI's matching_batch (once, IoU 0.10:0.50:0.05) and COCOMetric called directly: one
    over the range (mAP, mAR), one per AP column on that threshold's rows of the same matching."""
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou as monai_box_iou

    results = matching_batch(
        iou_fn=monai_box_iou, iou_thresholds=MAP_IOU_THRESHOLDS, pred_boxes=[c.pred_boxes for c in cases],
        pred_scores=[c.pred_scores for c in cases], pred_classes=[np.zeros(len(c.pred_boxes), np.int64) for c in cases],
        gt_boxes=[c.gt_boxes for c in cases], gt_classes=[np.zeros(len(c.gt_boxes), np.int64) for c in cases],
        max_detections=max_detections)

    def metric(t0: float, t1: float, step: float, res: list) -> dict[str, float]:
        return COCOMetric(classes=["lesion"], iou_list=(t0,), iou_range=(t0, t1, step),
                          max_detection=(max_detections,), per_class=False, verbose=False)(res)[0]

    overall = metric(0.1, 0.5, 0.05, results)
    out = {"map": next(v for k, v in overall.items() if k.startswith("mAP_IoU")),
           "mar": next(v for k, v in overall.items() if k.startswith("mAR_IoU"))}
    for key, t in (("ap_10", 0.1), ("ap_30", 0.3), ("ap_50", 0.5)):
        i = MAP_IOU_THRESHOLDS.index(t)
        rows = [{c: {k: (v[i:i + 1] if k in ("dtMatches", "gtMatches", "dtIgnore") else v) for k, v in r.items()}
                 for c, r in res.items()} for res in results]
        out[key] = next(v for k, v in metric(t, t, 1.0, rows).items() if k.startswith("AP_IoU"))
    return {k: float(out[k]) for k in ("ap_10", "ap_30", "ap_50", "map", "mar")}


def lesion_block(seed: int, n_masks: int, n_box_cases: int, repeats: int) -> list[str]:
    """Time and compare components, scored boxes and COCO AP/AR; prints a table; returns the mismatches."""
    masks = lesion_masks(seed, n_masks, SHAPE)
    cases = box_cases(seed, n_box_cases)
    same_labels = lambda a, b: all(x[1] == y[1] and np.array_equal(x[0], y[0]) for x, y in zip(a, b))  # noqa: E731
    same_boxes = lambda a, b: all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])  # noqa: E731
                                  for x, y in zip(a, b))
    steps = [
        (f"components, {n_masks} masks of {SHAPE}", "scipy.ndimage.label", same_labels,
         {"ours": lambda: [label_components(m) for m, _ in masks],
          "ref": lambda: [ndimage.label(m, structure=STRUCTURE_26) for m, _ in masks]}),
        ("scored boxes (components, boxes, max probability)", "scipy label + find_objects + maximum", same_boxes,
         {"ours": lambda: [scored_boxes(m, p) for m, p in masks],
          "ref": lambda: [scipy_scored_boxes(m, p) for m, p in masks]}),
        (f"COCO AP/AR, {n_box_cases} cases, {sum(len(c.gt_boxes) for c in cases)} lesions",
         "MONAI matching_batch + COCOMetric", lambda a, b: all(math.isclose(a[k], b[k], rel_tol=1e-12) for k in b),
         {"ours": lambda: coco_metrics(cases), "ref": lambda: monai_coco(cases)}),
    ]
    bad, rows = [], []
    for step, ref_name, same, methods in steps:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            times, outs, load = race(methods, repeats)
        if not same(outs["ours"], outs["ref"]):
            bad.append(f"{step}: ours differs from {ref_name}")
        rows.append((step, ref_name, times, load))
    n_lesions = sum(int(label_components(m)[1]) for m, _ in masks)
    print(f"\n### Lesion metrics ({n_lesions} lesions in the masks; box IoU via "
          f"{box_iou.__module__}.box_iou = MONAI's)")
    print("\n| step | reference | ours ms | reference ms | reference / ours | load (before, after) |")
    print("|---|---|---|---|---|---|")
    for step, ref_name, t, (l0, l1) in rows:
        print(f"| {step} | {ref_name} | {1000 * t['ours']:.1f} | {1000 * t['ref']:.1f} | "
              f"{t['ref'] / t['ours']:.2f}x | {l0:.2f}, {l1:.2f} |")
    print("ours: labelled inside the mask's bounding box; each maximum over the component's own voxels.")
    print("values: " + ("equal (labels, boxes, scores; AP/AR to 1e-12)" if not bad
                        else "MISMATCH " + "; ".join(bad)))
    return bad


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import monai

    print(f"# bench_metrics {'--quick ' if args.quick else ''}{datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpu_count {os.cpu_count()} | torch {torch.__version__} (threads {torch.get_num_threads()}) | "
          f"MONAI {monai.__version__} | python {platform.python_version()} | load 1/5/15-min "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"timings: median of {args.repeats} interleaved runs after one warm-up")
    bad = segmentation_block("BraTS-like case, typical prediction", *brats_case(args.seed, 0.06), (1.0, 1.0, 1.0),
                             args.repeats)
    if not args.quick:
        bad += segmentation_block("BraTS-like case, poor prediction", *brats_case(args.seed + 1, 0.2),
                                  (1.0, 1.0, 1.0), args.repeats)
        bad += segmentation_block("BraTS-like case, typical prediction, anisotropic spacing",
                                  *brats_case(args.seed + 2, 0.06), (0.9, 0.9, 3.0), args.repeats)
    bad += lesion_block(args.seed, 2 if args.quick else 4, 50 if args.quick else 200, args.repeats)
    print("\nALL VALUES EQUAL" if not bad else f"\n{len(bad)} MISMATCHES")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
