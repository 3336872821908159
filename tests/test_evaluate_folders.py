"""Prediction-folder mode: matching by case name, conventions, spacing, agreement with MONAI, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

import evaluate_experiment
from engine.evaluate.folders import case_name, evaluate_folder, match_pairs

# MONAI 1.6's reference HD95 passes its own deprecated argument internally (volbench's metrics filter it too)
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

SHAPE = (24, 20, 16)
SPACING = (1.5, 1.0, 2.0)
REGIONS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
TO_BRATS2021 = np.array([0, 1, 2, 4], dtype=np.uint8)  # internal -> file labels (written independently)


def _blob_labels(seed: int, shift: int = 0) -> np.ndarray:
    """Internal labels: oedema ball, core ball, enhancing shell, centred with a per-seed offset."""
    rng = np.random.default_rng(seed)
    centre = np.array(SHAPE) / 2 + rng.integers(-3, 4, 3) + shift
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    r = np.sqrt(sum(((grid[i] - centre[i]) * SPACING[i] / SPACING[1]) ** 2 for i in range(3)))
    out = np.zeros(SHAPE, dtype=np.uint8)
    out[r < 7 + rng.uniform(-1, 1)] = 2
    out[r < 4.5] = 3
    out[r < 2.5 + rng.uniform(0, 1)] = 1
    return out


def _save(path: Path, array: np.ndarray, spacing: tuple[float, ...] = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """3 cases in BraTS 2021 labels (ET = 4): nii.gz with _seg labels, .nii, and .npy predictions."""
    pred_dir, label_dir, truth = tmp_path / "pred", tmp_path / "labels", {}
    for k, name in enumerate(("case_a", "case_b", "case_c")):
        ref, pred = _blob_labels(k), _blob_labels(k + 10, shift=1)
        truth[name] = (pred, ref)
        _save(label_dir / f"{name}_seg.nii.gz", TO_BRATS2021[ref])
        if name == "case_c":
            np.save(pred_dir / f"{name}.npy", TO_BRATS2021[pred])
        else:
            _save(pred_dir / (f"{name}.nii" if name == "case_b" else f"{name}-seg.nii.gz"), TO_BRATS2021[pred])
    return pred_dir, label_dir, truth


def _monai(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MONAI Dice and HD95 (mm) per BraTS region, computed on region one-hot masks."""
    p = torch.from_numpy(np.stack([np.isin(pred, m) for m in REGIONS.values()]))[None].float()
    r = torch.from_numpy(np.stack([np.isin(ref, m) for m in REGIONS.values()]))[None].float()
    dice = DiceMetric(include_background=True, reduction="none")(p, r)[0].numpy()
    hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p, r, spacing=list(SPACING))
    return dice, hd[0].numpy()


def test_case_names_and_matching(folders: tuple[Path, Path, dict]) -> None:
    assert case_name(Path("BraTS_001_seg.nii.gz")) == "BraTS_001"
    assert case_name(Path("x-seg.nii")) == "x" and case_name(Path("x.npy")) == "x"
    assert case_name(Path("notes.txt")) is None
    pairs = match_pairs(folders[0], folders[1])
    assert [p.case_id for p in pairs] == ["case_a", "case_b", "case_c"]


def test_metrics_agree_with_monai(folders: tuple[Path, Path, dict]) -> None:
    pred_dir, label_dir, truth = folders
    # HD95 uses the label file's spacing, also for the .npy prediction of case_c
    rows, summary = evaluate_folder(pred_dir, label_dir, task="brats", label_convention="brats2021")
    by_case = {r["case_id"]: r for r in rows}
    for name, (pred, ref) in truth.items():
        dice, hd = _monai(pred, ref)
        for i, region in enumerate(REGIONS):
            assert by_case[name][f"dice_{region}"] == pytest.approx(float(dice[i]), abs=1e-6), (name, region)
            assert by_case[name][f"hd95_{region}"] == pytest.approx(float(hd[i]), abs=1e-4), (name, region)
    assert summary["n_cases"] == 3 and summary["nan_count"]["dice_wt"] == 0
    assert summary["mean"]["dice_et"] == pytest.approx(np.mean([r["dice_et"] for r in rows]))


def test_cli_writes_csv_and_summary_and_honours_spacing(folders: tuple[Path, Path, dict], tmp_path: Path) -> None:
    pred_dir, label_dir, truth = folders
    out = tmp_path / "out" / "metrics.csv"
    assert evaluate_experiment.main(["--pred_dir", str(pred_dir), "--label_dir", str(label_dir), "--task", "brats",
                                     "--label_convention", "brats2021", "--output_csv", str(out),
                                     "--spacing", "1", "1", "1"]) == 0
    frame = pd.read_csv(out)
    assert list(frame["case_id"]) == ["case_a", "case_b", "case_c"]
    assert {"dice_wt", "hd95_et", "precision_tc", "recall_et", "dice_ncr", "dice_ed"} <= set(frame.columns)
    summary = json.loads((tmp_path / "out" / "metrics_summary.json").read_text())
    assert summary["mean"]["dice_wt"] == pytest.approx(frame["dice_wt"].mean())
    pred, ref = truth["case_a"]
    p = torch.from_numpy(np.isin(pred, REGIONS["wt"]))[None, None].float()
    r = torch.from_numpy(np.isin(ref, REGIONS["wt"]))[None, None].float()
    hd_1mm = HausdorffDistanceMetric(include_background=True, percentile=95)(p, r).item()
    assert frame.loc[0, "hd95_wt"] == pytest.approx(hd_1mm, abs=1e-4)


