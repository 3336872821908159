"""``--postprocess``: nnU-Net's largest-component post-processing, chosen per model on its validation predictions.

Each ok run of a model predicts its own validation cases (``splits.json``: with ``--use_5fold`` the cases of its
fold, i.e. the out-of-fold predictions of nnU-Net's cross-validation; on the holdout split the validation cases, once
per seed), exactly as the sweep predicts (``engine.evaluate.ensemble_members``); the argmax label maps of every run
are pooled and ``metrics.postprocess.choose_postprocessing`` keeps the steps that raise the validation Dice (rules
in its module docstring). The decisions, with the validation Dice before and after each step, are written to
``postprocessing.json`` in the results folder; ``engine.evaluate.ensemble`` applies each model's rule to its test
predictions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dataio.types import CachedCase
from engine.evaluate.checkpoints import split_ids
from engine.evaluate.ensemble_members import Member, load_member
from metrics.postprocess import CONNECTIVITY, PostprocessDecision, choose_postprocessing
from metrics.regions import MetricSpec
from utils.atomic import atomic_write_json

log = logging.getLogger(__name__)

POSTPROCESSING_JSON = "postprocessing.json"
CaseSubset = Callable[[list[str]], list[CachedCase]]


def validation_pairs(members: list[Member], subset: CaseSubset, splits: dict[str, Any], splits_source: Path, *,
                     device: torch.device, amp: bool = True,
                     lesions: Any = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], MetricSpec]:
    """``(prediction, reference)`` label maps of every member's labelled validation cases (its fold's ``val`` ids),
    and the metric spec of their task.

    Raises:
        ValueError: the task has no region spec (not a dense segmentation task) or predicts no dense logits.
    """
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    spec: MetricSpec | None = None
    for member in members:
        loaded = load_member(member, device, amp=amp, lesions=lesions)
        spec = getattr(loaded.task, "spec", None)
        if not isinstance(spec, MetricSpec):
            raise ValueError(f"{member.model}: its task {loaded.task.name!r} has no regions to post-process")
        dtype = np.uint8 if spec.n_classes <= 256 else np.int32
        for case in subset(split_ids(splits, "val", member.fold, splits_source)):
            if case.label is not None:
                labels = loaded.logits(case).argmax(0).numpy().astype(dtype)
                pairs.append((labels, np.asarray(case.label)))
        del loaded
    if spec is None:
        raise ValueError("no run to choose a post-processing on")
    return pairs, spec


def decide(members: dict[str, list[Member]], subset: CaseSubset, splits: dict[str, Any], splits_source: Path, *,
           device: torch.device, amp: bool = True, lesions: Any = None) -> dict[str, PostprocessDecision | str]:
    """Per model with ok runs its decision, or the error that stopped it (a model of another task, say)."""
    decisions: dict[str, PostprocessDecision | str] = {}
    for model, runs in members.items():
        if not runs:
            continue
        try:
            pairs, spec = validation_pairs(runs, subset, splits, splits_source, device=device, amp=amp,
                                           lesions=lesions)
            decisions[model] = choose_postprocessing(pairs, spec)
            log.info("post-processing of %s: %s (validation dice_mean %.4f -> %.4f over %d predictions)", model,
                     decisions[model].label, decisions[model].dice_before.get("dice_mean", float("nan")),
                     decisions[model].dice_after.get("dice_mean", float("nan")), len(pairs))
        except ValueError as exc:
            log.error("post-processing of %s: %s", model, exc)
            decisions[model] = f"{type(exc).__name__}: {exc}"
    return decisions


def write_decisions(output_dir: Path, decisions: dict[str, PostprocessDecision | str]) -> Path:
    """``postprocessing.json``: the rules, and per model its decision (or ``error``)."""
    models = {m: d.to_dict() if isinstance(d, PostprocessDecision) else dict(error=d) for m, d in decisions.items()}
    path = Path(output_dir) / POSTPROCESSING_JSON
    atomic_write_json(path, dict(
        connectivity=CONNECTIVITY,
        steps="(1) keep the largest component of the whole foreground; (2) with several regions, of each region in "
              "order; removed voxels become background",
        keep_rule="step (1) when the mean validation dice_mean rises and no dice_<region|class> mean falls; a region "
                  "step when that region's mean Dice rises and no dice_<region|class> mean falls",
        validation="every ok run predicts its own fold's validation cases; the label maps of all runs are pooled",
        models=models))
    return path
