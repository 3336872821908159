"""Issues 22 and 25: a model that trains without learning is a defect. The tiny ``sam_med3d``, trained from scratch
through the promptable task's prompt-free step (its own loss: Dice + focal + IoU + IoU-head MSE) with AdamW and
clipping at 1.0 as its recipe does, must segment a bright cube clearly better than its untrained self after a
few dozen optimiser steps.

The recipe's lr 1e-4 is a fine-tuning rate for released weights: from scratch it moves each weight by at most
~1e-4 per step, so this check (and a from-scratch run, benchmarks/RESULTS.md) uses 1e-3."""

from __future__ import annotations

import pytest
import torch

from engine.optim import build_optimizer
from engine.tasks.promptable import PromptableTask
from metrics.regions import binary_spec
from models import create_model, model_info

STEPS = 50


def _batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Two 32^3 windows, each with an 8^3 cube of value ~1 at a random place in noise of sigma 0.3."""
    label = torch.zeros(2, 32, 32, 32, dtype=torch.int64)
    for b in range(2):
        i, j, k = torch.randint(6, 20, (3,), generator=generator).tolist()
        label[b, i:i + 8, j:j + 8, k:k + 8] = 1
    image = 0.3 * torch.randn(2, 1, 32, 32, 32, generator=generator) + label[:, None].float()
    return {"image": image, "label": label}


def _dice(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    values = []
    with torch.no_grad():
        for batch in batches:
            pred, target = model(batch["image"]).argmax(1), batch["label"]
            values.append(float(2 * (pred * target).sum() / (pred.sum() + target.sum()).clamp(min=1)))
    model.train()
    return sum(values) / len(values)


def test_tiny_sam_med3d_learns_a_cube_from_scratch() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = create_model("sam_med3d", out_channels=2, **model_info("sam_med3d").tiny_kwargs).train()
        task = PromptableTask(binary_spec("ich"), loss="sam_med3d")
        generator = torch.Generator().manual_seed(1)
        held_out = [_batch(generator) for _ in range(2)]
        untrained = _dice(model, held_out)
        optimizer = build_optimizer("adamw", model.parameters(), lr=1e-3, weight_decay=1e-4)
        losses = []
        for _ in range(STEPS):
            loss = task.train_step(model, _batch(generator), torch.device("cpu"))["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        trained = _dice(model, held_out)
    finally:
        torch.set_num_threads(threads)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses
    assert trained > untrained + 0.3, (untrained, trained)


@pytest.mark.parametrize("flags,warned", [((), True), (("--lr", "1e-3"), False),
                                          (("--use_pretrained", "--pretrained_checkpoint", "sam_med3d={file}"), False)])
def test_a_fine_tuning_recipe_from_scratch_is_warned_about(flags, warned, caplog: pytest.LogCaptureFixture,
                                                           tmp_path) -> None:
    from engine.options.config import parse_config
    from engine.sweep_plan import _warn_scratch
    from engine.trainer_settings import TrainerSettings
    from models import model_info

    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")  # only its existence is checked here
    config = parse_config(["--models", "sam_med3d", *(f.format(file=weights) for f in flags)])
    info = model_info("sam_med3d")
    trainer = TrainerSettings.for_model(config, info.train_defaults, config.explicit_flags)
    with caplog.at_level("WARNING"):
        _warn_scratch("sam_med3d", info, trainer, config)
    assert ("--lr 1e-3 --grad_accum 1" in caplog.text) == warned
