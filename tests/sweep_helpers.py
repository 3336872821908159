"""Shared pieces of the sweep tests: tiny flags, a one-channel binary dataset, table comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dataio.types import CachedCase, DatasetInfo, LoadedDataset
from engine.options.data_options import DataOptions

TINY = json.dumps({"unet3d_xs": {"base": 2}, "unet3d_stride_xs": {"base": 2}})
TIMING = ("train_time_s", "epoch_time_s", "latency_ms", "checkpoint", "eval_time_s")


def tiny_flags(out: Path, cache: Path, *extra: str) -> list[str]:
    """CLI flags of a tiny, fast, deterministic sweep on 7 synthetic 32^3 phantoms."""
    return ["--synthetic_cases", "7", "--synthetic_size", "32", "32", "32", "--cache_dir", str(cache),
            "--output_dir", str(out), "--samples_per_volume", "1", "--num_workers", "0", "--model_kwargs", TINY,
            "--skip_efficiency", "--deterministic", *extra]


def flair_wt_dataset(cache: Path) -> LoadedDataset:
    """One-channel binary data made from the phantoms: FLAIR as the image, the whole tumour as the label."""
    cases = DataOptions(synthetic_cases=7, synthetic_size=(32, 32, 32), cache_dir=str(cache)).load_cases()
    one = [CachedCase(c.case_id, c.patient_id, np.ascontiguousarray(c.image[3:4]),
                      (np.asarray(c.label) > 0).astype(np.uint8), c.spacing, c.affine, c.original_shape, c.crop,
                      "internal", channel_names=("flair",)) for c in cases]
    return LoadedDataset(info=DatasetInfo(name="flair_wt", channels=("flair",), label_kind="binary"), cases=one)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without timing and path columns, rows in key order (for equality across runs)."""
    keep = [c for c in frame.columns if not c.startswith(TIMING)]
    keys = [k for k in ("model", "seed", "fold", "epoch", "case_id", "reference", "prediction") if k in keep]
    return frame[keep].sort_values(keys).reset_index(drop=True)
