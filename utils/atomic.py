"""Atomic file writes: write to a temporary file in the same folder, fsync, then ``os.replace``.

A killed process therefore leaves either the old file or the new one, never a truncated one. A write that cannot
complete (disk full, quota, read-only or unwritable folder) raises :class:`OutputWriteError` naming the file, with
the temporary removed and the old file untouched; the sweep runner stops on it (it is no job's fault) so that
``--resume`` continues once space is freed.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


class OutputWriteError(OSError):
    """A result file could not be written (``errno`` kept: ENOSPC, EDQUOT, EROFS, EACCES, ...); the old file, if
    any, is unchanged and no temporary is left."""

    def __init__(self, target: Path, cause: OSError) -> None:
        hint = " (disk full: free space, then rerun with --resume)" if cause.errno in _FULL else ""
        super().__init__(cause.errno, f"cannot write {target}: {cause.strerror or cause}{hint}")
        self.filename = str(target)


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, else delete it. An ``OSError``
    while creating, writing (inside the block), syncing or renaming becomes :class:`OutputWriteError`."""
    target = Path(path)
    tmp_path: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should be readable
        os.replace(tmp_path, target)
    except OutputWriteError:
        raise
    except OSError as exc:
        raise OutputWriteError(target, exc) from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (non-finite floats become ``null``)."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
