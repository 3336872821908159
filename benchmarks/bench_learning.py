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

Every registry family (``--families [NAME ...]``, default all): one representative model per family (the smallest
size, ``PREFERRED`` where that is a duplicate; every architecture of ``EVERY_ARCHITECTURE``: both U-Nets, UNETR and
Swin UNETR, both Mobile UNETRs) is trained on its track, one sweep per track, with ``--deterministic
--skip_efficiency --seeds 24``, then evaluated beside its untrained self, and one table of every family is printed
(and written to ``families_learning.csv`` under the root):

    python benchmarks/bench_learning.py --families --threads 1 --out_root DIR   # every family: ~1.5 h on 2 shared cores
    python benchmarks/bench_learning.py --families retinanet detseg3d --threads 1
    python benchmarks/bench_learning.py --families --results_dir DIR             # the table again, no training

Rerunning the first command with the same ``--out_root`` resumes: finished sweeps and jobs are kept.

Tracks (see ``TRACKS``): BraTS families (the ones tied to MRI modalities) on the synthetic BraTS phantoms, default
build of the smallest size; every model that takes CT (``any_channels``, detectors, detect-then-segment) on small
``synthetic_ich`` phantoms in its ``--tiny`` build (batch 1 under ``--deterministic`` runs PyTorch's slow_conv3d, so
the default builds do not fit a CPU run), cheap ones for more epochs (``LONG``), windows larger than the scans apart
(``LARGE``), the detectors also on the track's default 64 x 64 x 16 phantoms (``ALSO``: DetSeg3D with the DetSeg3D
subsection's budget), BraTS models that leave the early all-background phase later for 12 epochs (``BRATS_LONG``); the
promptable models on ``synthetic_ich`` (tiny, prompt-free and clicks; SAM-Med3D from scratch at lr 1e-3, its recipe's
1e-4 being a fine-tuning rate); unet2d_luna on ``synthetic_luna``. A model learns when its gain
over the untrained model reaches the track's margin on each of the track's criteria that the model reports (BraTS:
WT Dice; CT: AP@0.1, and Dice ICH where the model gives a mask; promptable: Dice ICH; LUNA: Dice nodule).
``DEFERRED`` families (measured in their own subsections of benchmarks/RESULTS.md) are listed, not run, unless named.
The sweeps go under ``--out_root`` (one folder per track and epoch count); ``--results_dir`` takes sweeps or such
roots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import re
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
from models import list_models, model_info  # noqa: E402
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
    result = evaluate_model(model, plan, data.subset(data.splits["test"]), config, device=device,
                            seed=int(run["seed"]))
    return {k: float(v) for k, v in result.aggregate.items() if isinstance(v, (int, float))}


# ---------------------------------------------------------------------------------------------------------------
# Every registry family (--families)

COMMON = ["--deterministic", "--skip_efficiency", "--seeds", "24", "--num_workers", "0", "--tracker", "none"]


@dataclasses.dataclass(frozen=True)
class Track:
    """One track of the families run: its sweep flags, the metrics shown and the learning rule.

    ``criteria``: metrics whose gain over the untrained model must reach ``margin`` (those the model reports:
    RetinaNet gives no mask, so its Dice ICH is not asked for)."""

    name: str
    dataset: str
    flags: tuple[str, ...]
    epochs: int
    tiny: bool
    metrics: tuple[str, ...]
    criteria: tuple[str, ...]
    margin: float


