"""Checkpoint files: model weights plus everything needed to rebuild the model, written atomically.

Loading always uses ``torch.load(..., weights_only=True)``: a checkpoint can hold tensors, numbers,
strings, lists and dicts, and nothing that runs code when unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "model_name", "model_kwargs", "state_dict")


def save_checkpoint(path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], *, model_name: str,
                    model_kwargs: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``{format, model_name, model_kwargs, state_dict, meta}`` to ``path`` atomically.

    ``model_kwargs`` must be plain data (ints, floats, strings, lists, tuples, dicts) since the
    file is read back with ``weights_only=True``.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "meta": meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a volbench checkpoint safely (``weights_only=True``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable volbench checkpoint (names the file and the problem).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"checkpoint {path} cannot be read safely (weights_only=True): {exc}") from exc
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise ValueError(f"checkpoint {path} is not a volbench checkpoint: expected keys {REQUIRED_KEYS}")
    return payload
