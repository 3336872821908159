"""Does the pipeline learn? Test Dice of each trained run beside the same model untrained.

    python benchmarks/bench_learning.py --threads 2    # runs the README's main job first (--deterministic)
    python benchmarks/bench_learning.py --results_dir baseline_results/integrated_experiment_results_...

The Dice column is the sweep's first region (``dice_wt`` on BraTS, ``dice_<region>`` on a binary track, e.g.
``dice_nodule``); on the lesion tracks AP@0.1 and FROC CPM are shown beside it. With ``--results_dir`` any sweep
(any track) is compared.

For every ok run of the sweep, the untrained model is built exactly as the job built it (same seed,
same kwargs) and evaluated on the same test cases with the same sliding-window settings.

The figures in benchmarks/RESULTS.md come from the first command: the main job with ``--deterministic``
and ``--threads`` torch threads (intra-op; set before anything runs), so that the same commit, torch build
and thread count give the same Dice values. Other thread counts may change the last digits (float sums
are split differently).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import integrated_experiment  # noqa: E402
from engine.options.config import ExperimentConfig  # noqa: E402
from engine.model_setup import ModelSetup  # noqa: E402
from engine.tasks import task_from_meta  # noqa: E402
from experiment_runner import ModelPlan, evaluate_model, prepare_data  # noqa: E402
from utils.device import resolve_device  # noqa: E402
from models import model_info  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402

# The README's main job, flag for flag.
MAIN_JOB = ["--models", "unet3d_xs", "unet3d_stride_xs", "dualbranch_01_unet_xs", "--seeds", "24", "42",
            "--epochs", "5", "--synthetic_cases", "16", "--synthetic_size", "48", "48", "48",
            "--patch_size", "32", "32", "32", "--samples_per_volume", "3"]
# What makes the figures reproducible (added to the main job when this script runs it).
REPRODUCIBLE = ["--deterministic"]


def load_config(results_dir: Path) -> ExperimentConfig:
    raw = json.loads((results_dir / "config.json").read_text())
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: tuple(v) if k in ("synthetic_size", "patch_size") and v else v for k, v in raw.items() if k in names}
    return ExperimentConfig(**values)


def dice_column(runs: pd.DataFrame) -> str:
    """``dice_wt`` (BraTS) or the first ``dice_<region>`` column that is not the mean nor per click."""
    if "dice_wt" in runs.columns:
        return "dice_wt"
    return next(c for c in runs.columns if c.startswith("dice_") and c != "dice_mean" and "_click" not in c)


def untrained_metrics(run: pd.Series, config: ExperimentConfig, data, device: torch.device) -> dict[str, float]:
    payload = load_checkpoint(run["checkpoint"])
    meta = payload["meta"]
    setup = ModelSetup(name=payload["model_name"], info=model_info(payload["model_name"]),
                       modalities=tuple(meta["modalities"]), spatial_dims=meta["spatial_dims"],
                       patch_size=tuple(meta["patch_size"]), model_kwargs=payload["model_kwargs"],
                       context_slices=int(meta.get("context_slices", 0)))
    seed_everything(int(run["seed"]))  # the job seeded the same way right before building
    model = setup.build().to(device)
    plan = ModelPlan(setup=setup, task=task_from_meta(meta))
    result = evaluate_model(model, plan, data.subset(data.splits["test"]), config, device=device)
    return {k: float(v) for k, v in result.aggregate.items() if isinstance(v, (int, float))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", type=Path, default=None,
                        help="an existing sweep (default: none, run the main job with --deterministic)")
    parser.add_argument("--min_gain", type=float, default=0.3,
                        help="Dice gain over the untrained model that counts as learning (default: 0.3)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads for the sweep and the evaluation (default: 2)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results_dir = args.results_dir
    if results_dir is None:
        results_dir = Path("baseline_results") / f"bench_learning_{datetime.now():%Y%m%d_%H%M%S}"
        if integrated_experiment.main(MAIN_JOB + REPRODUCIBLE + ["--output_dir", str(results_dir)]) != 0:
            return 1
    sweep_s = time.perf_counter() - start
    config = load_config(results_dir)
    device = resolve_device(config.device)
    config.resume = True  # keep the sweep's own split
    data = prepare_data(config, results_dir)
    runs = pd.read_csv(results_dir / "integrated_experiment_results.csv")
    dice = dice_column(runs)
    extra = [c for c in ("ap_10", "froc_cpm") if c in runs.columns]
    rows = []
    for _, run in runs[runs["status"] == "ok"].iterrows():
        untrained = untrained_metrics(run, config, data, device)
        row = dict(model=run["model"], seed=int(run["seed"]), trained=float(run[dice]),
                   untrained=untrained.get(dice, float("nan")))
        for column in extra:
            row[f"trained_{column}"], row[f"untrained_{column}"] = float(run[column]), untrained.get(column)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["gain"] = table["trained"] - table["untrained"]
    summary = table.groupby("model")[["trained", "untrained", "gain"]].mean()
    print(f"# bench_learning {datetime.now():%Y-%m-%d %H:%M}  {platform.platform()}  "
          f"threads={torch.get_num_threads()}  torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})")
    print(f"sweep: {results_dir}  ({sweep_s:.0f} s for the sweep when run here)")
    print(table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False))
    print(f"\nmean over seeds (test {dice}):")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    ok = bool((summary["gain"] >= args.min_gain).all())
    print(f"\nevery model gains >= {args.min_gain} {dice} over its untrained self: {ok}")
    return 0 if ok else 1


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
