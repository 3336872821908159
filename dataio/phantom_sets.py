"""Bookkeeping of a folder of generated phantoms (BraTS MRI or CT): complete, partial, or someone else's.

A set is complete when its manifest (kind, size, seed, format version) matches and every expected file
exists. While a set is written an "incomplete" marker sits beside it; the manifest is written last, so a
killed writer leaves a set that is regenerated, never trusted. Files that volbench did not write (no
manifest, no marker) are never deleted: the folder is refused instead.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhantomLayout:
    """Where a kind of phantom set keeps its files.

    Attributes:
        kind: words for messages, e.g. ``synthetic CT phantoms``.
        manifest_name, incomplete_marker: file names under the set's root.
        case_files: the files case ``i`` must have, given the root.
        existing_entries: the files or folders found where a set goes (any of them without a manifest or
            marker means the folder is not volbench's), given the root.
        removable: which of those an earlier set's regeneration deletes (default: all).
    """

    kind: str
    manifest_name: str
    incomplete_marker: str
    case_files: Callable[[Path, int], list[Path]]
    existing_entries: Callable[[Path], list[Path]]
    removable: Callable[[Path], bool] = lambda path: True


def is_complete(root: Path, layout: PhantomLayout, manifest: dict[str, Any]) -> bool:
    """Whether ``root`` holds exactly the set that ``manifest`` describes."""
    try:
        if json.loads((root / layout.manifest_name).read_text(encoding="utf-8")) != manifest:
            return False
    except (OSError, ValueError):
        return False
    return all(p.is_file() for i in range(manifest["n_cases"]) for p in layout.case_files(root, i))


def clear_previous(root: Path, layout: PhantomLayout) -> None:
    """Remove an earlier (partial or different) set; ``ValueError`` when the files are not volbench's."""
    owned = (root / layout.manifest_name).exists() or (root / layout.incomplete_marker).exists()
    entries = layout.existing_entries(root)
    if entries and not owned:
        raise ValueError(f"{root} holds case files that volbench did not write (no {layout.manifest_name}); "
                         f"refusing to overwrite them with {layout.kind}: choose another --data_path")
    (root / layout.incomplete_marker).touch()
    (root / layout.manifest_name).unlink(missing_ok=True)
    for entry in filter(layout.removable, entries):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def ensure_phantom_set(root: Path, layout: PhantomLayout, manifest: dict[str, Any],
                       write_case: Callable[[Path, int], None]) -> Path:
    """Write cases ``0 .. manifest["n_cases"] - 1`` with ``write_case(root, i)`` unless the set is complete."""
    root = Path(root).expanduser()
    if is_complete(root, layout, manifest):
        logger.debug("%s up to date in %s", layout.kind, root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    clear_previous(root, layout)
    logger.info("writing %d %s of %s voxels (seed %d) to %s", manifest["n_cases"], layout.kind,
                tuple(manifest["size"]), manifest["seed"], root)
    for index in range(int(manifest["n_cases"])):
        write_case(root, index)
    atomic_write_json(root / layout.manifest_name, manifest)
    (root / layout.incomplete_marker).unlink(missing_ok=True)
    return root
