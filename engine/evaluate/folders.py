"""Evaluate a folder of predictions against a folder of labels, without any model (nnU-Net habit).

Matching: a file's case name is its name without ``.nii.gz`` / ``.nii`` / ``.npy`` and without a trailing
``_seg`` or ``-seg``; ``P/BraTS_001.nii.gz`` pairs with ``L/BraTS_001_seg.nii.gz``. Every prediction must
have a label and every label a prediction (``ValueError`` naming the files otherwise). In the prediction
folder, ``{case}_probabilities.nii[.gz]`` / ``.npy`` files beside ``{case}`` (written by
``evaluate_experiment.py --save_probabilities``) are probability maps, not label maps, and are skipped.

``task`` is a folder evaluation of the task registry (``engine.tasks.folder_task_names()``), which says how
labels are read and which regions are scored: ``brats`` maps both files from ``label_convention`` to internal
labels (regions WT/TC/ET and classes NCR/ED of ``BRATS_SPEC``), ``binary`` binarises them (every non-zero
voxel is foreground, region ``lesion``) and adds the lesion metrics. Metrics are
``metrics.segmentation.case_metrics``, the function the sweep uses: Dice, HD95 in mm (spacing of the label
file's header, or of the prediction's header when the label is a ``.npy`` file; 1 mm when neither has a
header; ``spacing`` overrides all), precision and recall, with the empty-mask rules of
``metrics.surface.EMPTY_MASK_RULES``. When both files are NIfTI their voxel axes must agree (same spacing and
axis directions of the affines, within 1e-3): a prediction stored flipped or permuted relative to its label
would otherwise be compared voxel by voxel, wrongly.

The lesion metrics (``engine.tasks.lesion_metrics``) are boxes of the 26-connected components of the
predicted mask, scored by the highest value of the case's probability map in
``prob_dir`` (file ``{case}_probabilities``, else ``{case}``, .nii[.gz] or .npy: a 3D map is the foreground
probability; a 4D map holds one channel per class, channels last for NIfTI and first for .npy, and its
last channel is the foreground), or 1.0 without ``prob_dir``; per-case lesion counts join the rows, and
the dataset-level AP/mAP/mAR/FROC go to the summary's ``lesion_metrics``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from dataio.conventions import CONVENTIONS
from dataio.nifti_io import load_label, read_header
from engine.tasks import FolderEvaluation, folder_evaluation, folder_task_names
from engine.tasks.lesion_metrics import LesionAccumulator, LesionSettings
from metrics.lesions import boxes_from_mask, scored_boxes
from metrics.segmentation import SegmentationMetricAccumulator
from metrics.surface import EMPTY_MASK_RULES

logger = logging.getLogger(__name__)

EXTENSIONS = (".nii.gz", ".nii", ".npy")
SEG_SUFFIXES = ("_seg", "-seg")
SPACING_TOLERANCE = 1e-3
PROBABILITY_SUFFIX = "_probabilities"


@dataclass(frozen=True)
class CasePair:
    """A prediction file and its label file, matched by case name."""

    case_id: str
    prediction: Path
    label: Path


def case_name(path: Path) -> str | None:
    """Case name of a prediction/label file, or None when the extension is not supported."""
    name = path.name
    ext = next((e for e in EXTENSIONS if name.endswith(e)), None)
    if ext is None:
        return None
    stem = name[: -len(ext)]
    for suffix in SEG_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _index(folder: Path, flag: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"{flag} {folder} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path) if path.is_file() and not path.name.startswith(".") else None
        if name is None:
            continue
        if name in found:
            raise ValueError(f"{flag} {folder}: two files for case {name!r}: {found[name].name} and {path.name}")
        found[name] = path
    if not found:
        raise ValueError(f"{flag} {folder} holds no {'/'.join(EXTENSIONS)} files")
    return found


def _drop_probability_files(preds: dict[str, Path]) -> dict[str, Path]:
    """Leave out ``{case}_probabilities`` files that sit beside a ``{case}`` label map."""
    skipped = [n for n in preds if n.endswith(PROBABILITY_SUFFIX) and n[: -len(PROBABILITY_SUFFIX)] in preds]
    if skipped:
        logger.info("--pred_dir: skipping %d probability file(s), e.g. %s", len(skipped), preds[skipped[0]].name)
    return {n: p for n, p in preds.items() if n not in skipped}


def match_pairs(pred_dir: Path, label_dir: Path) -> list[CasePair]:
    """Pairs sorted by case name. Raises ``ValueError`` naming files without a partner."""
    preds = _drop_probability_files(_index(Path(pred_dir), "--pred_dir"))
    labels = _index(Path(label_dir), "--label_dir")
    no_label = sorted(set(preds) - set(labels))
    if no_label:
        raise ValueError(f"missing label for case(s) {no_label[:10]} in --label_dir {label_dir} "
                         f"(predictions {[preds[c].name for c in no_label[:3]]})")
    no_pred = sorted(set(labels) - set(preds))
    if no_pred:
        raise ValueError(f"missing prediction for case(s) {no_pred[:10]} in --pred_dir {pred_dir} "
                         f"(labels {[labels[c].name for c in no_pred[:3]]})")
    return [CasePair(c, preds[c], labels[c]) for c in sorted(preds)]


def read_label_file(path: Path, spacing: Sequence[float] | None = None) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Array and spacing (mm) of a label file; ``.npy`` files get ``spacing`` (1 mm when None).

    The returned spacing of a NIfTI file is its header's, ``spacing`` overriding it when given.
    """
    path = Path(path)
    if path.name.endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        return array, tuple(spacing) if spacing is not None else (1.0,) * array.ndim
    array, _, header_spacing = load_label(path)
    return array, tuple(spacing) if spacing is not None else header_spacing


