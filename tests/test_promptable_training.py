"""Promptable models beyond the binary prompt-free step: click training (``--train_prompts clicks``), BraTS's
region targets (one prompt-free mask per region, mapped to labels by nnU-Net's rule) and the flag checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from engine.fine_tuning import check_train_prompts
from engine.options.config import parse_config
from engine.options.resume_check import RESULT_FLAGS
from engine.tasks import task_from_meta
from engine.tasks.promptable import TRAIN_CLICKS, PromptableTask, PromptSettings, label_scores
from metrics.regions import BRATS_SPEC, binary_spec, region_mask
from models import create_model, model_info

NAMES = ("sam_med3d", "vista3d")


def _tiny(name: str, out_channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, out_channels=out_channels, **model_info(name).tiny_kwargs).train()


def _batch(brats: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    label = torch.zeros(2, 32, 32, 32, dtype=torch.int64)
    label[0, 8:20, 8:20, 8:20] = 2 if brats else 1
    if brats:
        label[0, 11:17, 11:17, 11:17] = 1
        label[0, 13:15, 13:15, 13:15] = 3
    label[1, 20:30, 4:12, 10:18] = 1  # BraTS: a tumour core without oedema
    return {"image": torch.randn(2, 1, 32, 32, 32) + label[:, None].float(), "label": label}


def _task(spec=binary_spec("ich"), clicks: int = 3, loss: str = "sam_med3d") -> PromptableTask:
    return PromptableTask(spec, loss=loss, prompts=PromptSettings(train_prompts="clicks", train_clicks=clicks))


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_the_default_click_count_is_sam_med3ds_training_scripts() -> None:
    assert TRAIN_CLICKS == 11  # SAM-Med3D train.py: interaction(..., num_clicks=11) every step
    config = parse_config(["--models", "sam_med3d"])
    assert (config.train_prompts, config.train_clicks) == ("none", 11)
    config = parse_config(["--models", "sam_med3d", "--train_prompts", "clicks", "--train_clicks", "4"])
    assert (config.train_prompts, config.train_clicks) == ("clicks", 4)
    assert {"train_prompts", "train_clicks"} <= set(RESULT_FLAGS)  # a resumed sweep may not change them


def test_bad_click_training_flags_are_refused(capsys: pytest.CaptureFixture) -> None:
    for argv in (["--train_clicks", "0"], ["--train_prompts", "boxes"]):
        with pytest.raises(SystemExit):
            parse_config(["--models", "sam_med3d", *argv])
        assert "--train_" in capsys.readouterr().err


def test_sam_click_step_decodes_once_per_click_and_trains_the_point_prompts() -> None:
    model, task = _tiny("sam_med3d"), _task(clicks=3)
    decodings, prompts = _count_calls(model.mask_decoder), []
    model.prompt_encoder.register_forward_hook(lambda m, args, kwargs, out: prompts.append(kwargs), with_kwargs=True)
    losses = task.train_step(model, _batch(), torch.device("cpu"))
    assert decodings[0] == 1 + 3  # prompt-free, then one decoding per click
    assert set(losses) == {"prompt_free", "clicks"} and all(torch.isfinite(v) for v in losses.values())
    assert [p["points"][0].shape[1] for p in prompts] == [1, 2, 3]  # every click so far
    assert prompts[0]["masks"] is None  # the first click has no mask prompt, later ones the previous low-res logits
    assert all(p["masks"].shape == (2, 1, 16, 16, 16) and not p["masks"].requires_grad for p in prompts[1:])
    sum(losses.values()).backward()
    for part in ("prompt_encoder.point_embeddings", "mask_decoder.", "image_encoder."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(part)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part


def test_vista_click_step_runs_the_point_head_per_click_and_sample() -> None:
    model, task = _tiny("vista3d"), _task(clicks=2, loss="nnunet")
    point_calls, class_calls = _count_calls(model.point_head), _count_calls(model.class_head)
    losses = task.train_step(model, _batch(), torch.device("cpu"))
    assert (point_calls[0], class_calls[0]) == (2 * 2, 1)  # clicks x samples (VISTA3D decodes one image at a time)
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.point_head.parameters())


def test_click_training_is_reproducible_for_the_job_seed() -> None:
    task = _task(clicks=3)
    seen = []
    for seed in (5, 5, 6):
        model, batch = _tiny("sam_med3d"), _batch()
        points = []
        model.prompt_encoder.register_forward_hook(lambda m, a, kw, out: points.append(kw["points"][0].clone()),
                                                   with_kwargs=True)
        torch.manual_seed(seed)  # the runner seeds torch per job
        task.train_step(model, batch, torch.device("cpu"))
        seen.append(points[-1])
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])


def test_brats_label_scores_follow_nnunets_region_order() -> None:
    # region logits (WT, TC, ET) -> label: ET if et > 0, else NCR (1) if tc > 0, else ED (2) if wt > 0, else 0
    cases = {(1, 1, 1): 3, (1, 1, -1): 1, (1, -1, -1): 2, (-1, -1, -1): 0, (-1, 1, -1): 1, (-1, -1, 2): 3,
             (2, -1, 0): 2, (0, 0, 0): 0}
    z = torch.tensor(list(cases), dtype=torch.float32).T.reshape(3, len(cases), 1, 1)
    labels = label_scores(torch.cat([torch.zeros_like(z[:1]), z]), BRATS_SPEC).argmax(0).flatten().tolist()
    assert labels == list(cases.values())
    two = torch.randn(2, 4, 4, 4)
    assert label_scores(two, binary_spec("ich")) is two  # one region: the two-class logits as they are


@pytest.mark.parametrize("name", NAMES)
def test_brats_prompt_free_step_has_one_mask_per_region(name: str) -> None:
    model = _tiny(name, out_channels=4)
    task = PromptableTask(BRATS_SPEC, loss="sam_med3d" if name == "sam_med3d" else "nnunet")
    assert task.n_outputs == 4 and model.n_masks == 3
    batch = _batch(brats=True)
    logits, iou = model(batch["image"], with_iou=True)
    assert logits.shape == (2, 4, 32, 32, 32) and (iou is None or iou.shape == (2, 3))
    loss = task.train_step(model, batch, torch.device("cpu"))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    # the loss is the mean of the region losses of [0, z_r] against each region's mask
    with torch.no_grad():
        logits, iou = model(batch["image"], with_iou=True)
        parts = [task.binary_loss(torch.cat([torch.zeros_like(logits[:, 1 + r:2 + r]), logits[:, 1 + r:2 + r]], 1),
                                  torch.from_numpy(region_mask(batch["label"].numpy(), m)).long(),
                                  None if iou is None else iou[:, r:r + 1])
                 for r, m in enumerate(BRATS_SPEC.regions.values())]
        torch.testing.assert_close(task.region_loss(logits, batch["label"], iou), torch.stack(parts).mean())


def test_brats_click_step_targets_one_present_region_per_sample() -> None:
    model, task = _tiny("sam_med3d", out_channels=4), _task(BRATS_SPEC, clicks=2)
    decodings = _count_calls(model.mask_decoder)
    torch.manual_seed(3)
    losses = task.train_step(model, _batch(brats=True), torch.device("cpu"))
    assert decodings[0] == 3 and set(losses) == {"prompt_free", "clicks"}
    rng = np.random.default_rng(0)
    label = _batch(brats=True)["label"][1].numpy()  # tumour core only: WT and TC present, ET absent
    for _ in range(20):
        target = task._click_target(label, rng)
        assert target.any() and np.array_equal(target, label > 0)  # WT == TC here; never the empty ET


def test_prompt_mode_is_recorded_and_rebuilt() -> None:
    task = _task(BRATS_SPEC, clicks=4)
    assert task.run_labels() == dict(prompt_mode="clicks", click_mode="random")
    again = task_from_meta(task.checkpoint_meta())
    assert type(again) is PromptableTask and again.spec == BRATS_SPEC
    assert (again.prompts.train_prompts, again.prompts.train_clicks) == ("clicks", 4)
    assert again.result_columns() == task.result_columns()
    assert {"dice_wt_click1", "hd95_tc_click10", "dice_et_click5", "lesion_dice_et"} <= set(task.result_columns())


def test_train_prompts_needs_a_promptable_model_and_warns_for_the_others(caplog: pytest.LogCaptureFixture) -> None:
    def build(name: str) -> torch.nn.Module:
        with torch.device("meta"):
            return create_model(name, out_channels=2, **model_info(name).tiny_kwargs)

    assert check_train_prompts(["unet3d_xs"], "none", build) == []
    with pytest.raises(ValueError, match=r"--train_prompts clicks: no model of this sweep takes prompts \(unet3d_xs\)"):
        check_train_prompts(["unet3d_xs"], "clicks", build)
    with caplog.at_level(logging.WARNING, logger="engine.fine_tuning"):
        assert check_train_prompts(["sam_med3d", "unet3d_xs"], "clicks", build) == ["unet3d_xs"]
    assert "unet3d_xs train prompt-free" in caplog.text


def test_sam_region_masks_are_the_multimask_tokens_of_the_same_weights() -> None:
    one, three = _tiny("sam_med3d").eval(), _tiny("sam_med3d", out_channels=4).eval()
    three.load_state_dict(one.state_dict())  # the same keys: released checkpoints load into the BraTS build
    x = torch.randn(2, 1, 32, 32, 32)
    points, labels = torch.tensor([[[5.0, 6.0, 7.0]]]).expand(2, 1, 3), torch.ones(2, 1, dtype=torch.int64)
    with torch.no_grad():
        emb = three.encode(x)
        free = three.decode(emb, None, None, None)
        sparse, dense = three.embed_prompts(None, None, None, 2)
        low, iou = three.mask_decoder(image_embeddings=emb, image_pe=three.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=True)
        clicked, single = three.decode(emb, points, labels, None), one.decode(emb, points, labels, None)
    assert torch.equal(free.low_res, low) and torch.equal(free.iou, iou)  # mask tokens 1, 2, 3: WT, TC, ET
    assert clicked.logits.shape == (2, 1, 32, 32, 32) and torch.equal(clicked.logits, single.logits)  # token 0
