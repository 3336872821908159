"""The loss registry itself (``register_loss`` / ``create_loss`` / ``list_losses`` / ``loss_spec``);
``losses/__init__.py`` imports the modules that register into it.

A loss may take sweep flags (``register_loss(name, flags=("fn_weight",))``): :func:`loss_spec` picks their
values from the sweep's settings, so a flag reaches exactly the losses that declare it. A loss registered with
``binary=True`` fits two-class outputs only (background and one foreground), which the tasks check up front.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

DEFAULT_LOSS = "nnunet"
_LOSSES: dict[str, Callable[..., nn.Module]] = {}
_FLAGS: dict[str, tuple[str, ...]] = {}
_BINARY: set[str] = set()


@dataclass(frozen=True)
class LossSpec:
    """A loss by name with the values of the flags it takes, e.g. ``LossSpec("luna_dice", (("fn_weight", 8.0),))``."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()


def register_loss(name: str, *, flags: tuple[str, ...] = (),
                  binary: bool = False) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(**kw) -> nn.Module`` under ``name`` (refuses duplicates).

    ``flags``: sweep flags the builder takes as keywords of the same name; ``binary``: two-class outputs only."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {_LOSSES[name].__module__})")
        _LOSSES[name] = fn
        _FLAGS[name] = tuple(flags)
        if binary:
            _BINARY.add(name)
        return fn
    return deco


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


def _check(name: str) -> None:
    if name not in _LOSSES:
        close = difflib.get_close_matches(name, list(_LOSSES), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss {name!r}; known losses: {list_losses()}.{hint}")


def loss_spec(name: str, settings: Any = None) -> LossSpec:
    """``name`` with the values its declared flags have in ``settings`` (attributes; None or missing: the
    builder's own default)."""
    _check(name)
    options = tuple((flag, getattr(settings, flag)) for flag in _FLAGS[name]
                    if getattr(settings, flag, None) is not None)
    return LossSpec(name, options)


def is_binary_loss(name: str) -> bool:
    """Whether loss ``name`` fits two-class outputs only."""
    _check(name)
    return name in _BINARY


def create_loss(name: str | LossSpec = DEFAULT_LOSS, **kw: object) -> nn.Module:
    """Build the loss ``name`` (or a :class:`LossSpec` with its flag values); ``kw`` overrides its defaults.

    Raises:
        ValueError: for an unknown name, listing the known ones (and the closest, if any).
    """
    if isinstance(name, LossSpec):
        return create_loss(name.name, **dict(dict(name.options), **kw))
    _check(name)
    return _LOSSES[name](**kw)
