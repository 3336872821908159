"""What does a 2.5D nodule segmenter learn? Voxel-level precision, recall and specificity on the test scans of a
LUNA16-track sweep, and the share of each tissue it marks as nodule, trained beside untrained.

    python benchmarks/bench_luna_tissue.py --results_dir DIR    # a finished --dataset_version synthetic_luna sweep

Whole-volume Dice hides what the LUNA chapter's recipe teaches (its weighted Dice rewards recall 8:1): this table
shows it. Tissues by HU (the cached intensity is HU windowed to [-1000, 1000] -> [0, 1]): air < -950, lung -950 to
-500, soft tissue >= -500 outside the nodule masks. The untrained model is built as the job built it (same seed,
same kwargs); predictions go through volbench's own whole-case inference (softmax argmax).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.model_setup import ModelSetup  # noqa: E402
from engine.inference import case_logits  # noqa: E402
from engine.options.config import ExperimentConfig  # noqa: E402
from engine.sweep_plan import prepare_data  # noqa: E402
from experiment_runner import inference_settings  # noqa: E402
from models import model_info  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402

HU_LOW, HU_HIGH = -1000.0, 1000.0
TISSUES = {"air": (-np.inf, -950.0), "lung": (-950.0, -500.0), "soft": (-500.0, np.inf)}


def load_config(results_dir: Path) -> ExperimentConfig:
    raw = json.loads((results_dir / "config.json").read_text())
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: tuple(v) if k in ("synthetic_size", "patch_size") and v else v for k, v in raw.items() if k in names}
    return dataclasses.replace(ExperimentConfig(**values), resume=True)  # reuse the sweep's splits.json


def tissue_table(model: torch.nn.Module, setup: ModelSetup, config: ExperimentConfig, cases: list) -> dict[str, float]:
    """Pooled voxel counts over ``cases`` -> precision, recall, specificity, Dice and the marked share per tissue."""
    settings = inference_settings(setup, config, torch.device("cpu"))
    counts = dict(tp=0, fp=0, fn=0, tn=0)
    marked = {t: [0, 0] for t in TISSUES}
    for case in cases:
        pred = case_logits(model, case, settings).argmax(0).numpy() > 0
        label = np.asarray(case.label) > 0
        hu = np.asarray(case.image[0]) * (HU_HIGH - HU_LOW) + HU_LOW
        counts["tp"] += int((pred & label).sum())
        counts["fp"] += int((pred & ~label).sum())
        counts["fn"] += int((~pred & label).sum())
        counts["tn"] += int((~pred & ~label).sum())
        for tissue, (low, high) in TISSUES.items():
            mask = (hu >= low) & (hu < high) & ~label
            marked[tissue][0] += int((pred & mask).sum())
            marked[tissue][1] += int(mask.sum())
    tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
    row = dict(precision=tp / max(tp + fp, 1), recall=tp / max(tp + fn, 1), specificity=tn / max(tn + fp, 1),
               dice=2 * tp / max(2 * tp + fp + fn, 1))
    row.update({f"marked_{t}": a / max(b, 1) for t, (a, b) in marked.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results_dir", type=Path, required=True)
    args = parser.parse_args()
    config = load_config(args.results_dir)
    data = prepare_data(config, args.results_dir)
    cases = [data.cases[c] for c in data.splits["test"]]
    runs = sorted(args.results_dir.glob("*_best.pth"))
    print(f"{len(cases)} test scans; tissues by HU: {TISSUES}")
    print("| run | weights | precision | recall | specificity | Dice | air marked | lung marked | soft marked |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in runs:
        payload = load_checkpoint(path)
        meta = payload["meta"]
        setup = ModelSetup(name=payload["model_name"], info=model_info(payload["model_name"]),
                           modalities=tuple(meta["modalities"]), spatial_dims=meta["spatial_dims"],
                           patch_size=tuple(meta["patch_size"]), model_kwargs=payload["model_kwargs"],
                           context_slices=int(meta.get("context_slices", 0)))
        for weights in ("untrained", "trained"):
            seed_everything(int(meta["seed"]))  # the job seeded the same way right before building
            model = setup.build()
            if weights == "trained":
                model.load_state_dict(payload["state_dict"])
            r = tissue_table(model, setup, config, cases)
            print(f"| {path.stem} | {weights} | {r['precision']:.4f} | {r['recall']:.3f} | {r['specificity']:.3f} | "
                  f"{r['dice']:.4f} | {r['marked_air']:.3f} | {r['marked_lung']:.3f} | {r['marked_soft']:.3f} |")


if __name__ == "__main__":
    main()
