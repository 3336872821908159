"""evaluate_experiment.py with models: a tiny sweep is re-evaluated from its checkpoints (results dir,
single files, image folders); metrics, NIfTI predictions, probabilities, pictures and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import evaluate_experiment
import integrated_experiment
from dataio.conventions import from_internal, to_internal
from engine.options.evaluate_options import CheckpointsOptions
from utils.checkpoint import load_checkpoint, save_checkpoint

MODS = ("t1", "t1ce", "t2", "flair")
DATA = ["--synthetic_cases", "7", "--synthetic_size", "32", "32", "32"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("sweep")
    rc = integrated_experiment.main([
        *DATA, "--cache_dir", str(cache), "--output_dir", str(out), "--epochs", "1", "--samples_per_volume", "1",
        "--num_workers", "0", "--patch_size", "32", "32", "16",  # two overlapping windows per case
        "--models", "unet3d_xs", "--seeds", "1", "--model_kwargs",
        '{"unet3d_xs": {"base": 2}}', "--skip_efficiency"])
    assert rc == 0
    data = cache / "synthetic" / "n7_s32x32x32_seed0" / "BraTS2021_Training_Data"
    return {"cache": cache, "results": out, "data": data}


@pytest.fixture(scope="module")
def evaluated(sweep: dict[str, Path]) -> Path:
    """--results_dir with predictions, npz probabilities, an overlay and Grad-CAM (one CLI call)."""
    rc = evaluate_experiment.main(["--results_dir", str(sweep["results"]), "--save_predictions",
                                   "--save_probabilities", "--probability_format", "npz",
                                   "--visualize_cases", "1", "--gradcam_layer", "dec1"])
    assert rc == 0
    return sweep["results"] / "evaluation_test"


def _checkpoint(sweep: dict[str, Path]) -> Path:
    return Path(pd.read_csv(sweep["results"] / "integrated_experiment_results.csv")["checkpoint"].iloc[0])


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(("dice_", "hd95_", "precision_", "recall_"))]


def test_results_dir_reproduces_sweep_metrics(sweep: dict[str, Path], evaluated: Path) -> None:
    ref = pd.read_csv(sweep["results"] / "per_case_results.csv").set_index("case_id")
    new = pd.read_csv(evaluated / "per_case_results.csv").set_index("case_id")
    assert sorted(new.index) == sorted(json.loads((sweep["results"] / "splits.json").read_text())["test"])
    columns = _metric_columns(ref)
    assert columns and set(columns) <= set(new.columns)
    np.testing.assert_allclose(new.loc[ref.index, columns].to_numpy(float), ref[columns].to_numpy(float),
                               atol=1e-6, rtol=0)
    summary = json.loads((evaluated / "evaluation_summary.json").read_text())
    assert summary["split"] == "test" and summary["runs"][0]["model"] == "unet3d_xs"
    assert summary["runs"][0]["mean"]["dice_wt"] == pytest.approx(new["dice_wt"].mean(), abs=1e-9)
    assert set(summary["runs"][0]["nan_count"]) >= {"dice_et", "hd95_wt"}
    comparison = pd.read_csv(evaluated / "model_comparison.csv")
    assert list(comparison["model"]) == ["unet3d_xs"]
    assert (sweep["results"] / "per_case_results.csv").read_text() != ""  # the sweep's own table is untouched


def test_predictions_are_in_original_space_and_convention(sweep: dict[str, Path], evaluated: Path) -> None:
    from engine.options.data_options import DataOptions

    options = DataOptions(synthetic_cases=7, synthetic_size=(32, 32, 32), cache_dir=str(sweep["cache"]))
    cases = {c.case_id: c for c in options.load_cases()}
    files = sorted((evaluated / "predictions" / "unet3d_xs_seed_1").glob("*.nii.gz"))
    labels = [f for f in files if not f.name.endswith("_probabilities.nii.gz")]
    assert labels
    for pred_file in labels:
        case = pred_file.name[: -len(".nii.gz")]
        image = nib.load(str(sweep["data"] / case / f"{case}_flair.nii.gz"))
        pred = nib.load(str(pred_file))
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-6)
        values = set(np.unique(np.asarray(pred.dataobj)).tolist())
        assert values <= {0, 1, 2, 4} and values - {0}
        probs = np.load(pred_file.with_name(f"{case}_probabilities.npz"))
        assert probs["probabilities"].shape == (4, *image.shape)
        np.testing.assert_allclose(probs["probabilities"].sum(0), 1.0, atol=1e-5)
        assert probs["labels"].tolist() == [0, 1, 2, 4]
        argmax = from_internal(probs["probabilities"].argmax(0).astype(np.uint8), "brats2021")
        np.testing.assert_array_equal(argmax, np.asarray(pred.dataobj))
        np.testing.assert_allclose(probs["probabilities"][(slice(None), *cases[case].crop.slices())],
                                   _sweep_probabilities(sweep, cases[case]), atol=1e-5)


def _sweep_probabilities(sweep: dict[str, Path], case: object) -> np.ndarray:
    """Softmax on the crop, predicted with the sweep's own flags (config.json patch size and overlap)."""
    from dataio.types import MODALITY_ORDER
    from engine.inference import InferenceSettings, predict_logits
    from models import create_model

    config = json.loads((sweep["results"] / "config.json").read_text())
    payload = load_checkpoint(_checkpoint(sweep))
    model = create_model("unet3d_xs", in_channels=4, out_channels=4, **config["model_kwargs"]["unet3d_xs"])
    model.load_state_dict(payload["state_dict"])
    settings = InferenceSettings(modalities=MODALITY_ORDER, roi_size=tuple(config["patch_size"]),
                                 overlap=config["val_overlap"], device=torch.device("cpu"))
    logits = predict_logits(model, torch.from_numpy(np.array(case.image)), settings)
    return torch.softmax(logits, 0).numpy()