def test_binary_task_and_conventions(tmp_path: Path) -> None:
    ref, pred = _blob_labels(1), _blob_labels(2, shift=2)
    _save(tmp_path / "l" / "x.nii.gz", (ref * 7).astype(np.int16))  # any non-zero value is foreground
    _save(tmp_path / "p" / "x.nii.gz", (pred > 0).astype(np.uint8))
    rows, summary = evaluate_folder(tmp_path / "p", tmp_path / "l", task="binary")
    expected, _ = _monai((pred > 0).astype(np.uint8) * 3, (ref > 0).astype(np.uint8) * 3)
    assert rows[0]["dice_lesion"] == pytest.approx(float(expected[2]), abs=1e-6)
    assert summary["regions"] == {"lesion": [1]}
    # msd: 1 oedema, 2 non-enhancing, 3 enhancing -> internal 2, 1, 3 (so TC = file labels {2, 3})
    msd = np.array([0, 2, 1, 3], dtype=np.uint8)
    _save(tmp_path / "ml" / "y.nii.gz", msd[ref])
    _save(tmp_path / "mp" / "y.nii.gz", msd[ref])
    rows, _ = evaluate_folder(tmp_path / "mp", tmp_path / "ml", task="brats", label_convention="msd")
    assert rows[0]["dice_tc"] == pytest.approx(1.0) and rows[0]["dice_ncr"] == pytest.approx(1.0)


def _fails(argv: list[str], caplog: pytest.LogCaptureFixture, *needles: str) -> None:
    caplog.clear()
    assert evaluate_experiment.main(argv) == 2
    for needle in needles:
        assert needle in caplog.text, (needle, caplog.text)


def test_bad_folder_inputs(folders: tuple[Path, Path, dict], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pred_dir, label_dir, _ = folders
    base = ["--pred_dir", str(pred_dir), "--label_dir", str(label_dir), "--output_csv", str(tmp_path / "o.csv")]
    _save(pred_dir / "case_d.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    _fails(base, caplog, "missing label for case(s) ['case_d']", str(label_dir))
    _save(label_dir / "case_d_seg.nii.gz", np.zeros((SHAPE[0], SHAPE[1], SHAPE[2] + 1), dtype=np.uint8))
    _fails(base, caplog, "case_d", "case_d.nii.gz", "case_d_seg.nii.gz", "shape")
    _save(label_dir / "case_d_seg.nii.gz", np.full(SHAPE, 3, dtype=np.uint8))  # 3 is not a brats2021 label
    _fails(base, caplog, "case_d_seg.nii.gz", "[3]")
    (pred_dir / "case_d.nii.gz").unlink()
    _fails(base, caplog, "missing prediction for case(s) ['case_d']")
    _fails(["--pred_dir", str(pred_dir), "--label_dir", str(label_dir)], caplog, "--output_csv")


def test_probability_files_beside_predictions_are_skipped(folders: tuple[Path, Path, dict]) -> None:
    """A volbench prediction folder written with --save_probabilities can be evaluated as it is."""
    pred_dir, label_dir, _ = folders
    _save(pred_dir / "case_a_probabilities.nii.gz", np.zeros((*SHAPE, 4), dtype=np.float32))
    assert [p.case_id for p in match_pairs(pred_dir, label_dir)] == ["case_a", "case_b", "case_c"]
    rows, _ = evaluate_folder(pred_dir, label_dir, task="brats", label_convention="brats2021")
    assert [r["case_id"] for r in rows] == ["case_a", "case_b", "case_c"]


def test_npy_label_takes_the_spacing_of_the_nifti_prediction(tmp_path: Path) -> None:
    ref, pred = _blob_labels(0), _blob_labels(10, shift=1)
    _save(tmp_path / "p" / "x.nii.gz", TO_BRATS2021[pred])  # header spacing SPACING
    (tmp_path / "l").mkdir()
    np.save(tmp_path / "l" / "x_seg.npy", TO_BRATS2021[ref])
    rows, _ = evaluate_folder(tmp_path / "p", tmp_path / "l", task="brats", label_convention="brats2021")
    _, hd = _monai(pred, ref)
    for i, region in enumerate(REGIONS):
        assert rows[0][f"hd95_{region}"] == pytest.approx(float(hd[i]), abs=1e-4), region


def test_prediction_with_flipped_axes_is_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ref = _blob_labels(0)
    _save(tmp_path / "l" / "x_seg.nii.gz", TO_BRATS2021[ref])
    flipped = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])  # same shape and spacing, axis 0 reversed
    (tmp_path / "p").mkdir()
    nib.save(nib.Nifti1Image(TO_BRATS2021[ref[::-1]], flipped), str(tmp_path / "p" / "x.nii.gz"))
    _fails(["--pred_dir", str(tmp_path / "p"), "--label_dir", str(tmp_path / "l"), "--output_csv",
            str(tmp_path / "o.csv")], caplog, "x.nii.gz", "x_seg.nii.gz", "flipped")
