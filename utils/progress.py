"""Progress bars that a log file can hold.

On a terminal: tqdm bars as usual. When stderr is not a terminal (a redirected log, a batch job) the
bars are off and :func:`progress` yields the items plainly, so a log holds no carriage-return frames;
the runner logs one line per epoch and per job instead. ``VOLBENCH_PROGRESS=1`` forces bars on,
``0`` forces them off.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def bars_enabled() -> bool:
    """Whether progress bars are drawn (a terminal on stderr, unless ``VOLBENCH_PROGRESS`` says otherwise)."""
    forced = os.environ.get("VOLBENCH_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable[T], **kwargs: Any) -> "tqdm[T]":
    """``tqdm(iterable, **kwargs)``, disabled when :func:`bars_enabled` is false (``set_postfix`` still works)."""
    asked_off = bool(kwargs.pop("disable", False))
    disable = asked_off or not bars_enabled()
    return tqdm(iterable, disable=disable, **kwargs)