def test_saved_predictions_give_the_sweep_dice_in_folder_mode(sweep: dict[str, Path], evaluated: Path,
                                                              tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    pred_dir = evaluated / "predictions" / "unet3d_xs_seed_1"
    for pred in pred_dir.glob("*.nii.gz"):
        case = pred.name[: -len(".nii.gz")]
        if not case.endswith("_probabilities"):
            shutil.copy(sweep["data"] / case / f"{case}_seg.nii.gz", labels)
    shutil.copytree(pred_dir, tmp_path / "preds", ignore=shutil.ignore_patterns("*_probabilities*"))
    out = tmp_path / "folder.csv"
    assert evaluate_experiment.main(["--pred_dir", str(tmp_path / "preds"), "--label_dir", str(labels),
                                     "--task", "brats", "--label_convention", "brats2021",
                                     "--output_csv", str(out)]) == 0
    ref = pd.read_csv(sweep["results"] / "per_case_results.csv").set_index("case_id")
    new = pd.read_csv(out).set_index("case_id")
    dice = [c for c in ref.columns if c.startswith("dice_")]
    np.testing.assert_allclose(new.loc[ref.index, dice].to_numpy(float), ref[dice].to_numpy(float), atol=1e-6)


def test_overlay_gradcam_and_charts_are_written(evaluated: Path) -> None:
    for pattern in ("overlays/overlay_*.png", "gradcam/unet3d_xs_seed_1_*_dec1_class3.png", "dice_boxplots.png",
                    "model_comparison_chart.png"):
        found = list(evaluated.glob(pattern))
        assert found and found[0].stat().st_size > 1000, pattern


def test_val_split_reproduces_checkpoint_val_dice(sweep: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "val"
    assert evaluate_experiment.main(["--results_dir", str(sweep["results"]), "--split", "val", "--models",
                                     "unet3d_*", "--output_dir", str(out)]) == 0
    per_case = pd.read_csv(out / "per_case_results.csv")
    splits = json.loads((sweep["results"] / "splits.json").read_text())
    assert sorted(per_case["case_id"]) == sorted(splits["folds"][0]["val"])
    meta = load_checkpoint(_checkpoint(sweep))["meta"]
    assert per_case["dice_mean"].mean() == pytest.approx(meta["val_dice_mean"], abs=1e-6)


def _image_folder(sweep: dict[str, Path], root: Path, cases: list[str], affine: np.ndarray) -> tuple[Path, Path]:
    """Copy phantom cases as {case}_{mod}.nii.gz / {case}_seg.nii.gz with a non-trivial affine."""
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for case in cases:
        for m in MODS:
            data = np.asarray(nib.load(str(sweep["data"] / case / f"{case}_{m}.nii.gz")).dataobj)
            nib.save(nib.Nifti1Image(data, affine), str(images / f"{case}_{m}.nii.gz"))
        seg = np.asarray(nib.load(str(sweep["data"] / case / f"{case}_seg.nii.gz")).dataobj)
        nib.save(nib.Nifti1Image(seg, affine), str(labels / f"{case}_seg.nii.gz"))
    return images, labels


def test_image_folder_with_and_without_labels(sweep: dict[str, Path], tmp_path: Path) -> None:
    test_ids = json.loads((sweep["results"] / "splits.json").read_text())["test"]
    affine = np.array([[-1.0, 0, 0, 90], [0, -1.0, 0, 120], [0, 0, 1.0, -60], [0, 0, 0, 1]])
    images, labels = _image_folder(sweep, tmp_path, test_ids, affine)
    out = tmp_path / "labelled"
    assert evaluate_experiment.main(["--checkpoint", str(_checkpoint(sweep)), "--image_dir", str(images),
                                     "--label_dir", str(labels), "--output_dir", str(out)]) == 0
    ref = pd.read_csv(sweep["results"] / "per_case_results.csv").set_index("case_id")
    new = pd.read_csv(out / "per_case_results.csv").set_index("case_id")
    columns = _metric_columns(ref)
    np.testing.assert_allclose(new.loc[ref.index, columns].to_numpy(float), ref[columns].to_numpy(float), atol=1e-6)

    out = tmp_path / "unlabelled"
    assert evaluate_experiment.main(["--results_dir", str(sweep["results"]), "--image_dir", str(images),
                                     "--output_dir", str(out), "--save_probabilities"]) == 0
    assert not (out / "per_case_results.csv").exists()
    pred_dir = next((out / "predictions").iterdir())
    pred = nib.load(str(pred_dir / f"{test_ids[0]}.nii.gz"))
    image = nib.load(str(images / f"{test_ids[0]}_t1.nii.gz"))
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, affine, atol=1e-6)
    probs = nib.load(str(pred_dir / f"{test_ids[0]}_probabilities.nii.gz"))
    assert probs.shape == (*image.shape, 4)
    np.testing.assert_allclose(probs.affine, affine, atol=1e-6)
    to_internal(np.asarray(pred.dataobj), "brats2021")  # raises on values outside {0, 1, 2, 4}


def test_checkpoint_mode_with_split_and_tta(sweep: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ck"
    assert evaluate_experiment.main(["--checkpoint", str(_checkpoint(sweep)), str(_checkpoint(sweep)), *DATA,
                                     "--cache_dir",
                                     str(sweep["cache"]), "--split", "test", "--splits_file",
                                     str(sweep["results"] / "splits.json"), "--tta", "--output_dir", str(out)]) == 0
    per_case = pd.read_csv(out / "per_case_results.csv")
    assert list(per_case["case_id"]) == 2 * json.loads((sweep["results"] / "splits.json").read_text())["test"]
    assert per_case["dice_wt"].between(0, 1).all()
    assert len(pd.read_csv(out / "integrated_experiment_results.csv")) == 2
    assert json.loads((out / "evaluation_summary.json").read_text())["tta"] is True


def _fails(argv: list[str], caplog: pytest.LogCaptureFixture, *needles: str) -> None:
    caplog.clear()
    assert evaluate_experiment.main(argv) == 2
    for needle in needles:
        assert needle in caplog.text, (needle, caplog.text)


def test_bad_inputs_exit_2_naming_the_file(sweep: dict[str, Path], tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nope.pth"
    _fails(["--checkpoint", str(missing)], caplog, str(missing))
    unknown = tmp_path / "unknown.pth"
    payload = load_checkpoint(_checkpoint(sweep))
    save_checkpoint(unknown, payload["state_dict"], model_name="no_such_net", model_kwargs={}, meta=payload["meta"])
    _fails(["--checkpoint", str(unknown)], caplog, str(unknown), "no_such_net")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(["--results_dir", str(empty)], caplog, str(empty), "integrated_experiment_results.csv")
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("config.json", "splits.json"):
        shutil.copy(sweep["results"] / name, moved)
    runs = pd.read_csv(sweep["results"] / "integrated_experiment_results.csv")
    runs["checkpoint"] = str(tmp_path / "gone" / "unet3d_xs_seed_1_best.pth")
    runs.to_csv(moved / "integrated_experiment_results.csv", index=False)
    _fails(["--results_dir", str(moved)], caplog, "gone/unet3d_xs_seed_1_best.pth")
    _fails(["--results_dir", str(sweep["results"]), "--models", "swin*"], caplog, "swin*", "unet3d_xs")
    _fails(["--results_dir", str(sweep["results"]), "--visualize_cases", "no_such_case"], caplog, "no_such_case")


def test_image_folder_missing_label_is_an_error(sweep: dict[str, Path], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    images, labels = _image_folder(sweep, tmp_path, ["BraTS2021_00000", "BraTS2021_00001"], np.eye(4))
    (labels / "BraTS2021_00001_seg.nii.gz").unlink()
    _fails(["--checkpoint", str(_checkpoint(sweep)), "--image_dir", str(images), "--label_dir", str(labels)],
           caplog, "missing label for case BraTS2021_00001", str(labels))
    (images / "BraTS2021_00000_t2.nii.gz").unlink()
    _fails(["--checkpoint", str(_checkpoint(sweep)), "--image_dir", str(images)], caplog,
           "BraTS2021_00000", "t2")


def test_model_loading_rebuilds_from_metadata(sweep: dict[str, Path], tmp_path: Path) -> None:
    from engine.evaluate.checkpoints import load_model

    model, payload = load_model(_checkpoint(sweep), torch.device("cpu"))
    assert not model.training and payload["model_kwargs"]["base"] == 2
    state = payload["state_dict"]
    broken = tmp_path / "broken.pth"
    save_checkpoint(broken, {k: v for k, v in list(state.items())[:-2]}, model_name=payload["model_name"],
                    model_kwargs=payload["model_kwargs"], meta=payload["meta"])
    with pytest.raises(ValueError, match="broken.pth"):
        load_model(broken, torch.device("cpu"))


def test_flag_combinations_that_would_be_ignored_are_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Checked before anything is loaded (no sweep needed): each would otherwise silently do something else."""
    results = tmp_path / "sweep"
    results.mkdir()
    ck = str(tmp_path / "a.pth")
    # the evaluation's tables have the sweep's names: writing into the sweep would overwrite it
    _fails(["--results_dir", str(results), "--output_dir", str(results)], caplog, "--output_dir", "overwrite")
    _fails(["--results_dir", str(results), "--output_dir", str(results / ".." / "sweep")], caplog, "overwrite")
    # --splits_file without --split (every case would be used), or with --results_dir (its own splits.json)
    _fails(["--checkpoint", ck, "--splits_file", str(tmp_path / "splits.json")], caplog, "--splits_file")
    _fails(["--results_dir", str(results), "--split", "val", "--splits_file", str(tmp_path / "s.json")], caplog,
           "--splits_file")
    _fails(["--checkpoint", ck, "--output_csv", str(tmp_path / "o.csv")], caplog, "--output_csv", "--pred_dir")
    _fails(["--checkpoint", ck, "--output_json", str(tmp_path / "o.json")], caplog, "--output_json", "--boxes_json")
    _fails(["--checkpoint", ck, "--gradcam_class", "0"], caplog, "--gradcam_layer")
    folder = ["--pred_dir", str(tmp_path), "--label_dir", str(tmp_path), "--output_csv", str(tmp_path / "o.csv")]
    for extra in (["--tta"], ["--save_probabilities"], ["--output_dir", str(tmp_path)], ["--data_path", "x"]):
        _fails([*folder, *extra], caplog, extra[0], "--pred_dir")


def test_default_output_dir_of_other_data_is_not_the_test_split_folder(tmp_path: Path) -> None:
    def output(*argv: str) -> Path:
        args = evaluate_experiment.build_parser().parse_args(["checkpoints", "--results_dir", str(tmp_path), *argv])
        return CheckpointsOptions.from_args(args).output_path()

    own, other = output(), output("--dataset_version", "synthetic", "--synthetic_cases", "3")
    assert own == tmp_path / "evaluation_test" and other != own


def test_checkpoint_without_data_flags_uses_the_data_it_was_trained_on(sweep: dict[str, Path], tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    from utils.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(_checkpoint(sweep))
    assert payload["meta"]["data"]["synthetic_size"] == [32, 32, 32]
    out = tmp_path / "recorded"
    assert evaluate_experiment.main(["--checkpoint", str(_checkpoint(sweep)), "--output_dir", str(out)]) == 0
    per_case = pd.read_csv(out / "per_case_results.csv")
    assert len(per_case) == 7  # the 7 phantoms of the sweep, not the 12 default ones
    old_style = dict(payload["meta"], dataset_version="brats2021")
    old_style.pop("data")
    real = save_checkpoint(tmp_path / "real.pth", payload["state_dict"], model_name=payload["model_name"],
                           model_kwargs=payload["model_kwargs"], meta=old_style)
    _fails(["--checkpoint", str(real), "--output_dir", str(tmp_path / "out")], caplog, str(real),
           "trained on brats2021", "--data_path")
    assert not (tmp_path / "out").exists()


def test_overlays_without_save_predictions_keep_no_predictions(sweep: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import visualization.overlays as overlays

    drawn: dict[str, dict[str, str]] = {}
    real = overlays.draw_case_overlay

    def spy(case_id: str, images: dict, predictions: dict, out_path: Path, **kwargs: object) -> Path:
        assert all(Path(p).is_file() for p in predictions.values())  # predicted for the overlay ...
        drawn[case_id] = dict(kwargs["scores"])
        return real(case_id, images, predictions, out_path, **kwargs)

    monkeypatch.setattr(overlays, "draw_case_overlay", spy)
    out = tmp_path / "pictures"
    caplog.set_level("INFO")
    assert evaluate_experiment.main(["--results_dir", str(sweep["results"]), "--visualize_cases", "99",
                                     "--output_dir", str(out)]) == 0
    test_ids = json.loads((sweep["results"] / "splits.json").read_text())["test"]
    assert f"--visualize_cases 99: only {len(test_ids)} case(s) evaluated" in caplog.text
    assert "predictions: not kept (add --save_predictions)" in caplog.text
    assert sorted(drawn) == sorted(test_ids) and len(list((out / "overlays").glob("overlay_*.png"))) == len(test_ids)
    assert not (out / "predictions").exists() and [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    per_case = pd.read_csv(out / "per_case_results.csv").set_index("case_id")
    for case_id, scores in drawn.items():  # ... and each run's panel carries that run's per-case Dice
        expected = f"WT {per_case.loc[case_id, 'dice_wt']:.3f}"
        assert expected in scores["unet3d_xs_seed_1"], (scores, expected)


def test_dice_text_of_a_per_case_row() -> None:
    from visualization.overlays import dice_text

    row = dict(model="m", case_id="c", dice_wt=0.9, dice_tc=float("nan"), dice_et=0.25, dice_ncr=0.1,
               dice_mean=0.5, hd95_wt=3.0)
    assert dice_text(row) == "Dice WT 0.900  TC n/a  ET 0.250"
    assert dice_text(None) == "no label"