CT_PHANTOMS = ("--synthetic_cases", "48", "--synthetic_size", "32", "32", "16")
TRACKS = {
    # The README's main-job phantoms at 32^3 (one patch is the whole case, so validation is one window), 4 patches
    # per case per epoch in batches of 2: batch 1 under --deterministic runs PyTorch's slow_conv3d, ~7x slower per
    # sample at 32^3 than batch 2's oneDNN path (benchmarks/FACTS: unet3d_xs 1.48 s vs 0.20 s).
    "brats": Track("brats", "synthetic", ("--synthetic_cases", "16", "--synthetic_size", "32", "32", "32",
                                          "--patch_size", "32", "32", "32", "--samples_per_volume", "4",
                                          "--batch_size", "2"),
                   epochs=5, tiny=False, metrics=("dice_wt", "dice_tc", "dice_et"), criteria=("dice_wt",),
                   margin=0.3),
    # The same for 12 epochs, for the BraTS models that leave the early all-background phase later (``BRATS_LONG``).
    "brats_long": Track("brats_long", "synthetic", ("--synthetic_cases", "16", "--synthetic_size", "32", "32", "32",
                                                    "--patch_size", "32", "32", "32", "--samples_per_volume", "4",
                                                    "--batch_size", "2"),
                        epochs=12, tiny=False, metrics=("dice_wt", "dice_tc", "dice_et"), criteria=("dice_wt",),
                        margin=0.3),
    # Small CT phantoms (48 scans of 32 x 32 x 16 voxels, ~1 x 1 x 4.5 mm: the haemorrhages of 1-15 mm radius are
    # large for the head), each tiny build on its registry test patch (``--tiny`` uses it as given, e.g. 32^3 for
    # the U-Nets: the 16-slice scans fill half of it), 2 patches per scan per epoch, each model's own recipe; tiny
    # builds (the default ones at batch 1 under --deterministic do not fit a CPU run).
    "ct": Track("ct", "synthetic_ich", (*CT_PHANTOMS, "--samples_per_volume", "2"),
                epochs=10, tiny=True, metrics=("ap_10", "map", "froc_cpm", "dice_ich"),
                criteria=("ap_10", "dice_ich"), margin=0.1),
    # The same with 30 epochs for the models whose epoch is cheap (``LONG``), the detectors among them.
    "ct_long": Track("ct_long", "synthetic_ich", (*CT_PHANTOMS, "--samples_per_volume", "2"),
                     epochs=30, tiny=True, metrics=("ap_10", "map", "froc_cpm", "dice_ich"),
                     criteria=("ap_10", "dice_ich"), margin=0.1),
    # The detectors also on the CT track's default phantoms (48 scans of 64 x 64 x 16, the DetSeg3D subsection's and
    # issue 25's): at stride 8 a 32 x 32 x 16 scan is a 4 x 4 x 2 heatmap (one RoI per scan, boxes of >= 8 voxels).
    "ct64": Track("ct64", "synthetic_ich", ("--synthetic_cases", "48", "--synthetic_size", "64", "64", "16",
                                            "--samples_per_volume", "2"),
                  epochs=30, tiny=True, metrics=("ap_10", "map", "froc_cpm", "dice_ich"),
                  criteria=("ap_10", "dice_ich"), margin=0.1),
    # DetSeg3D with the DetSeg3D subsection's budget, 8 patches per scan (the CLI's default), 20 epochs (chosen when
    # its tiny build trained at the seed's lr 1e-4, meant for 100 epochs; the tiny build's recipe is lr 1e-3 since
    # 2026-12-06).
    "ct64_det": Track("ct64_det", "synthetic_ich", ("--synthetic_cases", "48", "--synthetic_size", "64", "64", "16",
                                                    "--samples_per_volume", "8"),
                      epochs=20, tiny=True, metrics=("ap_10", "map", "froc_cpm", "dice_ich"),
                      criteria=("ap_10", "dice_ich"), margin=0.1),
    # The ct phantoms for the models whose windows are larger than the scans (``LARGE``): 64 x 64 x 32 windows
    # (Swin UNETR's smallest that trains: 32^3 leaves a 1-voxel bottleneck that instance norm refuses), 1 patch per
    # scan per epoch.
    "ct_large": Track("ct_large", "synthetic_ich", (*CT_PHANTOMS, "--patch_size", "64", "64", "32",
                                                    "--samples_per_volume", "1"),
                      epochs=8, tiny=True, metrics=("ap_10", "map", "froc_cpm", "dice_ich"),
                      criteria=("ap_10", "dice_ich"), margin=0.1),
    # The promptable subsection's configuration (prompt-free Dice and 1 / 3 clicks).
    "ct_prompt": Track("ct_prompt", "synthetic_ich", ("--synthetic_cases", "16", "--synthetic_size", "32", "32",
                                                      "16", "--samples_per_volume", "4", "--clicks", "1", "3"),
                       epochs=8, tiny=True, metrics=("dice_ich", "dice_ich_click1", "dice_ich_click3", "ap_10"),
                       criteria=("dice_ich",), margin=0.1),
    # SAM-Med3D from scratch: its recipe's lr (1e-4, accumulation 4) is a fine-tuning rate for released weights and
    # does not learn from scratch in a CPU budget; lr 1e-3 without accumulation on 64 x 64 x 16 phantoms does
    # (RESULTS.md, "Promptable models on the CT phantoms", run D).
    "ct_sam": Track("ct_sam", "synthetic_ich", ("--synthetic_cases", "16", "--synthetic_size", "64", "64", "16",
                                                "--samples_per_volume", "8", "--clicks", "1", "3", "--lr", "1e-3",
                                                "--grad_accum", "1"),
                    epochs=20, tiny=True, metrics=("dice_ich", "dice_ich_click1", "dice_ich_click3", "ap_10"),
                    criteria=("dice_ich",), margin=0.1),
    # The unet2d_luna subsection's configuration.
    "luna": Track("luna", "synthetic_luna", ("--synthetic_cases", "24", "--synthetic_size", "64", "64", "32",
                                             "--samples_per_volume", "32"),
                  epochs=10, tiny=False, metrics=("dice_nodule", "ap_10", "froc_cpm"), criteria=("dice_nodule",),
                  margin=0.1),
}
RUN_ORDER = ("ct_long", "ct", "ct_large", "brats", "brats_long", "ct64", "ct64_det", "ct_prompt", "ct_sam", "luna")
# Models also run on a second track (see the track's comment).
ALSO = {"detseg3d": "ct64_det", "retinanet": "ct64"}
# BraTS models on the brats_long track (validation WT at 0 for epochs 3-4 before it rises to 0.83 at epoch 5 and
# 0.9 at 12: the tumour probability split over the three tumour classes, each below background).
BRATS_LONG = {"dualbranch_14_convnext_xs"}
# CT models on the ct_long track: a tiny build's epoch takes a few seconds (2-10 s here against 12-26 s for the
# U-Nets), and the detectors' recipes are meant for many epochs (RetinaNet's lr steps at 50, DetSeg3D's 1e-4);
# mobile_unetr_3d's skip-free decoder needs them too (validation Dice ICH 0.26 at epoch 13, 0.43 at 25).
LONG = {"detseg3d", "retinanet", "mednext_s", "mobile_unetr", "mobile_unetr_3d"}
# CT models on the ct_large track, each with the reason (their steps cost ~10x a tiny U-Net's).
LARGE = {
    "swin_unetr": "32-divisible windows; 32^3 fails (1-voxel bottleneck): 64 x 64 x 32",
}
# The family's representative when it is not simply the smallest model.
PREFERRED = {
    "modality_comparison": "quadbranch_4modal_attention_unet_s",  # dualbranch_2modal_unet_s is dualbranch_01_unet_s
}
# Families measured in their own subsections of benchmarks/RESULTS.md: listed, run only when named.
DEFERRED = {
    "sam_med3d": "see subsection 'Promptable models on the CT phantoms'",
    "vista3d": "see subsection 'Promptable models on the CT phantoms'",
    "unet2d_luna": "see subsection 'unet2d_luna on the LUNA16 phantoms'",
}
# Families whose architectures differ beyond size (issue 25 names them: U-Nets, UNETR and Swin UNETR, Mobile UNETR
# 2D and 3D): each architecture's smallest model runs; any other family runs its smallest model.
EVERY_ARCHITECTURE = {"unet3d", "monai_transformers", "mobile_unetr"}
SIZES = {"xs": 0, "s": 1, "m": 2, "l": 3}
FAMILIES_CSV = "families_learning.csv"


