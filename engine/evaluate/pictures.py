"""What ``evaluate_experiment.py`` writes besides its tables: which predictions it keeps, and the pictures
(slice overlays with each run's per-case Dice, Grad-CAM of one run).

Predictions are kept under ``predictions/<run>/`` only when asked (``--save_predictions``), when they come
with asked-for probabilities (``--save_probabilities``), or when they are the only output (no case has a
label). Otherwise the cases drawn by ``--visualize_cases`` are predicted into a temporary folder that is
removed once the overlays are drawn.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("volbench.evaluate")
TEMPORARY_PREDICTIONS = ".overlay_predictions"


@dataclass
class PredictionPolicy:
    """Where predictions go: ``root`` (None: nowhere), for which cases (``save_ids``: None = all), kept or not."""

    root: Path | None
    save_ids: set[str] | None
    keep: bool
    reason: str


def prediction_policy(args: argparse.Namespace, output_dir: Path, shown: list[str], labelled: bool) -> PredictionPolicy:
    """Decide and log (one line) which predictions are written and which are kept."""
    keep_dir = output_dir / "predictions"
    if args.save_predictions or args.save_probabilities or not labelled:
        why = ("--save_predictions" if args.save_predictions else
               "--save_probabilities: labels beside the probabilities" if args.save_probabilities else
               "no case has a label, so predictions are the only output")
        policy = PredictionPolicy(keep_dir, None, True, f"every case's kept in {keep_dir}/ ({why})")
    elif shown:
        policy = PredictionPolicy(output_dir / TEMPORARY_PREDICTIONS, set(shown), False,
                                  f"not kept (add --save_predictions); the {len(shown)} case(s) of "
                                  "--visualize_cases are predicted for the overlays and removed after drawing")
    else:
        policy = PredictionPolicy(None, set(), False, "not written (add --save_predictions to keep them)")
    log.info("predictions: %s", policy.reason)
    return policy


def discard_temporary(policy: PredictionPolicy) -> None:
    """Remove the temporary prediction folder of a policy that does not keep them."""
    if not policy.keep and policy.root is not None and policy.root.exists():
        shutil.rmtree(policy.root)


def chosen_cases(values: list[str] | None, evaluated: list[str]) -> list[str]:
    """--visualize_cases: N = the first N evaluated cases (saying so when fewer exist), else the given ids.

    Raises:
        ValueError: N < 1, or ids that are not among the evaluated cases.
    """
    if not values:
        return []
    if len(values) == 1 and values[0].isdigit():
        n = int(values[0])
        if n < 1:
            raise ValueError(f"--visualize_cases {n}: give N >= 1 or case ids")
        if n > len(evaluated):
            log.warning("--visualize_cases %d: only %d case(s) evaluated; drawing all %d", n, len(evaluated),
                        len(evaluated))
        return evaluated[:n]
    unknown = [v for v in values if v not in evaluated]
    if unknown:
        raise ValueError(f"--visualize_cases {unknown} are not among the evaluated cases {evaluated[:10]}")
    return list(values)


def dice_text(row: dict[str, Any] | None) -> str:
    """``"Dice WT 0.912  TC 0.801  ET n/a"`` from a per-case row (regions in column order; n/a = NaN)."""
    if not row:
        return "no label"
    classes = ("mean", "ncr", "ed")
    parts = [f"{k[5:].upper()} {'n/a' if _nan(v) else f'{float(v):.3f}'}" for k, v in row.items()
             if k.startswith("dice_") and k[5:] not in classes]
    return "Dice " + "  ".join(parts) if parts else "no Dice"


def _nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def draw_overlays(output_dir: Path, plan: list[Any], results: list[Any], run_cases: dict[str, list[Any]],
                  files: dict[str, Any], shown: list[str]) -> None:
    """overlays/overlay_{case}.png of every shown case: inputs once, then each run's prediction and Dice."""
    from visualization.overlays import draw_case_overlay

    for case_id in shown:
        case_files = files.get(case_id)
        if case_files is None or not case_files.images:
            log.warning("no per-modality image files for case %s (4D source?); overlay skipped", case_id)
            continue
        preds, scores = {}, {}
        for run, res in zip(plan, results):
            if any(c.case_id == case_id for c in run_cases[run.label]):
                preds[run.label] = res.prediction_dir / f"{case_id}.nii.gz"
                scores[run.label] = dice_text(next((r for r in res.per_case if r.get("case_id") == case_id), None))
        draw_case_overlay(case_id, case_files.images, preds, output_dir / "overlays" / f"overlay_{case_id}.png",
                          label=case_files.label, convention=case_files.convention, scores=scores)
