"""Shared pieces of the sweep tests: tiny flags, a one-channel binary dataset, table comparison, hand-made sweep
folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataio.types import CachedCase, DatasetInfo, LoadedDataset
from engine.options.data_options import DataOptions
from engine.results.job_results import JobFolder
from engine.results.reducer import reduce_results
from utils.schema import CONFIG_JSON, JOBS_DIR, SPLITS_JSON

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


TEST_CASES = [f"c{i}" for i in range(8)]


def make_sweep(root: Path, models: dict[str, float], seeds: tuple[int, ...] = (1, 2), *,
               test: list[str] = TEST_CASES, with_jobs: bool = True, **config: Any) -> Path:
    """A finished holdout sweep folder (no training): per model a Dice level, per job its run, test and validation
    rows; ``with_jobs=False``: an older folder, its sweep tables reduced and its job folders removed."""
    rng = np.random.default_rng(len(models) + sum(seeds))
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(DataOptions()).items()}
    record = dict(data, resolved_models=list(models), seeds=list(seeds), epochs=1, use_5fold=False, **config)
    root.mkdir(parents=True)
    (root / CONFIG_JSON).write_text(json.dumps(record))
    (root / SPLITS_JSON).write_text(json.dumps(dict(mode="holdout", test=test, folds=[dict(fold=None, val=["v0"])])))
    index = 0
    for model, level in models.items():
        for seed in seeds:
            folder = JobFolder.of(root / JOBS_DIR, model, seed, None)
            folder.write_job(dict(model=model, seed=seed, fold=None, index=index))
            cases = [dict(model=model, seed=seed, fold=None, case_id=c, dice_wt=level + 0.01 * i + rng.normal(0, 0.01),
                          hd95_wt=10 - 5 * level + rng.normal(0, 0.1)) for i, c in enumerate(test)]
            frame = pd.DataFrame(cases)
            folder.write_table("per_case", cases)
            folder.write_table("val_cases", [dict(model=model, seed=seed, fold=None, epoch=1, case_id="v0",
                                                  dice_wt=level)])
            folder.write_table("runs", [dict(model=model, seed=seed, fold=None, status="ok", epochs=1,
                                             dice_wt=frame["dice_wt"].mean(), dice_mean=frame["dice_wt"].mean(),
                                             hd95_wt=frame["hd95_wt"].mean(), params=1e6 * (index + 1),
                                             latency_ms=2.0 + index)])
            index += 1
    if not with_jobs:
        reduce_results(root)
        for folder in (root / JOBS_DIR).iterdir():
            for file in folder.iterdir():
                file.unlink()
            folder.rmdir()
        (root / JOBS_DIR).rmdir()
    return root