def _to_task_labels(array: np.ndarray, evaluation: FolderEvaluation, convention: str, path: Path) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"{path} has shape {array.shape}; expected a 3D label map")
    return evaluation.read_labels(array, convention, str(path))


def _check_same_axes(pair: CasePair) -> None:
    """The voxel axes of two NIfTI files must point the same way (direction cosines of the affines, 1e-3)."""
    _, pred_affine = read_header(pair.prediction)
    _, ref_affine = read_header(pair.label)
    directions = [a[:3, :3] / np.maximum(np.linalg.norm(a[:3, :3], axis=0), 1e-12) for a in (pred_affine, ref_affine)]
    if not np.allclose(directions[0], directions[1], rtol=0, atol=SPACING_TOLERANCE):
        raise ValueError(f"case {pair.case_id}: voxel axes of {pair.prediction} "
                         f"({''.join(nib.aff2axcodes(pred_affine))}) differ from those of {pair.label} "
                         f"({''.join(nib.aff2axcodes(ref_affine))}); the prediction is flipped or permuted "
                         f"relative to its label:\n{pred_affine[:3, :3]}\nvs\n{ref_affine[:3, :3]}")


def evaluate_pair(pair: CasePair, accumulator: SegmentationMetricAccumulator, *, task: str, convention: str,
                  spacing: Sequence[float] | None = None, lesions: LesionAccumulator | None = None,
                  prob_files: dict[str, Path] | None = None) -> dict[str, Any] | None:
    """Metrics of one pair, added to ``accumulator``; HD95 uses the label file's spacing (the prediction's
    when the label is ``.npy``; ``spacing`` when given). With ``lesions`` the pair's boxes go there too
    (:func:`_add_lesions`), from the same arrays."""
    pred, pred_spacing = read_label_file(pair.prediction, spacing)
    ref, ref_spacing = read_label_file(pair.label, spacing)
    if pred.shape != ref.shape:
        raise ValueError(f"case {pair.case_id}: prediction {pair.prediction} has shape {pred.shape} but label "
                         f"{pair.label} has {ref.shape}")
    pred_nifti, ref_nifti = not pair.prediction.name.endswith(".npy"), not pair.label.name.endswith(".npy")
    if pred_nifti and ref_nifti:
        if not np.allclose(pred_spacing, ref_spacing, rtol=0, atol=SPACING_TOLERANCE):
            raise ValueError(f"case {pair.case_id}: voxel spacing of {pair.prediction} {pred_spacing} differs from "
                             f"that of {pair.label} {ref_spacing}")
        _check_same_axes(pair)
    elif pred_nifti and spacing is None:  # .npy label: the prediction's header is the only spacing there is
        ref_spacing = pred_spacing
    if lesions is not None:
        _add_lesions(lesions, pair.case_id, pred, ref, prob_files)
    evaluation = folder_evaluation(task)
    return accumulator.update(_to_task_labels(pred, evaluation, convention, pair.prediction),
                              _to_task_labels(ref, evaluation, convention, pair.label), ref_spacing, pair.case_id)


