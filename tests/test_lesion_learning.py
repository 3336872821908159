"""Every lesion model learns: trained for a few epochs on easy CT phantoms (one large, high-contrast haemorrhage
in three scans of four), each tiny lesion model must find the validation lesions (AP@0.1) and DetSeg3D must
also segment them (Dice); each epoch's row shows the proposals per scan and the highest score.

A seeded ``--deterministic`` sweep through the real runner with each model's own recipe (optimiser, learning
rate); the margins sit well below what the models reach and far above an untrained model (AP 0, Dice 0), so
the test fails when a change stops a model from learning, not when a number moves a little.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dataio.types import CachedCase, CropBox, DatasetInfo, LoadedDataset
from engine.options.config import parse_config
from experiment_runner import run_integrated_experiment
from utils.schema import EPOCHS_CSV

SIZE = (32, 32, 16)  # voxels: axes (D, H, W) = (in-plane, in-plane, slices), as the CT phantoms
SPACING = (1.0, 1.0, 4.0)  # mm
N_CASES, VAL, TEST = 16, 4, 2
EPOCHS = 12
MARGINS = {"retinanet": dict(val_ap_10=0.5), "detseg3d": dict(val_ap_10=0.5, val_dice_ich=0.2)}


def easy_case(index: int, rng: np.random.Generator) -> CachedCase:
    """A head-like ellipse (0.25, noise 0.02; air 0) holding, unless ``index % 4 == 3``, one ellipsoidal
    haemorrhage of 0.7 with in-plane radii of 4 to 6 voxels over 3 slices, anywhere inside the head."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SIZE], indexing="ij"))
    centre = (np.array(SIZE, dtype=np.float32) - 1) / 2
    head = sum(((grid[a] - centre[a]) / (0.45 * SIZE[a])) ** 2 for a in range(3)) < 1
    image = np.where(head, 0.25, 0.0) + 0.02 * rng.standard_normal(SIZE)
    label = np.zeros(SIZE, dtype=np.uint8)
    if index % 4 != 3:
        radii = np.array([rng.uniform(4, 6), rng.uniform(4, 6), 1.5])
        middle = np.array([rng.uniform(9, 23), rng.uniform(9, 23), rng.uniform(5, 11)])
        blob = sum(((grid[a] - middle[a]) / radii[a]) ** 2 for a in range(3)) < 1
        label[blob & head] = 1
        image[label > 0] = 0.7 + 0.02 * rng.standard_normal(int(label.sum()))
    case_id = f"EASY_{index:02d}"
    return CachedCase(case_id=case_id, patient_id=case_id, image=image[None].astype(np.float32), label=label,
                      spacing=SPACING, affine=np.diag([*SPACING, 1.0]), original_shape=SIZE,
                      crop=CropBox(start=(0, 0, 0), stop=SIZE), convention="internal", channel_names=("ct",),
                      foreground_voxels=int(label.sum()))


def easy_ct_dataset() -> LoadedDataset:
    rng = np.random.default_rng(25)
    return LoadedDataset(info=DatasetInfo(name="easy_ich", channels=("ct",), label_kind="binary", region="ich"),
                         cases=[easy_case(i, rng) for i in range(N_CASES)])


def write_splits(path: Path, ids: list[str]) -> Path:
    """Holdout split with ``VAL`` validation scans (three of them with a lesion) and ``TEST`` test scans."""
    val, test = ids[:VAL], ids[VAL:VAL + TEST]
    path.write_text(json.dumps(dict(mode="holdout", test=test, folds=[dict(fold=None, train=ids[VAL + TEST:],
                                                                            val=val)])))
    return path


@pytest.fixture(scope="module")
def epochs(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("learning")
    dataset = easy_ct_dataset()
    splits = write_splits(root / "splits.json", [c.case_id for c in dataset.cases])
    config = parse_config(["--models", *MARGINS, "--tiny", "--epochs", str(EPOCHS), "--samples_per_volume", "4",
                           "--num_workers", "0", "--skip_efficiency", "--deterministic", "--seeds", "1",
                           "--splits_file", str(splits), "--output_dir", str(root / "out"),
                           "--cache_dir", str(root / "cache")])
    run_integrated_experiment(config, dataset=dataset)
    return pd.read_csv(root / "out" / EPOCHS_CSV)


@pytest.mark.parametrize("model", list(MARGINS))
def test_each_lesion_model_learns_to_find_the_easy_haemorrhages(epochs: pd.DataFrame, model: str) -> None:
    rows = epochs[epochs["model"] == model].sort_values("epoch")
    assert len(rows) == EPOCHS
    last = rows.tail(3)  # the last validations, so one lucky epoch does not pass a model that stopped learning
    for column, margin in MARGINS[model].items():
        assert last[column].mean() > margin, f"{model}: {column} {last[column].tolist()} <= {margin}"
    # the epoch table shows at once whether the detector proposes anything, and how confident it is
    assert (last["val_proposals_mean"] > 0).all() and (last["val_max_score"] > 0.1).all()
