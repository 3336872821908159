"""Seeding of every random generator a job touches (python, numpy, torch, CUDA)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels.

    ``deterministic`` sets ``torch.use_deterministic_algorithms(True, warn_only=True)`` and cuDNN's
    deterministic mode: slower on GPU, bit-reproducible where the kernels allow it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
