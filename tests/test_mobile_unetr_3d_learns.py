"""The tiny ``mobile_unetr_3d`` build (``TINY_3D``, the sweeps' ``--tiny``) must learn where a lesion lies in a scan
that fills a small part of a zero-padded window (as a 64-divisible build made of the bench_learning ct tracks'
32 x 32 x 16 scans before the tiny build got its own divisibility).

The problem: a "head" (an ellipsoid of brain intensity 0.3 inside a bright rim, ~26 x 26 x 14 voxels) at a random
place of a 64 x 64 x 32 zero window, holding a brighter blob (0.6, radius 3-5 voxels), plus noise; the label is the
blob. The model trains directly on fresh volumes (batch 2, the pipeline's loss: ``binary_segmentation``'s Dice + CE,
the default recipe's AdamW at a constant lr 1e-3), then the pooled Dice of held-out volumes is measured in eval mode.
Like the original, the decoder has no encoder skips, so what the decoder can place is bounded by the bottleneck grid:
the former tiny build (/32: a 2 x 2 x 1 grid for this window) stays spatially flat (Dice ~0); the current one (/4;
a /8 one found these blobs too, but not the CT phantoms' haemorrhages) finds the blobs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.tasks  # noqa: F401  (sets create_model's default out_channels per model kind)
from engine.tasks.segmentation import binary_segmentation
from models import create_model, model_info

WINDOW = (64, 64, 32)
HEAD = (13.0, 13.0, 7.0)  # ellipsoid semi-axes, voxels
STEPS, BATCH, N_TEST = 50, 2, 6
MIN_DICE = 0.1  # the old build predicted all foreground: Dice ~0.007


def _volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(1, *WINDOW) float32 image and (*WINDOW) int64 label of one head with one blob."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in WINDOW], indexing="ij"))
    centre = np.array([rng.uniform(a + 2, s - a - 2) for s, a in zip(WINDOW, HEAD)], np.float32)
    r = np.sqrt((((grid - centre[:, None, None, None]) / np.array(HEAD, np.float32)[:, None, None, None]) ** 2).sum(0))
    image = np.where(r <= 1.0, 0.3, 0.0).astype(np.float32)  # head
    radius = rng.uniform(4.0, 6.0)
    offset = np.array([rng.uniform(-0.4, 0.4) * a for a in HEAD], np.float32)
    blob = ((grid - (centre + offset)[:, None, None, None]) ** 2).sum(0) <= radius**2
    blob &= r <= 1.0
    image[blob] = 0.8
    inside = r <= 1.0
    image[inside] += rng.normal(0.0, 0.05, int(inside.sum())).astype(np.float32)
    return image[None], blob.astype(np.int64)


def _batch(rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
    images, labels = zip(*[_volume(rng) for _ in range(n)])
    return {"image": torch.from_numpy(np.stack(images)), "label": torch.from_numpy(np.stack(labels))}


def train_and_score(kwargs: dict, seed: int, steps: int = STEPS, lr: float = 1e-3) -> tuple[float, float]:
    """Held-out pooled Dice and predicted foreground fraction of ``mobile_unetr_3d(**kwargs)`` after ``steps``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = create_model("mobile_unetr_3d", **dict(kwargs, in_channels=1, out_channels=2))
    task = binary_segmentation("ich")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    model.train()
    for _ in range(steps):
        loss = task.train_step(model, _batch(rng, BATCH), torch.device("cpu"))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    test = _batch(rng, N_TEST)
    with torch.no_grad():
        pred = model(test["image"]).argmax(1)
    label = test["label"]
    overlap = int(((pred == 1) & (label == 1)).sum())
    dice = 2.0 * overlap / max(1, int((pred == 1).sum()) + int((label == 1).sum()))
    return dice, float((pred == 1).float().mean())


@pytest.mark.parametrize("seed", [0])
def test_tiny_mobile_unetr_3d_finds_blobs(seed: int) -> None:
    dice, fraction = train_and_score(dict(model_info("mobile_unetr_3d").tiny_kwargs), seed)
    assert dice > MIN_DICE, (f"tiny mobile_unetr_3d did not find the blobs: held-out Dice {dice:.3f} "
                             f"(margin {MIN_DICE}), predicted foreground {fraction:.4f}")
