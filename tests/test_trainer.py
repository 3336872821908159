"""Training-loop behaviour: non-finite losses, gradient accumulation, schedulers, early stopping,
failure statuses and sliding-window inference shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from dataio.types import CachedCase, CropBox
from engine.inference import InferenceSettings
from engine.inference import predict_logits
from engine.optim import build_optimizer, build_scheduler, step_scheduler
from engine.tasks import binary_segmentation
from engine.train_state import TrainState
from engine.trainer import (CheckpointFiles, DivergedError, FitInputs, Optimisation, TrainerSettings, fit,
                            train_one_epoch)
from experiment_runner import _failure_status
from utils.checkpoint import load_checkpoint


class _Patches(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        label = (torch.rand(8, 8, 8, generator=g) > 0.7).long()
        return {"image": label[None].float() + 0.1 * torch.randn(1, 8, 8, 8, generator=g), "label": label}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))


def _case(case_id: str) -> CachedCase:
    rng = np.random.default_rng(1)
    label = (rng.random((8, 8, 8)) > 0.7).astype(np.uint8)
    image = label[None].astype(np.float32).repeat(4, axis=0)
    return CachedCase(case_id, case_id, image, label, (1.0, 1.0, 1.0), np.eye(4), (8, 8, 8),
                      CropBox((0, 0, 0), (8, 8, 8)), "internal")


class _CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):  # type: ignore[override]
        type(self).steps += 1
        return super().step(closure)


def test_non_finite_loss_raises_diverged() -> None:
    class NaNNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 2, *x.shape[2:]), float("nan")) * self.w

    model = NaNNet()
    loader = DataLoader(_Patches(2), batch_size=1)
    opt = Optimisation(build_optimizer("adamw", model.parameters(), lr=1e-3, weight_decay=0.0), None, None)
    with pytest.raises(DivergedError, match="non-finite"):
        train_one_epoch(model, loader, binary_segmentation("lesion"), opt, device=torch.device("cpu"),
                        state=TrainState(), desc="t")
    assert _failure_status(DivergedError("x")) == "diverged"
    assert _failure_status(RuntimeError("CUDA out of memory. Tried to allocate")) == "oom"
    assert _failure_status(ValueError("bad")) == "failed"


@pytest.mark.parametrize("accum, expected_steps", [(1, 5), (2, 3), (5, 1)])
def test_gradient_accumulation_steps_the_optimizer_every_n_batches(accum: int, expected_steps: int) -> None:
    model = _net()
    _CountingSGD.steps = 0
    optimizer = _CountingSGD(model.parameters(), lr=0.01)
    train_one_epoch(model, DataLoader(_Patches(5), batch_size=1), binary_segmentation("lesion", loss="standard"),
                    Optimisation(optimizer, None, None, grad_accum=accum), device=torch.device("cpu"),
                    state=TrainState(), desc="t")
    assert _CountingSGD.steps == expected_steps


def test_schedulers_change_the_learning_rate_as_documented() -> None:
    model = _net()
    for name in ("cosine", "step", "poly"):
        opt = build_optimizer("adamw", model.parameters(), lr=1.0, weight_decay=0.0)
        sched = build_scheduler(name, opt, epochs=9)
        for _ in range(9):
            step_scheduler(sched, 0.5)
        assert opt.param_groups[0]["lr"] < 0.2, name
    opt = build_optimizer("adamw", model.parameters(), lr=1.0, weight_decay=0.0)
    plateau = build_scheduler("plateau", opt, epochs=20)
    for _ in range(7):
        step_scheduler(plateau, 0.5)  # no improvement -> halved after patience 5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="--scheduler"):
        build_scheduler("exp", opt, epochs=3)


def test_fit_keeps_the_best_checkpoint_and_stops_early(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv3d(4, 2, 1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.0, 0.0]))  # predicts background everywhere: val Dice stays 0
    settings = TrainerSettings(epochs=10, patience=2, lr=1e-12, scheduler="none", max_grad_norm=None)
    inference = InferenceSettings(modalities=("t1", "t1ce", "t2", "flair"), roi_size=(8, 8, 8), overlap=0.1,
                                  device=torch.device("cpu"))
    loader = DataLoader([{"image": torch.zeros(4, 8, 8, 8), "label": torch.zeros(8, 8, 8, dtype=torch.long)}],
                        batch_size=1)
    inputs = FitInputs(model, binary_segmentation("lesion"), loader, [_case("val_case")], inference)
    files = CheckpointFiles(best=tmp_path / "best.pth", info=dict(model_name="toy", model_kwargs={}, meta={}))
    result = fit(inputs, settings, files, desc="toy")
    assert result.best_epoch == 1
    assert result.epochs_run == 3  # epochs 2 and 3 did not improve -> patience 2 stops after epoch 3
    assert load_checkpoint(tmp_path / "best.pth")["meta"]["epoch"] == 1
    assert [r["epoch"] for r in result.epoch_rows] == [1, 2, 3]


def test_sliding_window_covers_volumes_larger_and_smaller_than_the_window() -> None:
    model = nn.Conv3d(4, 3, 1)
    settings = InferenceSettings(modalities=("t1", "t1ce", "t2", "flair"), roi_size=(8, 8, 8), overlap=0.25,
                                 device=torch.device("cpu"))
    for shape in ((4, 20, 17, 9), (4, 5, 6, 7)):
        logits = predict_logits(model, torch.randn(*shape), settings)
        assert logits.shape == (3, *shape[1:])
    # a 1x1 conv is translation-invariant, so Gaussian blending of the windows must reproduce it exactly
    image = torch.randn(4, 20, 17, 9)
    with torch.no_grad():
        direct = model(image[None])[0]
    windowed = predict_logits(model, image, settings)
    assert torch.allclose(windowed, direct, atol=1e-5)


@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "step", "poly", "none"])
def test_training_state_round_trips_with_weights_only(scheduler: str, tmp_path: Path) -> None:
    import random

    from engine.train_state import load_train_state, save_train_state

    def parts() -> tuple:
        model = _net()
        opt = build_optimizer("adamw", model.parameters(), lr=0.1, weight_decay=0.0)
        return model, opt, build_scheduler(scheduler, opt, epochs=6)

    model, opt, sched = parts()
    model(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    opt.step()
    for _ in range(3):
        step_scheduler(sched, 0.1)
    generator = torch.Generator().manual_seed(5)
    state = TrainState(epoch=3, best_epoch=2, best_metric=0.4, stale=1, epoch_rows=[{"epoch": 1, "lr": 0.1}])
    from engine.train_state import rng_states

    save_train_state(tmp_path / "latest.pth", state, model=model, optimizer=opt, scheduler=sched, scaler=None,
                     rng_by_rank=[rng_states(generator)])
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=generator)))
    model2, opt2, sched2 = parts()
    generator2 = torch.Generator().manual_seed(99)
    restored = load_train_state(tmp_path / "latest.pth", model=model2, optimizer=opt2, scheduler=sched2, scaler=None,
                                generator=generator2)
    assert restored == state
    assert (random.random(), float(np.random.rand()), float(torch.rand(1)),
            float(torch.rand(1, generator=generator2))) == expected
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    if sched is not None:
        assert sched2.state_dict() == sched.state_dict()


def test_a_training_state_refuses_a_model_built_otherwise(tmp_path: Path) -> None:
    """The build kwargs are saved with the state: resuming into a model built with other kwargs (same weight shapes,
    e.g. DetSeg3D's grid planned differently) is refused with the file and the changed kwargs named; the same build
    resumes, and a state without a build record (older files) is not checked."""
    from engine.train_state import load_train_state, rng_states, save_train_state

    model = _net()
    opt = build_optimizer("adamw", model.parameters(), lr=0.1, weight_decay=0.0)
    build = dict(in_channels=1, spacing=(0.95, 0.95, 4.5), stride=None)
    path = tmp_path / "latest.pth"
    save_train_state(path, TrainState(epoch=2), model=model, optimizer=opt, scheduler=None, scaler=None,
                     rng_by_rank=[rng_states(None)], build=build)
    assert load_train_state(path, model=_net(), optimizer=opt, scheduler=None, scaler=None, build=dict(build)).epoch == 2
    with pytest.raises(ValueError, match=r"latest\.pth was saved by a model built otherwise \(spacing"):
        load_train_state(path, model=_net(), optimizer=opt, scheduler=None, scaler=None,
                         build=dict(build, spacing=(1.0, 1.0, 1.0)))
    save_train_state(path, TrainState(epoch=3), model=model, optimizer=opt, scheduler=None, scaler=None,
                     rng_by_rank=[rng_states(None)])
    assert load_train_state(path, model=_net(), optimizer=opt, scheduler=None, scaler=None, build=build).epoch == 3
