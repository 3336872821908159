"""Ensembles and post-processed predictions as rows of a sweep: ``--ensemble SPEC ...`` and ``--postprocess``.

Rows (``source`` ``ensemble``; epochs 0, no efficiency columns; one job folder each, which the reducer puts into
every table; scored by the task's test accumulator on the sweep's test cases, in the space of the sweep's own test
predictions):

- ``--ensemble folds``: ``<model>_ensemble`` (seed 0, fold empty) for every model with more than one ok run: the
  softmax probabilities of all its runs' best checkpoints averaged on each test case, then the argmax
  (``engine.evaluate.ensemble_members``: the members predict as the sweep's test evaluation does).
- ``--ensemble a+b[+c]``: row ``a+b`` (seed 0, fold empty): every ok run of the named models averaged the same way.
- ``--postprocess``: per model the largest-component rule chosen on its validation predictions
  (``engine.evaluate.postprocess``, ``postprocessing.json``); ``<model>_postprocessed`` rows, one per ok run of the
  model (its seed and fold), are that run's test predictions with the rule applied, and with ``--ensemble folds``
  ``<model>_ensemble_postprocessed`` is the ensemble's. Cross-model ensembles are not post-processed.

Run rows carry ``postprocessing`` (the rule applied: ``foreground+wt``, ``none``) and ``ensemble_members``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dataio.types import CachedCase
from engine.evaluate.ensemble_members import (LoadedMember, Member, check_same_task, load_member, mean_probability,
                                              ok_members, relabelled)
from engine.evaluate.postprocess import CaseSubset, decide, write_decisions
from engine.evaluation import EvaluationResult
from engine.results.job_results import JobFolder
from engine.tasks import Task
from metrics.postprocess import ComponentStep, PostprocessDecision, apply_rule
from utils.progress import progress
from utils.schema import JOBS_DIR, SOURCE_COLUMN

log = logging.getLogger(__name__)

ENSEMBLE_SOURCE = "ensemble"
ENSEMBLE_SEED = 0
ENSEMBLE_INDEX = 2 << 20  # job.json index: after the trained jobs and the external rows
FOLDS = "folds"


def check_ensembles(values: list[str] | None, models: list[str]) -> None:
    """``--ensemble`` entries: ``folds`` or two or more distinct models of the sweep joined by ``+``.

    Raises:
        ValueError: naming the flag and the entry.
    """
    for value in values or []:
        if value == FOLDS:
            continue
        names = value.split("+")
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ValueError(f"--ensemble {value!r}: give 'folds' or two or more distinct model names joined by '+' "
                             "(e.g. unet3d_s+swin_unetr)")
        unknown = [n for n in names if n not in models]
        if unknown:
            raise ValueError(f"--ensemble {value!r}: {unknown} are not models of this sweep ({', '.join(models)})")


@dataclass(frozen=True)
class RowPlan:
    """One row to score: its name, seed and fold, the members whose probabilities are averaged, and the
    post-processing rule applied to the averaged prediction (empty: none)."""

    name: str
    seed: int
    fold: int | None
    members: tuple[Member, ...]
    rule: tuple[ComponentStep, ...] = ()
    rule_label: str = "none"


@dataclass(frozen=True)
class EnsembleInputs:
    """What the rows are computed from: the sweep's test cases, its validation cases by id (``subset``), its split
    (``splits.json`` content and where it came from), the device, AMP and the lesion flags of the evaluation."""

    test_cases: list[CachedCase]
    subset: CaseSubset
    splits: dict[str, Any]
    splits_source: Path
    device: torch.device
    amp: bool = True
    lesions: Any = None


def plan_rows(specs: list[str], members: dict[str, list[Member]],
              decisions: dict[str, PostprocessDecision | str]) -> dict[tuple[str, ...], list[RowPlan]]:
    """The rows of ``specs`` and of the post-processing ``decisions``, grouped by the models whose networks they
    need (each group predicts every test case once per member)."""
    groups: dict[tuple[str, ...], list[RowPlan]] = {}
    for model, runs in members.items():
        decision = decisions.get(model)
        rule = (tuple(decision.rule), decision.label) if isinstance(decision, PostprocessDecision) else None
        plans = [RowPlan(f"{model}_postprocessed", m.seed, m.fold, (m,), *rule) for m in runs] if rule else []
        if FOLDS in specs and len(runs) > 1:
            plans.append(RowPlan(f"{model}_ensemble", ENSEMBLE_SEED, None, tuple(runs)))
            if rule:
                plans.append(RowPlan(f"{model}_ensemble_postprocessed", ENSEMBLE_SEED, None, tuple(runs), *rule))
        if plans:
            groups[(model,)] = plans
    for spec in dict.fromkeys(s for s in specs if s != FOLDS):
        names = tuple(spec.split("+"))
        runs = tuple(m for name in names for m in members.get(name, []))
        missing = [n for n in names if not members.get(n)]
        if missing:
            log.warning("--ensemble %s: %s have no ok run; the row is left out", spec, missing)
            continue
        groups.setdefault(names, []).append(RowPlan(spec, ENSEMBLE_SEED, None, runs))
    return groups


def _result(task: Task, accumulator: Any) -> EvaluationResult:
    """An accumulator's rows as the sweep's evaluation returns them (``run_labels`` on every per-case row)."""
    labels = task.run_labels()
    return EvaluationResult(per_case=[dict(r, **labels) for r in accumulator.per_case()],
                            aggregate=accumulator.aggregate(), tables=accumulator.tables())


def score_group(plans: list[RowPlan], inputs: EnsembleInputs) -> tuple[Task, list[EvaluationResult]]:
    """Test metrics of every row of ``plans``: each member predicts each labelled test case once, each row averages
    its members' probabilities and applies its rule (``engine.evaluate.ensemble_members``)."""
    members = list(dict.fromkeys(m for plan in plans for m in plan.members))
    loaded: dict[Member, LoadedMember] = {m: load_member(m, inputs.device, amp=inputs.amp, lesions=inputs.lesions)
                                          for m in members}
    task = check_same_task(list(loaded.values()))
    accumulators = [task.new_accumulator(stage="test") for _ in plans]
    labelled = [c for c in inputs.test_cases if c.label is not None]
    for case in progress(labelled, desc="+".join(dict.fromkeys(m.model for m in members)), leave=False, unit="case"):
        logits = {m: loaded[m].logits(case) for m in members}
        means: dict[tuple[Member, ...], torch.Tensor] = {}
        for plan, accumulator in zip(plans, accumulators):
            if plan.members not in means:
                means[plan.members] = mean_probability([logits[m] for m in plan.members])
            prediction = means[plan.members]
            if plan.rule:
                prediction = relabelled(prediction, apply_rule(prediction.argmax(0).numpy(), plan.rule))
            accumulator.update(case, prediction)
    return task, [_result(task, a) for a in accumulators]


