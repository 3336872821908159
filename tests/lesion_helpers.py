"""Random detection cases for comparing volbench's lesion metrics with reference implementations."""

from __future__ import annotations

import numpy as np

from metrics.detection import CaseBoxes


def random_cases(rng: np.random.Generator, *, max_cases: int, hit_share: float, jitter: float) -> list[CaseBoxes]:
    """1..``max_cases`` cases of 0-4 lesions (boxes in a 60^3 field); about ``hit_share`` of the lesions get a
    prediction near them (corners moved by N(0, ``jitter``) voxels), plus 0-4 false positives; random scores."""
    cases = []
    for i in range(int(rng.integers(1, max_cases + 1))):
        lo = rng.uniform(0, 60, (int(rng.integers(0, 5)), 3))
        gts = np.concatenate([lo, lo + rng.uniform(3, 12, lo.shape)], axis=1)
        near = gts[rng.random(len(gts)) < hit_share]
        near = near + rng.normal(0, jitter, near.shape)
        near[:, 3:] = np.maximum(near[:, 3:], near[:, :3] + 0.5)
        lo = rng.uniform(0, 60, (int(rng.integers(0, 5)), 3))
        fps = np.concatenate([lo, lo + rng.uniform(2, 10, lo.shape)], axis=1)
        preds = np.concatenate([near, fps]).reshape(-1, 6)
        cases.append(CaseBoxes(f"r{i}", preds, rng.random(len(preds)), gts.reshape(-1, 6)))
    return cases
