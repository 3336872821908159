"""Benchmark: scoring another tool's prediction folder (``--external_predictions``) against the sweep's own evaluation
of the same test cases, per case, side by side in one run.

Usage: python benchmarks/bench_external.py [--quick] [--threads 2] [--size 64] [--cases 16] [--repeats 3]

A one-epoch ``unet3d_xs`` sweep on synthetic BraTS phantoms; its checkpoint predicts the test cases and writes them
as files (labels and probabilities, as ``evaluate_experiment.py checkpoints --save_probabilities`` does). Then, on
the same cases, timed alternately (median of ``--repeats``): the sweep's own test evaluation (sliding-window
prediction + the task's test metrics) and the external scoring of the written files (read, check the grid, crop,
the same test metrics), each with probabilities and with label files only. Prints seconds per case and the ratio
external / own. The metrics of the two are checked equal.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import shutil
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._timing import CpuClock, quick_threads_parser  # noqa: E402
from benchmarks._workdir import run_in_workdir  # noqa: E402
from engine.evaluate.checkpoints import load_model, settings_from_meta  # noqa: E402
from engine.evaluate.external import ExternalSource, score_source  # noqa: E402
from engine.evaluation import EvaluationRequest, evaluate_cases  # noqa: E402
from engine.options.data_options import DataOptions  # noqa: E402
from engine.tasks import task_from_meta  # noqa: E402
import integrated_experiment  # noqa: E402
from utils.schema import checkpoint_name  # noqa: E402
from dataio.splits import load_splits  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = quick_threads_parser(__doc__.splitlines()[0], "32^3 phantoms, 8 cases, 2 repeats (about a minute)")
    p.add_argument("--size", type=int, default=64, help="phantom edge in voxels (default: %(default)s)")
    p.add_argument("--cases", type=int, default=16, help="synthetic cases (test: about a fifth; default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each side (median; default: %(default)s)")
    p.add_argument("--workdir", default=None, help="keep the sweep, cache and predictions here (default: temporary)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.cases, args.repeats = 32, 8, 2
    return args


def sweep(args: argparse.Namespace, work: Path) -> tuple[Path, DataOptions]:
    """A one-epoch unet3d_xs sweep (its checkpoint and split)."""
    data = DataOptions(synthetic_cases=args.cases, synthetic_size=(args.size,) * 3, cache_dir=str(work / "cache"))
    out = work / "sweep"
    if not (out / "splits.json").is_file():
        flags = ["--models", "unet3d_xs", "--seeds", "1", "--epochs", "1", "--samples_per_volume", "1",
                 "--synthetic_cases", str(args.cases), "--synthetic_size", *[str(args.size)] * 3,
                 "--cache_dir", str(work / "cache"), "--output_dir", str(out), "--skip_efficiency", "--num_workers", "0"]
        assert integrated_experiment.main(flags) == 0
    return out, data


def run(args: argparse.Namespace, work: Path) -> None:
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    out, data = sweep(args, work)
    by_id = {c.case_id: c for c in data.load_cases(progress=False)}
    cases = [by_id[c] for c in load_splits(out / "splits.json")["test"]]
    checkpoint = out / checkpoint_name("unet3d_xs", 1, None)
    device = torch.device("cpu")
    model, payload = load_model(checkpoint, device)
    meta = payload["meta"]
    settings, task = settings_from_meta(meta, checkpoint, device), task_from_meta(meta)
    predictions, labels_only = work / "predictions", work / "labels_only"
    for folder in (predictions, labels_only):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    def save(case, logits) -> None:  # type: ignore[no-untyped-def]
        task.write_prediction(case, logits, predictions, save_probabilities=True)
        task.write_prediction(case, logits, labels_only)

    own = evaluate_cases(model, cases, task, settings, EvaluationRequest(stage="test", on_prediction=save))
    clock = CpuClock()
    sides = {"own evaluation (predict + score)": lambda: evaluate_cases(model, cases, task, settings),
             "external, labels + probabilities": lambda: score_source(ExternalSource("p", predictions), cases, task),
             "external, label files only": lambda: score_source(ExternalSource("l", labels_only), cases, task)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            times[name].append(clock.time(fn))
    external = score_source(ExternalSource("p", predictions), cases, task)
    same = all(abs(a["dice_wt"] - b["dice_wt"]) < 1e-9 for a, b in zip(own.per_case, external.per_case))
    print(f"# bench_external {datetime.date.today()} {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU share {clock.share():.2f}")
    print(f"{len(cases)} test cases of {args.size}^3, {args.repeats} repeats; per-case Dice equal: {same}")
    base = statistics.median(times["own evaluation (predict + score)"]) / len(cases)
    print("| side | s per case | ratio to own |\n|---|---|---|")
    for name, values in times.items():
        per_case = statistics.median(values) / len(cases)
        print(f"| {name} | {per_case:.3f} | {per_case / base:.3f} |")


if __name__ == "__main__":
    run_in_workdir(run, parse_args())
