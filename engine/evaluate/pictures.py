"""What ``evaluate_experiment.py checkpoints`` hands to the drawing, besides its tables: which predictions it keeps,
the slice overlays to draw (files: images, labels, each run's predictions) and the Grad-CAM job of one run.

The engine draws nothing (``visualization`` draws, called by the CLI): it writes the files the pictures are drawn
from and describes each picture. Predictions are kept under ``predictions/<run>/`` only when asked
(``--save_predictions``), when they come with asked-for probabilities (``--save_probabilities``), or when they are
the only output (no case has a label). Otherwise the cases drawn by ``--visualize_cases`` are predicted into a
temporary folder that is removed once the overlays are drawn.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
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

    @property
    def temporary(self) -> Path | None:
        """The folder to remove once the overlays are drawn (None when the predictions are kept or not written)."""
        return None if self.keep else self.root


def prediction_policy(output_dir: Path, shown: list[str], labelled: bool, *, save_predictions: bool,
                      save_probabilities: bool) -> PredictionPolicy:
    """Decide and log (one line) which predictions are written and which are kept."""
    keep_dir = output_dir / "predictions"
    if save_predictions or save_probabilities or not labelled:
        why = ("--save_predictions" if save_predictions else
               "--save_probabilities: labels beside the probabilities" if save_probabilities else
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


def remove_folder(folder: Path | None) -> None:
    """Remove a temporary folder (nothing when None or already gone)."""
    if folder is not None and folder.exists():
        shutil.rmtree(folder)


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


@dataclass
class OverlayCase:
    """One slice overlay, all from files: a case's modality images and label (in ``convention``), each run's
    predicted labels (``predictions``, by run) with that run's per-case row (``rows``; None: the case has no label),
    drawn to ``out_path``."""

    case_id: str
    images: dict[str, Path]
    label: Path | None
    convention: str
    predictions: dict[str, Path]
    rows: dict[str, dict[str, Any] | None]
    out_path: Path


def overlay_cases(output_dir: Path, plan: list[Any], results: list[Any], run_cases: dict[str, list[Any]],
                  files: dict[str, Any], shown: list[str]) -> list[OverlayCase]:
    """overlays/overlay_{case}.png of every shown case whose modality files are known (others are logged)."""
    overlays = []
    for case_id in shown:
        case_files = files.get(case_id)
        if case_files is None or not case_files.images:
            log.warning("no per-modality image files for case %s (4D source?); overlay skipped", case_id)
            continue
        predictions, rows = {}, {}
        for run, result in zip(plan, results):
            if any(c.case_id == case_id for c in run_cases[run.label]):
                predictions[run.label] = result.prediction_dir / f"{case_id}.nii.gz"
                rows[run.label] = next((r for r in result.per_case if r.get("case_id") == case_id), None)
        overlays.append(OverlayCase(case_id, dict(case_files.images), case_files.label, case_files.convention,
                                    predictions, rows, output_dir / "overlays" / f"overlay_{case_id}.png"))
    return overlays


@dataclass
class GradcamImage:
    """One Grad-CAM picture: the case's input channels (C, D, H, W), the mask of the class it focuses on (None:
    no label), where it goes and its title."""

    case_id: str
    image: Any
    focus: Any
    out_path: Path
    title: str


@dataclass
class GradcamJob:
    """Grad-CAM of one run's ``model`` at ``layer`` for ``class_idx`` on the shown cases, with sliding windows of
    ``roi_size`` and the channel ``background_channel`` behind the heat map."""

    model: Any
    layer: str
    class_idx: int
    roi_size: tuple[int, ...]
    background_channel: int
    images: list[GradcamImage] = field(default_factory=list)


def gradcam_run(plan: list[Any], wanted: str | None, class_idx: int | None) -> tuple[Any, int]:
    """The run of ``--gradcam_model`` (the first run when None) and its ``--gradcam_class`` (default: the last).

    Raises:
        ValueError: no run has that model or run name; a 2D model; a class the model does not have.
    """
    run = next((r for r in plan if wanted in (None, r.model, r.label)), None)
    if run is None:
        raise ValueError(f"--gradcam_model {wanted!r} is none of the evaluated runs {[r.label for r in plan]}")
    meta = run.meta or {}
    if int(meta.get("spatial_dims", 3)) != 3:
        raise ValueError(f"--gradcam_layer: Grad-CAM 3D needs a 3D model; {run.checkpoint} is 2D")
    n_classes = int(meta.get("n_classes", 4))
    chosen = class_idx if class_idx is not None else n_classes - 1
    if not 0 <= chosen < n_classes:
        raise ValueError(f"--gradcam_class {chosen} is not a class of {run.checkpoint} (0..{n_classes - 1})")
    return run, chosen