def track_of(name: str) -> str:
    info = model_info(name)
    if info.family == "unet2d_luna":
        return "luna"
    if info.task == "promptable":
        return "ct_sam" if info.family == "sam_med3d" else "ct_prompt"
    if info.any_channels or info.task != "segmentation":
        return "ct_large" if name in LARGE else "ct_long" if name in LONG else "ct"
    return "brats_long" if name in BRATS_LONG else "brats"


def _size_key(name: str) -> tuple:
    size = re.search(r"_(xs|s|m|l)$", name)
    return (SIZES[size.group(1)] if size else 1, model_info(name).num_params or 0, name)


def representatives(family: str) -> list[str]:
    """The family's smallest model (``PREFERRED`` first), or the smallest of each architecture
    (``EVERY_ARCHITECTURE``)."""
    names = sorted(n for n in list_models() if model_info(n).family == family)
    if family in PREFERRED and PREFERRED[family] in names:
        return [PREFERRED[family]]
    variants: dict[str, list[str]] = {}
    for name in names:
        variants.setdefault(re.sub(r"_(xs|s|m|l)$", "", name), []).append(name)
    smallest = [min(group, key=_size_key) for group in variants.values()]
    if family in EVERY_ARCHITECTURE:
        return smallest
    return [min(smallest, key=_size_key)]


def all_families() -> list[str]:
    return sorted({model_info(n).family for n in list_models()})


