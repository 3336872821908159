"""Cache entries of a model's own preprocessing (:mod:`dataio.model_preprocess`), next to the dataset's entries.

A case read from the cache is memory-mapped from its entry ``cache_root/<key>/<case_id>/``, whose ``key.json`` holds
the dataset identity and preprocessing parameters. :func:`model_inputs` builds (once) or reuses the entry of the same
case under ``key_for(dataset_id, dict(params, model=model_params))``: the model's preprocessing is part of the key, so
a model with its own preprocessing has its own entries and every model without one shares the dataset's. The entry
is derived from the dataset's entry of the case (same result as preprocessing the source files with both stages) and
is trusted only while that entry is the one it was built from (same source files, same ``image.npy`` size and mtime);
written into a temporary folder and renamed into place, like every entry. A case that does not come from the cache
(a dataset handed in by a caller) is preprocessed in memory and not cached.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_write_json

from .cache import _TMP_PREFIX, CACHE_VERSION, MODEL_KEY, PreprocessedCache, _arrays_intact, _host, _meta
from .model_preprocess import apply_model_preprocessing, check_model_params
from .types import CachedCase

logger = logging.getLogger(__name__)


def cache_entry_of(case: CachedCase) -> Path | None:
    """The cache entry folder ``case`` was read from (its image is memory-mapped from it), else ``None``."""
    filename = getattr(case.image, "filename", None)
    if not filename:
        return None
    entry = Path(filename).parent
    if not ((entry / "meta.json").is_file() and (entry.parent / "key.json").is_file()):
        return None
    return entry


def model_key_params(params: dict[str, Any], model_params: dict[str, Any]) -> dict[str, Any]:
    """The cache parameters of a model's own entries: the dataset's ``params`` plus ``{"model": model_params}``."""
    return dict(params, **{MODEL_KEY: dict(model_params)})


def _base_stamp(entry: Path) -> dict[str, Any]:
    """What identifies the dataset entry a model entry was derived from: its sources and its image file's stat."""
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    stat = (entry / "image.npy").stat()
    return {"sources": meta.get("sources"), "image_size": stat.st_size, "image_mtime_ns": stat.st_mtime_ns}


def _valid(own: Path, stamp: dict[str, Any]) -> bool:
    try:
        meta = json.loads((own / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("cache_version") == CACHE_VERSION and meta.get("base") == stamp and _arrays_intact(own, meta)


def model_inputs(case: CachedCase, model_params: dict[str, Any]) -> CachedCase:
    """``case`` under a model's own preprocessing ``model_params``, from its own cache entry (built on first use)."""
    check_model_params(model_params)
    entry = cache_entry_of(case)
    if entry is None:
        logger.debug("case %s is not from the cache: its model preprocessing is done in memory", case.case_id)
        return apply_model_preprocessing(case, model_params)
    key = json.loads((entry.parent / "key.json").read_text(encoding="utf-8"))
    params = model_key_params(key["params"], model_params)
    key_dir = entry.parent.parent / PreprocessedCache.key_for(key["dataset_id"], params)
    key_dir.mkdir(parents=True, exist_ok=True)
    if not (key_dir / "key.json").is_file():
        atomic_write_json(key_dir / "key.json", {"dataset_id": key["dataset_id"], "params": params,
                                                 "cache_version": CACHE_VERSION})
    own, stamp = key_dir / case.case_id, _base_stamp(entry)
    if not _valid(own, stamp):
        _build(own, apply_model_preprocessing(case, model_params), params, stamp)
    return PreprocessedCache._read(own)


def _build(own: Path, cached: CachedCase, params: dict[str, Any], stamp: dict[str, Any]) -> None:
    """Write ``cached`` into a temporary folder (meta.json last) and rename it onto ``own``."""
    tmp = own.with_name(f"{_TMP_PREFIX}{own.name}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(cached.image, dtype=np.float32))
        if cached.label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(cached.label, dtype=np.uint8))
        meta = _meta(cached, params, stamp["sources"])
        meta["base"] = stamp
        atomic_write_json(tmp / "meta.json", meta)
        if not _valid(own, stamp):  # another process may have put it in place meanwhile
            try:
                PreprocessedCache._replace(tmp, own)
            except OSError:
                if not _valid(own, stamp):
                    raise
        logger.info("model preprocessing of case %s cached in %s", cached.case_id, own)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
