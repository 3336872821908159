"""The files of a sweep folder besides the tables: the refusal to overwrite, ``splits.json``,
``config.json`` (first start's flags + every start, checked on resume) and ``environment.json``; stale
temporaries of interrupted writes are removed from the results root at each start."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from dataio.splits import save_splits
from engine.options.config import ExperimentConfig
from engine.context import RunContext
from engine.results.reducer import results_lock
from engine.options.resume_check import merged_record, resume_differences
from engine.sweep_plan import SweepData
from utils.atomic import atomic_write_json
from utils.environment import environment_info
from utils.schema import CONFIG_JSON, ENVIRONMENT_JSON, JOBS_DIR, RUNS_CSV, SPLITS_JSON

log = logging.getLogger(__name__)


def default_output_dir() -> Path:
    return Path("baseline_results") / f"integrated_experiment_results_{datetime.now():%Y%m%d_%H%M%S}"


def check_output_dir(output_dir: Path, resume: bool, shard: str | None = None) -> None:
    """Refuse to overwrite results without ``--resume`` (shards share their folder by design), and to
    resume a folder made before ``jobs/``."""
    has_jobs = (output_dir / JOBS_DIR).is_dir() and any((output_dir / JOBS_DIR).iterdir())
    has_runs = (output_dir / RUNS_CSV).is_file()
    if not resume and shard is None and (has_jobs or has_runs):
        raise ValueError(f"--output_dir {output_dir} already holds results; pass --resume to continue that sweep "
                         "or choose another --output_dir")
    if resume and has_runs and not (output_dir / JOBS_DIR).is_dir():
        raise ValueError(f"--output_dir {output_dir} was written before per-job results ({JOBS_DIR}/) existed and "
                         "cannot be resumed; start the sweep in a new --output_dir")


def sweep_record(config: ExperimentConfig, data: SweepData, models: list[str], context: RunContext) -> dict[str, Any]:
    """``config.json`` of this start: the flags as in effect (``amp`` only on CUDA, the global batch under
    DDP), the resolved models, the device and the dataset's description."""
    world = context.world_size if context.mode == "ddp" else 1
    return dict(config.to_dict(), amp=bool(config.amp and context.device.type == "cuda"), amp_requested=config.amp,
                global_batch=config.batch_size * world, resolved_models=models, device=str(context.device),
                dataset=dict(name=data.info.name, channels=list(data.info.channels), label_kind=data.info.label_kind,
                             region=data.info.region))


def check_resume(output_dir: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The first start's record of a resumed sweep; ``ValueError`` listing every result-changing flag that differs."""
    path = output_dir / CONFIG_JSON
    if not path.is_file():
        return None
    first = json.loads(path.read_text(encoding="utf-8"))
    differences = resume_differences(first, record)
    if differences:
        raise ValueError(f"--resume of {output_dir} with flags that change results:\n  " + "\n  ".join(differences)
                         + "\nuse the first start's values, or a new --output_dir")
    return first


STALE_TMP_AGE_S = 3600.0  # a temporary untouched this long is no write in progress (writes touch it continuously)


def remove_stale_temporaries(output_dir: Path, max_age_s: float = STALE_TMP_AGE_S) -> list[Path]:
    """Delete the temporaries (``.<name>.*.tmp`` of :func:`utils.atomic.atomic_path`) that interrupted writes left
    in the results root, when not modified for ``max_age_s`` seconds: a shard writing one now (a checkpoint, a
    table) keeps touching it, so it is never removed. Job folders clean their own at each job's start."""
    removed = []
    now = time.time()
    for path in Path(output_dir).glob(".*.tmp"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # finished (renamed) or removed by another process meanwhile
            continue
    if removed:
        log.info("removed %d stale temporary file(s) of interrupted writes in %s", len(removed), output_dir)
    return removed


def write_sweep_files(output_dir: Path, data: SweepData, record: dict[str, Any]) -> None:
    """``splits.json``, ``config.json`` (the first start's flags plus a list of starts) and ``environment.json``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    save_splits(output_dir / SPLITS_JSON, data.splits)
    with results_lock(output_dir):  # processes sharing the folder append their starts one at a time
        remove_stale_temporaries(output_dir)
        path = output_dir / CONFIG_JSON
        first = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        atomic_write_json(path, merged_record(first, record))
    atomic_write_json(output_dir / ENVIRONMENT_JSON, environment_info())
