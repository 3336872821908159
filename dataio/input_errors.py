"""Every bad input reported at once: checks that run over all cases collect their problems and raise one
:class:`InputErrors` listing every one (one line per bad file or case), instead of stopping at the first.

A user with 1,000 cases then fixes every bad file in one go. ``InputErrors`` is a ``ValueError``, so callers that
catch bad input as ``ValueError`` keep working, and its message contains each problem's own text.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

# What reading or checking one case raises for a bad file (nibabel, gzip, SimpleITK and our checks give
# ValueError; missing or unreadable files OSError, EOFError for truncated gzip streams).
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError)


# Set by :func:`deferred_input_errors`: the outermost ``map_all`` then records problems here and returns the good
# items, so that a later stage (the cache build) can check them and report its problems with these.
_DEFERRED: contextvars.ContextVar["Deferred | None"] = contextvars.ContextVar("deferred_input_errors", default=None)


@dataclass
class Deferred:
    """Problems recorded under :func:`deferred_input_errors`, and how many items (cases) they came from."""

    problems: list[str] = field(default_factory=list)
    failed_items: int = 0


class InputErrors(ValueError):
    """Several bad inputs found in one pass; ``problems`` holds one line each (naming the file or case)."""

    def __init__(self, problems: list[str], checked: int | None = None) -> None:
        self.problems = list(problems)
        scope = f" (all {checked} cases were checked)" if checked is not None else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} bad input file(s){scope}; fix them and run again:\n{lines}")


def problems_of(error: BaseException) -> list[str]:
    """The lines an error contributes: an :class:`InputErrors`' own lines, otherwise its message."""
    if isinstance(error, InputErrors):
        return error.problems
    return [str(error).strip() or type(error).__name__]


def raise_if_any(problems: list[str], checked: int | None = None) -> None:
    """Raise :class:`InputErrors` when ``problems`` is not empty (a single problem keeps its own text first)."""
    if problems:
        raise InputErrors(problems, checked)


def map_all(fn: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """``[fn(x) for x in items]``, but every item is tried: bad-input errors (``BAD_INPUT_ERRORS``) of all items
    are raised together as one :class:`InputErrors` at the end; other exceptions propagate at once. Inside
    :func:`deferred_input_errors` the problems are recorded there instead and the good items returned (calls of
    ``map_all`` made by ``fn`` itself raise as usual)."""
    deferred = _DEFERRED.get()
    results: list[Result] = []
    problems: list[str] = []
    count = failed = 0
    token = _DEFERRED.set(None)
    try:
        for item in items:
            count += 1
            try:
                results.append(fn(item))
            except BAD_INPUT_ERRORS as exc:
                problems.extend(problems_of(exc))
                failed += 1
    finally:
        _DEFERRED.reset(token)
    if deferred is not None:
        deferred.problems.extend(problems)
        deferred.failed_items += failed
        return results
    raise_if_any(problems, count)
    return results


@contextlib.contextmanager
def deferred_input_errors() -> Iterator[Deferred]:
    """Collect the problems of the ``map_all`` calls inside (see :func:`map_all`) into the yielded record; the
    caller reports them, with those of later checks, through :func:`raise_if_any`."""
    deferred = Deferred()
    token = _DEFERRED.set(deferred)
    try:
        yield deferred
    finally:
        _DEFERRED.reset(token)