def family_plan(families: list[str]) -> dict[str, list[str]]:
    """track -> its models, one sweep each, in ``RUN_ORDER``."""
    plan: dict[str, list[str]] = {}
    for family in families:
        for name in representatives(family):
            plan.setdefault(track_of(name), []).append(name)
            if name in ALSO:
                plan.setdefault(ALSO[name], []).append(name)
    return {track: plan[track] for track in RUN_ORDER if track in plan}


def sweep_argv(track: Track, epochs: int, models: list[str], output_dir: Path) -> list[str]:
    return (["--dataset_version", track.dataset, *track.flags, "--epochs", str(epochs), "--models", *models,
             *COMMON, "--output_dir", str(output_dir)] + (["--tiny"] if track.tiny else []))


def track_of_sweep(config: ExperimentConfig) -> Track:
    if any(model_info(m).task == "promptable" for m in config.models):
        return TRACKS["ct_prompt"]
    if config.dataset_version == "synthetic_ich":
        if tuple(config.synthetic_size or ()) == (64, 64, 16):
            return TRACKS["ct64_det" if config.samples_per_volume == 8 else "ct64"]
        return TRACKS["ct_large" if all(m in LARGE for m in config.models) else
                      "ct_long" if all(m in LONG for m in config.models) else "ct"]
    return next(t for t in TRACKS.values() if t.dataset == config.dataset_version)


def compare_sweep(results_dir: Path) -> list[dict]:
    """One row per ok run of the sweep: the track's metrics trained and untrained, the gain, learns or not."""
    config = load_config(results_dir)
    track = track_of_sweep(config)
    device = resolve_device(config.device)
    config.resume = True  # keep the sweep's own split
    data = prepare_data(config, results_dir)
    runs = pd.read_csv(results_dir / "integrated_experiment_results.csv")
    rows = []
    for _, run in runs.iterrows():
        row = dict(family=model_info(run["model"]).family, model=run["model"], track=track.name,
                   config="tiny" if config.tiny else "default", seed=int(run["seed"]), status=run["status"],
                   epochs=int(run["epochs"]) if run["status"] == "ok" else config.epochs,
                   best_epoch=run.get("best_epoch"), train_s=run.get("train_time_s"), sweep=str(results_dir))
        if run["status"] != "ok":
            row.update(learns=False, note=str(run.get("error"))[:120])
            rows.append(row)
            continue
        untrained = untrained_metrics(run, config, data, device)
        gains = []
        for metric in track.metrics:
            trained = float(run[metric]) if metric in run and pd.notna(run[metric]) else math.nan
            row[f"{metric}"], row[f"{metric}_untrained"] = trained, untrained.get(metric, math.nan)
            if metric in track.criteria and not math.isnan(trained):
                gains.append((metric, trained - (row[f"{metric}_untrained"] if not math.isnan(
                    row[f"{metric}_untrained"]) else 0.0)))
        row["gain"] = "; ".join(f"{m} {g:+.3f}" for m, g in gains)
        row["learns"] = bool(gains) and all(g >= track.margin for _, g in gains)
        row["note"] = LARGE.get(run["model"], "")
        rows.append(row)
    return rows


def sweeps_under(paths: list[Path]) -> list[Path]:
    """Each path that is a sweep (has config.json), or the sweeps one level below it."""
    found = []
    for path in paths:
        if (path / "config.json").is_file():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.glob("*/config.json")))
    return found


def _fmt(value: object) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.3f}" if isinstance(value, float) else str(value))


def families_table(rows: list[dict], families: list[str]) -> str:
    """Markdown: one row per model run (and per family not run), the track's metrics trained (untrained)."""
    lines = ["| family | model | track | config | epochs (best) | trained (untrained) | gain | learns |",
             "|---|---|---|---|---|---|---|---|"]
    by_family: dict[str, list[dict]] = {}
    for row in rows:
        by_family.setdefault(row["family"], []).append(row)
    for family in families:
        for row in by_family.get(family, []):
            track = TRACKS[row["track"]]
            if row["status"] != "ok":
                lines.append(f"| {family} | {row['model']} | {row['track']} | {row['config']} | {row['epochs']} | "
                             f"{row['status']}: {row['note']} | - | no |")
                continue
            metrics = ", ".join(f"{m} {_fmt(row.get(m))} ({_fmt(row.get(m + '_untrained'))})"
                                for m in track.metrics if not math.isnan(row.get(m, math.nan)))
            best = f" ({int(row['best_epoch'])})" if pd.notna(row.get("best_epoch")) else ""
            note = f"; {row['note']}" if row.get("note") else ""
            lines.append(f"| {family} | {row['model']} | {row['track']} | {row['config']} | {row['epochs']}{best} | "
                         f"{metrics} | {row['gain']} | {'yes' if row['learns'] else 'no'}{note} |")
        if family not in by_family:
            names = representatives(family)
            lines.append(f"| {family} | {', '.join(names)} | {track_of(names[0])} | - | - | "
                         f"{DEFERRED.get(family, 'not run')} | - | - |")
    return "\n".join(lines)