def metric_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: nanmean, number of non-NaN cases and number of NaN cases, over ``rows`` (text columns such as
    ``prompt_mode`` are not metrics)."""
    keys = [k for k, v in (rows[0] if rows else {}).items()
            if k not in ("case_id", "model", "seed", "fold") and not isinstance(v, str)]
    mean, n_valid, n_nan = {}, {}, {}
    for key in keys:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        finite = [v for v in values if not math.isnan(v)]
        mean[key] = float(np.mean(finite)) if finite else float("nan")
        n_valid[key] = len(finite)
        n_nan[key] = len(values) - len(finite)
    return {"n_cases": len(rows), "mean": mean, "n_valid": n_valid, "nan_count": n_nan}


def _probability_map(files: dict[str, Path], case_id: str, shape: tuple[int, ...]) -> np.ndarray:
    """The foreground probability of ``case_id`` among the ``--prob_dir`` files (see the module docstring)."""
    path = files.get(f"{case_id}{PROBABILITY_SUFFIX}", files.get(case_id))  # the label map may sit beside it
    if path is None:
        raise ValueError(f"--prob_dir: no probability file for case {case_id!r} "
                         f"({case_id}.nii.gz or {case_id}{PROBABILITY_SUFFIX}.nii.gz)")
    array, _ = read_label_file(path) if path.name.endswith(".npy") else (load_label_float(path), None)
    if array.ndim == 4:
        array = array[..., -1] if not path.name.endswith(".npy") else array[-1]
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"case {case_id}: probability map {path} has shape {array.shape}, the prediction {shape}")
    return np.asarray(array, dtype=np.float32)


def load_label_float(path: Path) -> np.ndarray:
    """A NIfTI file's data as float32 (probability maps)."""
    return np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))


def _add_lesions(lesions: LesionAccumulator, case_id: str, pred: np.ndarray, ref: np.ndarray,
                 prob_files: dict[str, Path] | None) -> None:
    """Boxes of a case's predicted and reference masks (non-zero = foreground) into ``lesions``."""
    probability = _probability_map(prob_files, case_id, pred.shape) if prob_files is not None else None
    min_size = lesions.settings.min_size
    boxes, scores = scored_boxes(np.asarray(pred) != 0, probability, min_size=min_size)
    lesions.add_boxes(case_id, boxes, scores, boxes_from_mask(np.asarray(ref) != 0, min_size=min_size))


def evaluate_folder(pred_dir: Path, label_dir: Path, *, task: str = "brats", label_convention: str = "brats2021",
                    spacing: Sequence[float] | None = None, include_hd95: bool = True, prob_dir: Path | None = None,
                    lesions: LesionSettings | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-case metric rows and a summary (means, NaN counts, rules) of a prediction folder.

    Raises:
        ValueError: unknown task/convention, unmatched files, shape or spacing mismatches, label values
            outside the convention -- each naming the file.
    """
    evaluation = folder_evaluation(task)
    spec = evaluation.spec
    if label_convention not in CONVENTIONS:
        raise ValueError(f"--label_convention {label_convention!r} is not one of {CONVENTIONS}")
    if spacing is not None and (len(spacing) != 3 or any(s <= 0 for s in spacing)):
        raise ValueError(f"--spacing needs three values > 0 (mm), got {list(spacing)}")
    if prob_dir is not None and not evaluation.lesions:
        with_lesions = [name for name in folder_task_names() if folder_evaluation(name).lesions]
        raise ValueError(f"--prob_dir scores lesion boxes, which only --task {' or '.join(with_lesions)} computes")
    pairs = match_pairs(Path(pred_dir), Path(label_dir))
    accumulator = SegmentationMetricAccumulator(spec=spec, include_hd95=include_hd95)
    lesion_acc = LesionAccumulator(lesions or LesionSettings()) if evaluation.lesions else None
    prob_files = _index(Path(prob_dir), "--prob_dir") if prob_dir is not None else None
    for pair in pairs:
        evaluate_pair(pair, accumulator, task=task, convention=label_convention, spacing=spacing, lesions=lesion_acc,
                      prob_files=prob_files)
    rows = accumulator.per_case()
    extra: dict[str, Any] = {}
    if lesion_acc is not None:
        counts = {r["case_id"]: r for r in lesion_acc.per_case()}
        rows = [dict(r, **counts[r["case_id"]]) for r in rows]
        extra["lesion_metrics"] = {k: v for k, v in lesion_acc.aggregate().items() if k != "n_cases"}
        extra["lesion_rules"] = dict(min_size=lesion_acc.settings.min_size, hit_rule=lesion_acc.settings.hit_rule,
                                     scores="probability maximum per component" if prob_dir else "1.0 per component")
    summary = dict(task=task, label_convention=label_convention, pred_dir=str(pred_dir), label_dir=str(label_dir),
                   regions={k: list(v) for k, v in spec.regions.items()}, **metric_summary(rows), **extra,
                   empty_mask_rules=dict(EMPTY_MASK_RULES))
    logger.info("evaluated %d cases of %s against %s", len(rows), pred_dir, label_dir)
    return rows, summary
