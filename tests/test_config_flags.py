"""Every sweep setting is classified for --resume: it either changes results (a resumed sweep must keep it)
or only changes how the work runs; a new flag left unclassified would silently be ignored by resume."""

from __future__ import annotations

import dataclasses

from engine.options.config import ExperimentConfig
from engine.options.resume_check import FREE_FLAGS, RESULT_FLAGS


def test_every_config_field_is_a_result_flag_or_a_free_flag() -> None:
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    classified = set(RESULT_FLAGS) | set(FREE_FLAGS)
    assert not set(RESULT_FLAGS) & set(FREE_FLAGS)
    # model_kwargs are compared per model by resume_differences; batch_size through global_batch (batch x ranks)
    unclassified = fields - classified - {"model_kwargs", "batch_size"}
    assert not unclassified, f"classify {sorted(unclassified)} in engine/options/resume_check.py"
