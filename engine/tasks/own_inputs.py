"""A model's own preprocessing inside a task: its cases for training and prediction, its predictions back on the
dataset's grid for scoring.

Rule (every stage: training, validation, test, checkpoint re-evaluation): the model sees its own cases
(:func:`dataio.model_cache.model_inputs`: the dataset's case resampled / normalised as ``ModelInfo.preprocessing``
declares, cached under its own key); its logits (and click masks) are resampled back onto the dataset's cached grid
(:func:`dataio.model_preprocess.to_dataset_grid`) and scored there against the dataset's label with the dataset's
spacing, exactly where and how every other model of the sweep is scored, so the tables compare like for like.
Clicks are simulated on the model's grid from its own (nearest-neighbour resampled) label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dataio.model_cache import model_inputs
from dataio.model_preprocess import check_model_params, to_dataset_grid
from dataio.types import CachedCase


class OwnInputs:
    """The cases of one model's own preprocessing ``params`` (JSON form of ``InputPreprocessing``), by dataset case.

    The mapped cases are kept per case id (memory-mapped from the cache, so holding them costs no memory)."""

    def __init__(self, params: dict[str, Any]) -> None:
        check_model_params(params)
        self.params = dict(params)
        self._cases: dict[str, tuple[CachedCase, CachedCase]] = {}

    def case(self, case: CachedCase) -> CachedCase:
        """``case`` under the model's preprocessing (built and cached on first use)."""
        known = self._cases.get(case.case_id)
        if known is None or known[0] is not case:
            known = (case, model_inputs(case, self.params))
            self._cases[case.case_id] = known
        return known[1]

    def cases(self, cases: list[CachedCase]) -> list[CachedCase]:
        return [self.case(c) for c in cases]

    def logits_back(self, logits: torch.Tensor, own: CachedCase, case: CachedCase) -> torch.Tensor:
        """Logits (K, *S_own) on the model's grid resampled (trilinear) onto ``case``'s grid (K, *S)."""
        return to_dataset_grid(logits, own.spacing, case.spacing, tuple(case.image.shape[1:]))

    def mask_back(self, mask: np.ndarray, own: CachedCase, case: CachedCase) -> np.ndarray:
        """A 0/1 mask on the model's grid on ``case``'s grid: resampled as a float (trilinear), then >= 0.5."""
        values = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None]
        return (self.logits_back(values, own, case)[0] >= 0.5).numpy()
