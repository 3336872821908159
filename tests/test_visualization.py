"""Tests for the CSV-only result charts in ``visualization``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import visualization
from visualization import _common

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OK_MODELS = ("unet3d_s", "swin_unetr", "dualbranch_14_s")
FAILED_ONLY = "broken_model_zz"
SEEDS = (24, 42)
EPOCHS = 3
PNGS = (
    "learning_curves.png",
    "model_comparison_chart.png",
    "parameter_efficiency.png",
    "modality_contribution.png",
    "dice_boxplots.png",
)
HTML = "interactive_3d_analysis.html"


def _runs(models: tuple[str, ...]) -> list[tuple[str, int, float]]:
    """(model, seed, fold) for every run; fold NaN = holdout split, as the runner writes it."""
    return [(m, s, np.nan) for m in models for s in SEEDS]


def _results(regions: tuple[str, ...], rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i, (model, seed, fold) in enumerate(_runs(OK_MODELS)):
        row = {"model": model, "seed": seed, "fold": fold, "status": "ok", "error": "",
               "epochs": EPOCHS, "best_epoch": 2, "params": 1e6 * (i + 1), "flops_torch": 1e9 * (i + 1),
               "pam_train_mb": 100.0 + i, "pam_infer_mb": 40.0 + i, "latency_ms": 5.0 + i,
               "train_time_s": 10.0}
        for r in regions:
            row[f"dice_{r}"] = rng.uniform(0.5, 0.9)
            row[f"hd95_{r}"] = rng.uniform(1, 10)
        rows.append(row)
    rows[1]["latency_ms"] = np.nan  # a NaN in one run must not drop the model
    rows[2][f"dice_{regions[0]}"] = np.nan
    rows.append({"model": FAILED_ONLY, "seed": 24, "fold": np.nan, "status": "failed",
                 "error": "RuntimeError: boom", "params": 5e6, "latency_ms": 3.0,
                 f"dice_{regions[0]}": 0.99})
    rows.append({"model": OK_MODELS[0], "seed": 7, "fold": np.nan, "status": "oom",
                 "error": "CUDA out of memory"})
    frame = pd.DataFrame(rows)
    frame["dice_mean"] = frame[[f"dice_{r}" for r in regions]].mean(axis=1)
    return frame


def _epochs(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for model, seed, fold in [*_runs(OK_MODELS), (FAILED_ONLY, 24, np.nan)]:
        for epoch in range(1, EPOCHS + 1):
            rows.append({"model": model, "seed": seed, "fold": fold, "epoch": epoch,
                         "train_loss": 1.0 / epoch + rng.uniform(0, 0.1),
                         "val_loss": 1.1 / epoch, "val_dice_wt": 0.2 * epoch,
                         "val_dice_mean": np.nan if epoch == 2 and seed == 24 else 0.2 * epoch,
                         "lr": 1e-3, "epoch_time_s": 1.0})
    return pd.DataFrame(rows)


def _per_case(regions: tuple[str, ...], rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for model, seed, fold in [*_runs(OK_MODELS), (FAILED_ONLY, 24, np.nan)]:
        for case in range(4):
            row = {"model": model, "seed": seed, "fold": fold, "case_id": f"case_{case}"}
            row.update({f"dice_{r}": rng.uniform(0, 1) for r in regions})
            rows.append(row)
    rows[0][f"dice_{regions[0]}"] = np.nan
    return pd.DataFrame(rows)


def _modality(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for model, seed, fold in [*_runs(OK_MODELS[:2]), (FAILED_ONLY, 24, np.nan)]:
        for case in range(3):
            for stage in ("enc1", "enc2"):
                for modality in ("t1ce", "flair"):
                    rows.append({"model": model, "seed": seed, "fold": fold,
                                 "case_id": f"case_{case}", "stage": stage,
                                 "modality": modality, "weight": rng.uniform(0, 1)})
    return pd.DataFrame(rows)


def _make_dir(root: Path, regions: tuple[str, ...]) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    _results(regions, rng).to_csv(root / _common.RESULTS_CSV, index=False)
    _epochs(rng).to_csv(root / _common.EPOCHS_CSV, index=False)
    _per_case(regions, rng).to_csv(root / _common.PER_CASE_CSV, index=False)
    _modality(rng).to_csv(root / _common.MODALITY_CSV, index=False)
    return root


_WRITTEN: dict[Path, list[Path]] = {}


@pytest.fixture(scope="module")
def brats_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _make_dir(tmp_path_factory.mktemp("brats"), ("wt", "tc", "et"))
    _WRITTEN[root] = visualization.draw_all(root)
    return root


@pytest.fixture(scope="module")
def binary_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _make_dir(tmp_path_factory.mktemp("ich"), ("ich",))
    _WRITTEN[root] = visualization.draw_all(root)
    return root


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0


@pytest.mark.parametrize("name", PNGS)
@pytest.mark.parametrize("dir_fixture", ["brats_dir", "binary_dir"])
def test_every_png_is_written(name: str, dir_fixture: str, request: pytest.FixtureRequest) -> None:
    _assert_png(request.getfixturevalue(dir_fixture) / name)


@pytest.mark.parametrize("dir_fixture", ["brats_dir", "binary_dir"])
def test_html_has_ok_models_and_offline_plotly(dir_fixture: str, request: pytest.FixtureRequest) -> None:
    text = (request.getfixturevalue(dir_fixture) / HTML).read_text(encoding="utf-8")
    for model in OK_MODELS:
        assert model in text
    assert FAILED_ONLY not in text
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # nothing fetched from a CDN
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # library code is embedded


def test_no_temp_files_left(brats_dir: Path) -> None:
    assert not list(brats_dir.glob("*.tmp"))


@pytest.mark.parametrize("dir_fixture", ["brats_dir", "binary_dir"])
def test_draw_all_returns_every_file(dir_fixture: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(dir_fixture)
    assert sorted(p.name for p in _WRITTEN[root]) == sorted([*PNGS, HTML, "report.html"])
    assert all(p.parent == root for p in _WRITTEN[root])


def test_detect_regions_rules() -> None:
    brats = ["dice_wt", "dice_tc", "dice_et", "dice_ncr", "dice_ed", "dice_mean"]
    assert _common.detect_regions(brats) == ["wt", "tc", "et"]
    assert _common.detect_regions(["dice_ich", "dice_mean", "dice_ncr", "dice_ed"]) == ["ich"]
    assert _common.detect_regions(brats, regions=["et", "xx"]) == ["et"]
    assert _common.detect_regions(["val_dice_wt", "val_dice_mean"], prefix="val_dice_") == ["wt"]


def test_failed_runs_are_filtered(brats_dir: Path) -> None:
    epochs = pd.read_csv(brats_dir / _common.EPOCHS_CSV)
    kept = _common.keep_ok_runs(brats_dir, epochs)
    assert FAILED_ONLY not in set(kept["model"])
    assert set(kept["model"]) == set(OK_MODELS)
    assert len(kept) == len(OK_MODELS) * len(SEEDS) * EPOCHS
    ok = _common.load_ok_results(brats_dir)
    assert set(ok["status"]) == {"ok"} and FAILED_ONLY not in set(ok["model"])


def test_missing_inputs_return_none(tmp_path: Path) -> None:
    for draw in visualization.CHARTS:
        assert draw(tmp_path) is None
    assert visualization.draw_all(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_only_failed_rows_returns_none(tmp_path: Path) -> None:
    pd.DataFrame([{"model": FAILED_ONLY, "seed": 1, "fold": np.nan, "status": "failed",
                   "dice_wt": 0.5, "params": 1e6, "latency_ms": 1.0}]).to_csv(
        tmp_path / _common.RESULTS_CSV, index=False)
    pd.DataFrame([{"model": FAILED_ONLY, "seed": 1, "fold": np.nan, "case_id": "c",
                   "dice_wt": 0.5}]).to_csv(tmp_path / _common.PER_CASE_CSV, index=False)
    for draw in (visualization.draw_model_comparison, visualization.draw_parameter_efficiency,
                 visualization.draw_interactive_3d, visualization.draw_dice_boxplots):
        assert draw(tmp_path) is None


def test_draw_all_survives_a_broken_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _make_dir(tmp_path, ("wt", "tc", "et"))

    def boom(results_dir: Path, regions: list[str] | None = None) -> Path:
        raise RuntimeError("broken chart")

    monkeypatch.setattr(visualization, "CHARTS", (boom, visualization.draw_learning_curves))
    assert [p.name for p in visualization.draw_all(root)] == ["learning_curves.png"]


def test_many_models_comparison(tmp_path: Path) -> None:
    rows = [{"model": f"model_{i:02d}", "seed": s, "fold": f, "status": "ok", "dice_wt": 0.5,
             "dice_tc": 0.4, "dice_et": 0.3, "pam_train_mb": 10.0 * i, "latency_ms": 1.0 + i}
            for i in range(30) for s in (1, 2) for f in (0, 1)]
    pd.DataFrame(rows).to_csv(tmp_path / _common.RESULTS_CSV, index=False)
    _assert_png(visualization.draw_model_comparison(tmp_path))


def test_import_does_not_pull_torch_or_pyplot() -> None:
    code = ("import visualization, sys; assert 'torch' not in sys.modules; "
            "assert 'matplotlib.pyplot' not in sys.modules")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
