"""Other tools' predictions as rows (``--external_predictions NAME=DIR``): a volbench model's own test predictions,
written as files and joined as an external row, score exactly its own metrics; another label convention is read with
``--external_label_map``; a missing case stops the sweep before training; a file on the wrong grid fails its row
only."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import evaluate_experiment
import integrated_experiment
from dataio.conventions import from_internal, to_internal
from engine.evaluate.external import parse_external
from sweep_helpers import tiny_flags
from utils.schema import COMPARISON_CSV, PER_CASE_CSV, RUNS_CSV

JOB = ("--models", "unet3d_xs", "--seeds", "1", "--epochs", "1")
METRICS = ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-job sweep and its model's test predictions (labels and probabilities) written by re-evaluation."""
    root = tmp_path_factory.mktemp("external")
    out, cache = root / "sweep", root / "cache"
    assert integrated_experiment.main(tiny_flags(out, cache, *JOB)) == 0
    evaluation = root / "evaluation"
    assert evaluate_experiment.main(["checkpoints", "--results_dir", str(out), "--save_predictions",
                                     "--save_probabilities", "--output_dir", str(evaluation)]) == 0
    predictions = next(p for p in (evaluation / "predictions").iterdir() if p.is_dir())
    return dict(out=out, cache=cache, predictions=predictions, root=root)


def copy_sweep(sweep: dict[str, Path], target: Path) -> Path:
    shutil.copytree(sweep["out"], target)
    return target


def rows_of(out: Path, model: str) -> pd.DataFrame:
    frame = pd.read_csv(out / PER_CASE_CSV)
    return frame[frame["model"] == model].set_index("case_id").sort_index()


def test_a_models_own_predictions_score_its_own_metrics(sweep: dict[str, Path], tmp_path: Path) -> None:
    out = copy_sweep(sweep, tmp_path / "sweep")
    labels_only = tmp_path / "labels_only"
    labels_only.mkdir()
    for path in sweep["predictions"].glob("*.nii.gz"):
        if not path.name.endswith("_probabilities.nii.gz"):
            shutil.copyfile(path, labels_only / path.name)
    flags = tiny_flags(out, sweep["cache"], *JOB, "--resume", "--external_predictions",
                       f"own={sweep['predictions']}", f"own_labels={labels_only}")
    assert integrated_experiment.main(flags) == 0
    want = rows_of(out, "unet3d_xs")
    for name in ("own", "own_labels"):
        got = rows_of(out, name)
        assert list(got.index) == list(want.index)
        for metric in METRICS:
            np.testing.assert_allclose(got[metric], want[metric], rtol=1e-9, err_msg=f"{name} {metric}")
    runs = pd.read_csv(out / RUNS_CSV).set_index("model")
    assert runs.loc["own", "source"] == "external" and runs.loc["unet3d_xs", "source"] == "volbench"
    assert runs.loc["own", "status"] == "ok" and pd.isna(runs.loc["own", "fold"])
    np.testing.assert_allclose(runs.loc["own", "dice_mean"], runs.loc["unet3d_xs", "dice_mean"], rtol=1e-9)
    comparison = pd.read_csv(out / COMPARISON_CSV).set_index("model")
    assert comparison.loc["own_labels", "source"] == "external"


def test_predictions_in_another_convention_are_read_with_the_label_map(sweep: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    out = copy_sweep(sweep, tmp_path / "sweep")
    msd = tmp_path / "msd"  # nnU-Net's BraTS labels (1 oedema, 2 core, 3 enhancing), as the nnunet export writes
    msd.mkdir()
    for path in sweep["predictions"].glob("*.nii.gz"):
        if path.name.endswith("_probabilities.nii.gz"):
            continue
        image = nib.load(path)
        internal = to_internal(np.asarray(image.dataobj), "brats2021")
        nib.save(nib.Nifti1Image(from_internal(internal, "msd"), image.affine), msd / path.name)
    flags = tiny_flags(out, sweep["cache"], *JOB, "--resume", "--external_predictions", f"nnunet={msd}",
                       "--external_label_map", "nnunet=msd")
    assert integrated_experiment.main(flags) == 0
    got, want = rows_of(out, "nnunet"), rows_of(out, "unet3d_xs")
    for metric in METRICS:
        np.testing.assert_allclose(got[metric], want[metric], rtol=1e-9, err_msg=metric)


def test_a_missing_case_stops_the_sweep_before_training(sweep: dict[str, Path], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    files = sorted(p for p in sweep["predictions"].glob("*.nii.gz") if "_probabilities" not in p.name)
    for path in files[1:]:
        shutil.copyfile(path, partial / path.name)
    out = tmp_path / "new"
    code = integrated_experiment.main(tiny_flags(out, sweep["cache"], *JOB, "--external_predictions",
                                                 f"tool={partial}"))
    assert code == 2
    assert files[0].name[:-len(".nii.gz")] in caplog.text
    assert not (out / "jobs").exists()


def test_a_prediction_on_another_grid_fails_its_row_and_the_sweep_goes_on(sweep: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    out = copy_sweep(sweep, tmp_path / "sweep")
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for path in sweep["predictions"].glob("*.nii.gz"):
        if "_probabilities" in path.name:
            continue
        image = nib.load(path)
        affine = image.affine.copy()
        affine[0, 3] += 5.0  # 5 mm off the image
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), shifted / path.name)
    flags = tiny_flags(out, sweep["cache"], *JOB, "--resume", "--external_predictions", f"shifted={shifted}",
                       f"fine={sweep['predictions']}")
    assert integrated_experiment.main(flags) == 0
    runs = pd.read_csv(out / RUNS_CSV).set_index("model")
    assert runs.loc["shifted", "status"] == "failed" and "affine" in runs.loc["shifted", "error"]
    assert runs.loc["fine", "status"] == "ok"


@pytest.mark.parametrize("values,maps,message", [
    (["noequals"], None, "NAME=VALUE"),
    (["a=x", "a=y"], None, "more than once"),
    (["a=x"], ["a=nonsense"], "label convention"),
    (["a=x"], ["b=msd"], "not a name"),
])
def test_malformed_external_flags_are_refused_naming_the_flag(values, maps, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_external(values, maps)


def test_label_maps_apply_per_source_or_to_all() -> None:
    a, b = parse_external(["a=x", "b=y"], ["msd", "b=1:1,2:2,4:3"])
    assert a.label_map == "msd" and b.label_map == {1: 1, 2: 2, 4: 3}


def test_aggregate_adds_external_rows_to_a_finished_sweep(sweep: dict[str, Path], tmp_path: Path) -> None:
    out = copy_sweep(sweep, tmp_path / "sweep")
    assert evaluate_experiment.main(["aggregate", "--results_dir", str(out), "--external_predictions",
                                     f"tool={sweep['predictions']}"]) == 0
    got, want = rows_of(out, "tool"), rows_of(out, "unet3d_xs")
    for metric in METRICS:
        np.testing.assert_allclose(got[metric], want[metric], rtol=1e-9, err_msg=metric)
    assert "tool" in set(pd.read_csv(out / COMPARISON_CSV)["model"])
