"""Progress bars are off when stderr is not a terminal (log files hold no carriage-return frames)."""

from __future__ import annotations

import io
import sys

import pytest

from utils.progress import bars_enabled, progress


def test_bars_follow_the_terminal_and_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOLBENCH_PROGRESS", raising=False)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert not bars_enabled()
    bar = progress(range(3), desc="x")
    assert bar.disable and list(bar) == [0, 1, 2]
    bar.set_postfix(loss="1")  # still callable when disabled
    assert "\r" not in log.getvalue()
    monkeypatch.setenv("VOLBENCH_PROGRESS", "1")
    assert bars_enabled() and not progress(range(2), file=log).disable
    assert progress(range(2), disable=True, file=log).disable