def _folder(output_dir: Path, plan: RowPlan, position: int, **info: Any) -> JobFolder:
    folder = JobFolder.of(Path(output_dir) / JOBS_DIR, plan.name, plan.seed, plan.fold)
    folder.clear_results()
    members = [dict(model=m.model, seed=m.seed, fold=m.fold, checkpoint=str(m.checkpoint)) for m in plan.members]
    folder.write_job(dict(model=plan.name, seed=plan.seed, fold=plan.fold, index=ENSEMBLE_INDEX + position,
                          source=ENSEMBLE_SOURCE, members=members, postprocessing=plan.rule_label, **info))
    return folder


def _row(plan: RowPlan, **values: Any) -> dict[str, Any]:
    return dict(model=plan.name, seed=plan.seed, fold=plan.fold, epochs=0, **values, postprocessing=plan.rule_label,
                ensemble_members=len(plan.members), **{SOURCE_COLUMN: ENSEMBLE_SOURCE})


def write_row(output_dir: Path, plan: RowPlan, result: EvaluationResult, task: Task, position: int) -> dict[str, Any]:
    """``plan``'s job folder ``jobs/<name>_seed_<s>[_fold_<k>]`` with its per-case tables and its run row."""
    folder = _folder(output_dir, plan, position, result_columns=list(task.result_columns()))
    keys = dict(model=plan.name, seed=plan.seed, fold=plan.fold)
    for table, rows in result.all_tables().items():
        folder.write_table(table, [dict(keys, **r) for r in rows])
    aggregate = {k: v for k, v in result.aggregate.items() if not k.startswith("n_")}
    row = _row(plan, status="ok", error="", n_test_cases=len(result.per_case), **aggregate, **task.run_labels())
    folder.write_table("runs", [row])
    return row


def add_ensemble_rows(output_dir: Path, specs: list[str] | None, postprocess: bool, models: list[str],
                      inputs: EnsembleInputs) -> list[dict[str, Any]]:
    """Choose the post-processing (when asked; ``postprocessing.json``), then score and write every row of
    :func:`plan_rows`; a group that fails (a checkpoint, a task without dense logits) becomes failed rows naming the
    error, and the others go on. Returns the run rows."""
    members = ok_members(output_dir, models)
    decisions: dict[str, PostprocessDecision | str] = {}
    if postprocess:
        decisions = decide(members, inputs.subset, inputs.splits, inputs.splits_source, device=inputs.device,
                           amp=inputs.amp, lesions=inputs.lesions)
        log.info("post-processing decisions written to %s", write_decisions(output_dir, decisions))
    rows: list[dict[str, Any]] = []
    for group, plans in plan_rows(list(specs or []), members, decisions).items():
        try:
            task, results = score_group(plans, inputs)
        except ValueError as exc:
            log.error("ensemble rows of %s failed: %s", "+".join(group), exc)
            for plan in plans:
                folder = _folder(output_dir, plan, len(rows))
                rows.append(_row(plan, status="failed", error=f"{type(exc).__name__}: {exc}"[:500]))
                folder.write_table("runs", [rows[-1]])
            continue
        for plan, result in zip(plans, results):
            rows.append(write_row(output_dir, plan, result, task, len(rows)))
            log.info("%s (seed %s, fold %s; %d members, post-processing %s): dice_mean %.4f", plan.name, plan.seed,
                     plan.fold, len(plan.members), plan.rule_label, float(rows[-1].get("dice_mean", float("nan"))))
    return rows
