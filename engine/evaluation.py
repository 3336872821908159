"""Evaluate a model on whole cases: the task predicts each case and its accumulator computes the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
from utils.progress import progress

from dataio.types import CachedCase

from utils.distributed import all_gather_objects, rank_of
from utils.rank_agreement import agree

from engine.inference import AttentionRecorder, InferenceSettings

if TYPE_CHECKING:
    from engine.tasks.base import Task


@dataclass
class EvaluationResult:
    """Per-case metric rows, their aggregate, the mean loss (when asked), modality weights (attention
    models) and the task's extra tables (e.g. ``confusion``: the voxel confusion matrix summed over cases,
    rows = reference label, columns = predicted label)."""

    per_case: list[dict[str, Any]]
    aggregate: dict[str, float]
    mean_loss: float | None = None
    attention: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def all_tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every per-case table of this evaluation by table name (``per_case``, ``attention``, task tables)."""
        return dict(self.tables, per_case=self.per_case, attention=self.attention)


@dataclass(frozen=True)
class EvaluationRequest:
    """What one evaluation pass computes and reports.

    ``stage`` ``val`` computes the task's cheap metrics, ``test`` all of them; ``with_loss`` asks the
    accumulator for the mean loss. With ``record_attention`` the model is called with
    ``return_attention=True`` and the mean weight per stage and modality is returned for every case.
    ``desc`` labels the progress bar. ``on_prediction(case, prediction)`` sees every case's prediction,
    labelled or not (e.g. to write it). ``shard=(rank, world_size)``: this rank predicts cases
    ``rank::world_size`` and the shares of every rank are gathered.
    """

    stage: str = "test"
    with_loss: bool = False
    record_attention: bool = False
    desc: str = "eval"
    on_prediction: Callable[[CachedCase, Any], None] | None = None
    shard: tuple[int, int] = (0, 1)


def evaluate_cases(model: nn.Module, cases: list[CachedCase], task: "Task", settings: InferenceSettings,
                   request: EvaluationRequest = EvaluationRequest()) -> EvaluationResult:
    """Predict every case with ``task.predict_case`` and feed labelled cases to the task's accumulator.

    Under a sharded ``request`` each case is evaluated exactly once and every rank returns the whole
    result (rows in the order of ``cases``, equal to one process's).
    """
    rank, world = request.shard
    accumulator = task.new_accumulator(stage=request.stage, with_loss=request.with_loss)
    predictor: nn.Module = AttentionRecorder(model) if request.record_attention else model
    attention_rows: list[dict[str, Any]] = []
    error: Exception | None = None
    try:
        for case in progress(cases[rank::world], desc=request.desc, leave=False, unit="case"):
            prediction = task.predict_case(predictor, case, settings)
            if request.on_prediction is not None:
                request.on_prediction(case, prediction)
            if case.label is None:
                continue
            accumulator.update(case, prediction)
            if request.record_attention:
                for stage_name, weights in predictor.mean_weights().items():  # type: ignore[union-attr]
                    for modality, weight in zip(settings.modalities, weights):
                        attention_rows.append(dict(case_id=case.case_id, stage=stage_name, modality=modality,
                                                   weight=weight))
    except Exception as exc:  # noqa: BLE001 - a sharded evaluation tells the other ranks first (below)
        if world == 1:
            raise
        error = exc
    if world > 1:
        agree(error)  # an error on any rank stops every rank here (RankFailed), before the gather
        accumulator, attention_rows = _gather(accumulator, attention_rows, [c.case_id for c in cases])
    return _result(task, accumulator, attention_rows)


def score_predictions(cases: list[CachedCase], task: "Task", predict: Callable[[CachedCase], Any], *,
                      desc: str = "score") -> EvaluationResult:
    """Test metrics of predictions made elsewhere (``predict(case)``: the task's prediction of a labelled case,
    e.g. read from another tool's files), by the accumulator that scores a model's test cases."""
    accumulator = task.new_accumulator(stage="test")
    for case in progress(cases, desc=desc, leave=False, unit="case"):
        accumulator.update(case, predict(case))
    return _result(task, accumulator, [])


def _result(task: "Task", accumulator: Any, attention_rows: list[dict[str, Any]]) -> EvaluationResult:
    """The evaluation's rows: the accumulator's, with the task's ``prompt_mode`` / ``click_mode`` on every row."""
    labels = task.run_labels()
    return EvaluationResult(per_case=[dict(r, **labels) for r in accumulator.per_case()],
                            aggregate=accumulator.aggregate(),
                            mean_loss=accumulator.mean_loss(), attention=attention_rows,
                            tables=accumulator.tables())


def _gather(accumulator: Any, attention_rows: list[dict[str, Any]], order: list[str]) -> tuple[Any, list]:
    """Every rank's share merged into this rank's accumulator and one attention list, in case order."""
    shares = all_gather_objects((accumulator.share(), attention_rows))
    own = rank_of()
    accumulator.merge([share for r, (share, _) in enumerate(shares) if r != own], order)
    position = {c: i for i, c in enumerate(order)}
    rows = sorted((r for _, rows in shares for r in rows), key=lambda r: position.get(r["case_id"], len(order)))
    return accumulator, rows
