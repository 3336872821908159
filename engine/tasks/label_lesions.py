"""Lesion metrics of chosen foreground labels of a multi-class task (``--lesion_labels NAME ...``).

For label ``k`` named ``name``: the reference lesions are the 26-connected components of ``label == k`` and the
predicted ones the components of ``argmax == k``, each scored by its highest softmax probability of class ``k``;
matching, AP/mAP/mAR, FROC and the per-case counts are the binary lesion track's (``engine.tasks.lesion_metrics``,
the same ``--min_lesion_size``, ``--lesion_hit``, ``--lesion_score_threshold``). Every lesion column ends in
``_<name>`` (``map_tumour``, ``froc_cpm_tumour``, ``lesions_found_tumour``). Their scan-bootstrap intervals are not
computed (the ``boxes`` table holds the binary track's single lesion class only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from dataio.types import CachedCase

from engine.tasks.lesion_metrics import (LESION_RUN_COLUMNS, LesionAccumulator, LesionSettings,
                                         prediction_from_probability)


def label_lesion_columns(names: tuple[str, ...]) -> list[str]:
    """The run-table columns of the lesion metrics of ``names``, label by label."""
    return [f"{column}_{name}" for name in names for column in LESION_RUN_COLUMNS]


class LabelLesions:
    """The lesion metrics of one foreground label ``index`` (internal label) named ``name``."""

    def __init__(self, index: int, name: str, settings: LesionSettings) -> None:
        self.index, self.name = int(index), str(name)
        self.accumulator = LesionAccumulator(settings)

    def update(self, case: CachedCase, logits: torch.Tensor, labels: np.ndarray) -> None:
        """Add one case: ``logits`` (K, D, H, W), ``labels`` its argmax."""
        reference = dataclasses.replace(case, label=(np.asarray(case.label) == self.index).astype(np.uint8))
        probability = torch.softmax(logits.float(), dim=0)[self.index].numpy()
        found = prediction_from_probability(probability, labels == self.index, self.accumulator.settings.min_size)
        self.accumulator.update(reference, found)

    def _named(self, values: dict[str, Any]) -> dict[str, Any]:
        return {(k if k == "case_id" else f"{k}_{self.name}"): v for k, v in values.items()}

    def per_case(self) -> list[dict[str, Any]]:
        return [self._named(row) for row in self.accumulator.per_case()]

    def aggregate(self) -> dict[str, float]:
        return self._named({k: v for k, v in self.accumulator.aggregate().items() if k != "n_cases"})

    def share(self) -> Any:
        return self.accumulator.share()

    def merge(self, shares: list[Any], order: list[str]) -> None:
        self.accumulator.merge(shares, order)
