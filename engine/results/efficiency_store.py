"""Per-model efficiency measurements of a sweep, measured once and kept in ``efficiency/``.

``efficiency/<model>.json`` holds the run-table columns (params, FLOPs, PAM, latency) and
``efficiency/<model>_stage_pam.csv`` the stage-wise PAM rows. A process that needs a model's figures
takes the model's file lock: the first measures and writes, every other process (another shard, a
resumed sweep) waits and reads the same figures, so every run of a model carries the same numbers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from filelock import FileLock

from utils.atomic import atomic_write_csv, atomic_write_json
from utils.schema import EFFICIENCY_DIR, STAGE_PAM_LEADING

log = logging.getLogger(__name__)

Measure = Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]]


def efficiency_paths(output_dir: Path, model: str) -> tuple[Path, Path]:
    """(values JSON, stage-wise PAM CSV) of ``model``."""
    root = Path(output_dir) / EFFICIENCY_DIR
    return root / f"{model}.json", root / f"{model}_stage_pam.csv"


def read_efficiency(output_dir: Path, model: str) -> dict[str, Any] | None:
    """The recorded figures of ``model``, or ``None`` when it has not been measured."""
    values, _ = efficiency_paths(output_dir, model)
    try:
        return json.loads(values.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_efficiency(output_dir: Path, model: str, measure: Measure) -> dict[str, Any]:
    """The figures of ``model``: read when recorded, else ``measure()``d and recorded (under the model's lock).

    ``measure`` returns (run-table values, stage-wise PAM rows); a failed measurement (empty values) is not
    recorded, so a later start tries again.
    """
    values_path, stages_path = efficiency_paths(output_dir, model)
    values_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(values_path.with_suffix(".lock"))):
        recorded = read_efficiency(output_dir, model)
        if recorded is not None:
            return recorded
        values, stages = measure()
        if not values:
            return {}
        if stages:
            atomic_write_csv(stages_path, pd.DataFrame([dict(model=model, **r) for r in stages]))
        atomic_write_json(values_path, values)  # last: the model counts as measured
        return values


def stage_pam_table(output_dir: Path, models: list[str]) -> pd.DataFrame | None:
    """Stage-wise PAM rows of ``models`` (in that order, then any other measured model by name)."""
    root = Path(output_dir) / EFFICIENCY_DIR
    if not root.is_dir():
        return None
    known = sorted(p.name[: -len("_stage_pam.csv")] for p in root.glob("*_stage_pam.csv"))
    order = [m for m in models if m in known] + [m for m in known if m not in models]
    frames = [pd.read_csv(efficiency_paths(output_dir, m)[1]) for m in order]
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True, sort=False)
    leading = [c for c in STAGE_PAM_LEADING if c in table.columns]
    return table[leading + [c for c in table.columns if c not in leading]]
