"""The trained runs an ensemble averages, and how their predictions are combined.

A member is one ok job of the sweep (``source`` volbench) with its best checkpoint. It is rebuilt and predicts a
case exactly as the sweep's test evaluation and ``evaluate_experiment.py checkpoints`` do
(``engine.evaluate.checkpoints.load_model`` / ``settings_from_meta``, ``task.predict_case``: sliding window of the
checkpoint's patch size and validation overlap, Gaussian blending), giving the task's dense logits (K, D, H, W) on
the cached crop of the case.

Combination: the softmax probabilities of the members are averaged voxel by voxel, and the average is handed on as
its logarithm (clipped at 1e-12), so the task's accumulator takes the argmax of the mean probability as the label
and its softmax gives the mean probability back (the lesion scores of binary tasks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dataio.types import CachedCase
from engine.evaluate.checkpoints import load_model, settings_from_meta
from engine.inference import InferenceSettings
from engine.results.job_results import job_folders
from engine.tasks import Task, task_from_meta
from utils.schema import JOBS_DIR, SOURCE_COLUMN, fold_value

log = logging.getLogger(__name__)

PROBABILITY_FLOOR = 1e-12


@dataclass(frozen=True)
class Member:
    """One ok run of the sweep: its model, seed, fold and best checkpoint."""

    model: str
    seed: int
    fold: int | None
    checkpoint: Path


def ok_members(output_dir: Path, models: list[str]) -> dict[str, list[Member]]:
    """Per model of ``models`` (in that order) its ok trained runs, read from the job folders (rows of other tools
    and of ensembles are not members); a run whose checkpoint file is gone is left out with a warning."""
    found: dict[str, list[Member]] = {m: [] for m in models}
    for folder in job_folders(Path(output_dir) / JOBS_DIR):
        row = folder.run_row()
        if row is None or str(row.get("model")) not in found or row.get("status") != "ok":
            continue
        if str(row.get(SOURCE_COLUMN) or "volbench") != "volbench":
            continue
        checkpoint = Path(str(row.get("checkpoint") or ""))
        if not checkpoint.is_file():
            log.warning("%s: checkpoint %s is missing; the run is left out of ensembles", folder.path.name, checkpoint)
            continue
        found[str(row["model"])].append(Member(str(row["model"]), int(row["seed"]), fold_value(row.get("fold")),
                                               checkpoint))
    return found


@dataclass
class LoadedMember:
    """A member's rebuilt network (eval mode), its inference settings and its task."""

    member: Member
    network: nn.Module
    settings: InferenceSettings
    task: Task

    def logits(self, case: CachedCase) -> torch.Tensor:
        """The member's dense logits (K, D, H, W) of ``case``, float32 on the CPU.

        Raises:
            ValueError: the task predicts something else than dense logits (boxes, prompts).
        """
        prediction = self.task.predict_case(self.network, case, self.settings)
        if not isinstance(prediction, torch.Tensor):
            raise ValueError(f"{self.member.model}: its task {self.task.name!r} predicts {type(prediction).__name__}, "
                             "not dense logits; ensembles and post-processing need probabilities per voxel")
        return prediction.float().cpu()


def load_member(member: Member, device: torch.device, *, amp: bool = True, lesions: Any = None) -> LoadedMember:
    """Rebuild ``member`` from its checkpoint with the sweep's inference settings (``lesions``: the lesion flags of
    the evaluation, as ``task_from_meta`` takes them)."""
    network, payload = load_model(member.checkpoint, device)
    meta = payload["meta"]
    return LoadedMember(member, network, settings_from_meta(meta, member.checkpoint, device, amp=amp),
                        task_from_meta(meta, lesions))


def check_same_task(members: list[LoadedMember]) -> Task:
    """The task shared by ``members`` (the first one's); ``ValueError`` when two differ in task or outputs."""
    first = members[0].task
    for other in members[1:]:
        if (other.task.name, other.task.n_outputs, other.task.result_columns()) != \
                (first.name, first.n_outputs, first.result_columns()):
            raise ValueError(f"{other.member.model} ({other.task.name}, {other.task.n_outputs} outputs) and "
                             f"{members[0].member.model} ({first.name}, {first.n_outputs} outputs) cannot be "
                             "ensembled: their tasks differ")
    return first


def mean_probability(logits: list[torch.Tensor]) -> torch.Tensor:
    """The log of the voxel-wise mean of the members' softmax probabilities (channel axis 0), clipped at
    ``PROBABILITY_FLOOR``; one member gives its own log-softmax (same argmax, same softmax)."""
    mean = torch.stack([torch.softmax(x.float(), dim=0) for x in logits]).mean(0)
    return torch.log(mean.clamp_min(PROBABILITY_FLOOR))


def relabelled(logits: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """``logits`` whose argmax is ``labels``: voxels whose label changed (post-processing) get the one-hot
    probability of their new label, the others keep their softmax; returned as log-probabilities."""
    probability = torch.softmax(logits.float(), dim=0)
    new = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    changed = probability.argmax(0) != new
    if changed.any():
        onehot = torch.nn.functional.one_hot(new, probability.shape[0]).movedim(-1, 0).to(probability.dtype)
        probability = torch.where(changed[None], onehot, probability)
    return torch.log(probability.clamp_min(PROBABILITY_FLOOR))
