"""volbench's own code raises no warnings on its ordinary paths (the test suite's warnings summary stays
free of them)."""

from __future__ import annotations

import warnings

import pytest
import torch

from engine.optim import build_optimizer, build_scheduler, step_scheduler


@pytest.mark.parametrize("name", ["cosine", "step", "poly"])
def test_an_epoch_without_optimizer_step_advances_the_schedule_silently(name: str) -> None:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer("adamw", model.parameters(), lr=1.0, weight_decay=0.0)
    sched = build_scheduler(name, opt, epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # e.g. AMP's scaler skipped every step of the first epochs
            step_scheduler(sched, 0.5)
    assert [str(w.message) for w in caught] == []
    assert opt.param_groups[0]["lr"] < 1.0  # the schedule still counted the epochs