def run_families(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    known = all_families()
    unknown = [f for f in args.families if f not in known]
    if unknown:
        parser.error(f"unknown families {unknown}; registered: {known}")
    named = args.families or [f for f in known if f not in DEFERRED]
    families = args.families or known
    start = time.perf_counter()
    if args.results_dir:
        sweeps = sweeps_under(args.results_dir)
    else:
        root = args.out_root or Path("baseline_results") / f"bench_learning_families_{datetime.now():%Y%m%d_%H%M%S}"
        sweeps = []
        for track_name, models in family_plan(named).items():
            track = TRACKS[track_name]
            epochs = args.epochs or track.epochs
            out = root / f"{track_name}_{'tiny' if track.tiny else 'default'}_e{epochs}"
            argv = sweep_argv(track, epochs, models, out)
            if (out / "config.json").is_file():  # an earlier run of the same plan: keep its finished jobs
                argv.append("--resume")
            print(f"# sweep {out.name}: python integrated_experiment.py {' '.join(argv)}", flush=True)
            t0 = time.perf_counter()
            code = integrated_experiment.main(argv)
            print(f"# sweep {out.name}: exit {code}, {time.perf_counter() - t0:.0f} s", flush=True)
            if code >= 128:  # stopped by a signal: rerun the same command to continue (--resume)
                return code
            if (out / "config.json").is_file():
                sweeps.append(out)
    rows = [row for sweep in sweeps for row in compare_sweep(sweep)]
    rows = [r for r in rows if r["family"] in families]
    print(f"\n# bench_learning --families {datetime.now():%Y-%m-%d %H:%M}  {platform.platform()}  "
          f"threads={torch.get_num_threads()}  torch {torch.__version__}  ({time.perf_counter() - start:.0f} s here)")
    for track in TRACKS.values():
        print(f"# {track.name}: {track.dataset} {' '.join(track.flags)} --epochs {track.epochs}"
              f"{' --tiny' if track.tiny else ''}; learns = gain >= {track.margin} in {' and '.join(track.criteria)}")
    print(f"# common: {' '.join(COMMON)}; ct_large: " + "; ".join(f"{m} ({why})" for m, why in LARGE.items()))
    print(f"# sweeps: {', '.join(str(s) for s in sweeps)}\n")
    print(families_table(rows, families))
    if rows:
        table = pd.DataFrame(rows)
        target = sweeps[0].parent if not args.results_dir else args.results_dir[0]
        if target.is_dir() and not (target / "config.json").is_file():
            table.to_csv(target / FAMILIES_CSV, index=False)
            print(f"\nper-run figures: {target / FAMILIES_CSV}")
    failed = [r["model"] for r in rows if not r["learns"]]
    print(f"\nevery model run beats its untrained self by its track's margin: {not failed}"
          + (f" (not: {', '.join(failed)})" if failed else ""))
    return 0 if rows and not failed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", type=Path, nargs="+", default=None,
                        help="existing sweeps (one, or with --families sweeps and folders of sweeps) compared "
                             "without training (default: none, run the main job with --deterministic)")
    parser.add_argument("--families", nargs="*", default=None, metavar="NAME",
                        help="every registry family (no names: all; those measured in their own RESULTS.md "
                             "subsections, sam_med3d, vista3d and unet2d_luna, are listed but run only when "
                             "named), one representative each on its track, trained vs untrained (default: off, the "
                             "main job)")
    parser.add_argument("--out_root", type=Path, default=None,
                        help="--families: folder of the sweeps, one per track and epoch count; a sweep already "
                             "there is resumed (its finished jobs are kept) (default: "
                             "baseline_results/bench_learning_families_YYYYMMDD_HHMMSS)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="--families: epochs of every sweep, instead of each track's (default: the track's)")
    parser.add_argument("--min_gain", type=float, default=0.3,
                        help="without --families: Dice gain over the untrained model that counts as learning "
                             "(default: 0.3; --families uses each track's margin)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads for the sweep and the evaluation (default: 2)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.families is not None:
        return run_families(args, parser)
    if args.results_dir and len(args.results_dir) > 1:
        parser.error("several --results_dir need --families")
    start = time.perf_counter()
    results_dir = args.results_dir[0] if args.results_dir else None
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
