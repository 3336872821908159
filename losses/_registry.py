"""The loss registry itself (``register_loss`` / ``create_loss`` / ``list_losses``); ``losses/__init__.py``
imports the modules that register into it."""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

DEFAULT_LOSS = "nnunet"
_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(**kw) -> nn.Module`` under ``name`` (refuses duplicates)."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {_LOSSES[name].__module__})")
        _LOSSES[name] = fn
        return fn
    return deco


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


def create_loss(name: str = DEFAULT_LOSS, **kw: object) -> nn.Module:
    """Build the loss ``name``; ``kw`` overrides its defaults.

    Raises:
        ValueError: for an unknown name, listing the known ones (and the closest, if any).
    """
    if name not in _LOSSES:
        close = difflib.get_close_matches(name, list(_LOSSES), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss {name!r}; known losses: {list_losses()}.{hint}")
    return _LOSSES[name](**kw)
