"""Interactive evaluation's windows (engine.tasks.interactive): centred on the first click, extended with
overlapping windows where the prediction reaches a window's inner face; checked with a stub promptable model whose
prediction is the bright object of its window (so what it predicts is known voxel by voxel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataio.types import CachedCase, CropBox
from engine.inference import InferenceSettings
from engine.tasks.interactive import MAX_WINDOWS, ClickPlan, click_masks
from metrics.overlap import dice
from models.promptable import PromptableNet, PromptOutput

ROI = (32, 32, 32)
SHAPE = (96, 40, 40)


class ObjectNet(PromptableNet):
    """Predicts the voxels of its window whose image value is > 0.5 (logit +10, else -10), whatever the prompts;
    records every window it encodes (its image) and every decoding's prompts."""

    def __init__(self, mask_prompt: bool = True) -> None:
        super().__init__()
        self.accepts_mask_prompt = mask_prompt
        self.encoded: list[torch.Tensor] = []
        self.decoded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encoded.append(image)
        return image

    def decode(self, embedding, points, labels, mask_prompt) -> PromptOutput:
        self.decoded.append((points, labels, mask_prompt, embedding))
        logits = torch.where(embedding[:, :1] > 0.5, 10.0, -10.0)
        return PromptOutput(logits=logits, low_res=F.avg_pool3d(logits, 4) if self.accepts_mask_prompt else None)


def _case(box: tuple[slice, ...]) -> tuple[CachedCase, np.ndarray]:
    target = np.zeros(SHAPE, dtype=bool)
    target[box] = True
    image = target[None].astype(np.float32)
    case = CachedCase("c0", "p0", image, target.astype(np.uint8), (1.0, 1.0, 1.0), np.eye(4), SHAPE,
                      CropBox((0, 0, 0), SHAPE), "internal", channel_names=("ct",))
    return case, target


def _masks(net: ObjectNet, box: tuple[slice, ...], max_windows: int = MAX_WINDOWS,
           counts: tuple[int, ...] = (1, 2)) -> tuple[dict[int, np.ndarray], np.ndarray]:
    case, target = _case(box)
    settings = InferenceSettings(modalities=("ct",), roi_size=ROI, overlap=0.1, device=torch.device("cpu"))
    plan = ClickPlan(counts=counts, mode="center", seed=0, max_windows=max_windows)
    return click_masks(net, case, target, settings, plan, "lesion"), target


LONG = (slice(10, 80), slice(12, 22), slice(12, 22))  # 70 voxels along axis 0: more than two windows


@pytest.mark.parametrize("mask_prompt", [True, False], ids=["mask-prompt", "points-only"])
def test_a_prediction_at_the_window_edge_opens_overlapping_windows_that_cover_the_object(mask_prompt: bool) -> None:
    net = ObjectNet(mask_prompt)
    masks, target = _masks(net, LONG)
    # first click (center rule): the deepest voxel with the lowest index, (14, 16, 16); the first window, centred on
    # it and shifted inside the volume, spans [0, 32) on axis 0; the object passes its high face, so windows shifted
    # by 16 voxels open ([16, 48), [32, 64), [48, 80), [64, 96)) until it is covered
    assert [int(w.sum() > 0) for w in net.encoded] == [1] * 5 and len(net.encoded) == 5
    assert dice(masks[1], target) == 1.0 and np.array_equal(masks[1], target)
    assert np.array_equal(masks[2], target)  # nothing left to click: no change
    first_points = net.decoded[0][0]
    assert first_points.shape == (1, 1, 3) and net.decoded[0][2] is None  # the first decoding: the click only
    for points, labels, prompt, embedding in net.decoded[1:]:  # windows opened without a click: a seed point
        assert labels.tolist() == [[1]]
        voxel = tuple(int(v) for v in points[0, 0])
        assert embedding[0, 0][voxel] > 0.5  # the seed lies in the predicted object, inside its window
        assert (prompt is not None) == mask_prompt
        if mask_prompt:
            assert prompt.shape == (1, 1, 8, 8, 8)


def test_without_extension_the_object_beyond_the_window_stays_missed() -> None:
    net = ObjectNet()
    masks, target = _masks(net, LONG, max_windows=1)
    assert len(net.encoded) == 1
    inside = np.zeros_like(target)
    inside[:32] = target[:32]
    assert np.array_equal(masks[1], inside)  # the first window's part of the object, nothing beyond


def test_a_prediction_inside_the_first_window_adds_no_window() -> None:
    net = ObjectNet()
    masks, target = _masks(net, (slice(40, 50), slice(12, 22), slice(12, 22)))
    assert len(net.encoded) == 1 and len(net.decoded) == 1
    assert np.array_equal(masks[1], target)


def test_a_prediction_at_the_volume_border_adds_no_window() -> None:
    net = ObjectNet()
    masks, target = _masks(net, (slice(0, 20), slice(0, 20), slice(12, 22)))  # touches the volume's faces only
    assert len(net.encoded) == 1
    assert np.array_equal(masks[1], target)


def test_the_window_limit_is_kept() -> None:
    net = ObjectNet()
    masks, target = _masks(net, LONG, max_windows=2)
    assert len(net.encoded) == 2
    assert dice(masks[1], target) < 1.0
