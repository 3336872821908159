"""evaluate_experiment.py as subcommands: each flag-only form of before and its subcommand, run on the same tiny
inputs into the same folder one after the other, write the same files, with CSV and JSON equal except timing
fields and HTML equal byte for byte; every subcommand's help names its flags, and refuses the flags of the others."""

from __future__ import annotations

import fnmatch
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

import evaluate_experiment
import integrated_experiment
from data_fixtures import file_label, head_arrays, write_nifti
from sweep_helpers import make_sweep, tiny_flags
from utils.schema import COMPARISON_CSV, PER_CASE_CSV, RUNS_CSV, STATISTICAL_TESTS_CSV

TIMING = re.compile(r"(^|_)(time|latency|timestamp|date|duration|elapsed)(_|$)")  # e.g. eval_time_s, latency_ms
TEXT = (".html", ".txt", ".md")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Made once: a tiny trained sweep (one unet3d_xs run on 7 phantoms of 32^3) and its checkpoint."""
    cache, sweep = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("sweep")
    assert integrated_experiment.main(tiny_flags(sweep, cache, "--models", "unet3d_xs", "--seeds", "1", "--epochs", "1",
                                                 "--patch_size", "32", "32", "16")) == 0
    return dict(cache=cache, sweep=sweep, checkpoint=Path(pd.read_csv(sweep / RUNS_CSV)["checkpoint"].iloc[0]))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Made once, no training: two hand-made sweep folders, prediction folders and a box file."""
    root = tmp_path_factory.mktemp("files")
    for i in range(2):  # BraTS labels (file convention brats2021); each prediction is its label shifted by a voxel
        _, label = head_arrays((16, 16, 12), seed=i)
        write_nifti(root / "brats" / "labels" / f"case{i}_seg.nii.gz", file_label(label, "brats2021"))
        shifted = file_label(np.roll(label, i + 1, axis=0), "brats2021")
        write_nifti(root / "brats" / "preds" / f"case{i}.nii.gz", shifted)
    _binary_folders(root / "binary")
    boxes = {"a": {"pred_boxes": [[10, 20, 30, 12, 22, 32], [0, 0, 0, 2, 2, 2]], "pred_scores": [0.9, 0.4],
                   "gt_boxes": [[10, 20, 30, 13, 21, 31], [40, 40, 40, 44, 44, 44]]},
             "b": {"pred_boxes": [[5, 5, 5, 8, 8, 8]], "pred_scores": [0.2], "gt_boxes": [[5, 5, 5, 8, 8, 7]]}}
    (root / "boxes.json").write_text(json.dumps(boxes))
    return dict(one=make_sweep(root / "one", {"a": 0.5, "b": 0.6}), two=make_sweep(root / "two", {"c": 0.8}),
                brats=root / "brats", binary=root / "binary", boxes=root / "boxes.json")


def _binary_folders(root: Path) -> None:
    """One case of two lesions: the prediction finds one and adds a false positive, with probability maps."""
    label = np.zeros((16, 16, 8), dtype=np.uint8)
    label[2:6, 2:6, 2:5], label[10:13, 10:13, 3:6] = 1, 1
    pred = np.zeros_like(label)
    pred[2:5, 2:5, 2:4], pred[12:14, 0:2, 0:2] = 1, 1
    probability = np.where(pred > 0, 0.6, 0.0).astype(np.float32)
    probability[12:14, 0:2, 0:2] = 0.9
    for folder, array in (("labels", label), ("preds", pred), ("probs", probability)):
        write_nifti(root / folder / "c1.nii.gz", array)


@dataclass
class Form:
    """A flag-only form (``old``) and its subcommand (``new``), both writing ``out`` (restored from ``pristine``
    before each run, else removed); ``expect``: patterns of files the form must write."""

    old: list[Any]
    new: list[Any]
    out: Path
    expect: tuple[str, ...]
    pristine: Path | None = None


def _checkpoints_of_a_sweep(x: dict[str, Path], out: Path) -> Form:
    flags = ["--results_dir", x["sweep"], "--output_dir", out, "--split", "val", "--models", "unet3d_*",
             "--save_predictions", "--visualize_cases", "1", "--gradcam_layer", "dec1", "--lesionwise_min_size", "10"]
    return Form(flags, ["checkpoints", *flags], out, (PER_CASE_CSV, RUNS_CSV, COMPARISON_CSV, "evaluation_summary.json",
                                                      "report.html", "overlays/overlay_*.png",
                                                      "gradcam/unet3d_xs_seed_1_*_dec1_class3.png",
                                                      "predictions/unet3d_xs_seed_1/*.nii.gz"))


def _checkpoint_files(x: dict[str, Path], out: Path) -> Form:
    flags = ["--checkpoint", x["checkpoint"], "--split", "test", "--splits_file", x["sweep"] / "splits.json", "--tta",
             "--no_amp", "--synthetic_cases", "7", "--synthetic_size", "32", "32", "32", "--cache_dir", x["cache"],
             "--save_probabilities", "--probability_format", "npz", "--min_lesion_size", "2", "--output_dir", out]
    return Form(flags, ["checkpoints", *flags], out, (PER_CASE_CSV, RUNS_CSV, "evaluation_summary.json",
                                                      "predictions/*/*_probabilities.npz"))


def _brats_folder(x: dict[str, Path], out: Path) -> Form:
    flags = ["--pred_dir", x["brats"] / "preds", "--label_dir", x["brats"] / "labels", "--output_csv", out / "f.csv",
             "--spacing", "1", "1", "2", "--label_convention", "brats2021"]
    return Form(flags, ["folders", *flags], out, ("f.csv", "f_summary.json"))


def _binary_folder(x: dict[str, Path], out: Path) -> Form:
    flags = ["--pred_dir", x["binary"] / "preds", "--label_dir", x["binary"] / "labels", "--output_csv", out / "b.csv",
             "--task", "binary", "--label_convention", "internal", "--prob_dir", x["binary"] / "probs",
             "--lesion_hit", "centre", "--lesion_score_threshold", "0.7"]
    return Form(flags, ["folders", *flags], out, ("b.csv", "b_summary.json"))


def _boxes(x: dict[str, Path], out: Path) -> Form:
    flags = ["--boxes_json", x["boxes"], "--output_json", out / "m.json", "--lesion_hit", "centre",
             "--lesion_score_threshold", "0.3"]
    return Form(flags, ["boxes", *flags], out, ("m.json",))


def _aggregate(x: dict[str, Path], out: Path) -> Form:
    return Form(["--results_dir", out, "--aggregate"], ["aggregate", "--results_dir", out], out,
                (RUNS_CSV, PER_CASE_CSV, COMPARISON_CSV, "report.html", "interactive_3d_analysis.html"),
                pristine=x["one"])


def _compare(x: dict[str, Path], out: Path) -> Form:
    flags = ["--output_dir", out, "--baseline", "b", "--stats_seed", "3", "--bootstrap_resamples", "150"]
    return Form(["--compare", x["one"], x["two"], *flags], ["compare", x["one"], x["two"], *flags], out,
                (RUNS_CSV, COMPARISON_CSV, STATISTICAL_TESTS_CSV, "config.json", "report.html",
                 "interactive_3d_analysis.html"))


FORMS: dict[str, Callable[[dict[str, Path], Path], Form]] = {
    "checkpoints_of_a_sweep": _checkpoints_of_a_sweep, "checkpoint_files": _checkpoint_files,
    "brats_folder": _brats_folder, "binary_folder": _binary_folder, "boxes": _boxes, "aggregate": _aggregate,
    "compare": _compare}
TRAINED = ("checkpoints_of_a_sweep", "checkpoint_files")  # the forms that need the trained sweep


def _without_timing(value: Any) -> Any:
    """JSON content without timing keys, NaN as a string (so that equal contents compare equal)."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def snapshot(folder: Path) -> dict[str, Any]:
    """Every file under ``folder`` by relative path: CSV as a frame and JSON as data (timing fields dropped), HTML
    and text as text, other files (PNG, NIfTI, npz) by name only."""
    found: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name, value = path.relative_to(folder).as_posix(), None
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
            value = frame[[c for c in frame.columns if not TIMING.search(c)]]
        elif path.suffix == ".json":
            value = _without_timing(json.loads(path.read_text()))
        elif path.suffix in TEXT:
            value = path.read_text()
        found[name] = value
    return found


def _run(form: Form, argv: list[Any]) -> dict[str, Any]:
    shutil.rmtree(form.out, ignore_errors=True)
    if form.pristine is not None:
        shutil.copytree(form.pristine, form.out)
    assert evaluate_experiment.main([str(a) for a in argv]) == 0, argv
    return snapshot(form.out)


@pytest.mark.parametrize("name", FORMS)
def test_flag_only_form_writes_what_its_subcommand_writes(files: dict[str, Path], tmp_path: Path, name: str,
                                                           request: pytest.FixtureRequest) -> None:
    inputs = dict(files, **(request.getfixturevalue("trained") if name in TRAINED else {}))
    form = FORMS[name](inputs, tmp_path / "out")
    old, new = _run(form, form.old), _run(form, form.new)
    for pattern in form.expect:
        assert fnmatch.filter(old, pattern), (pattern, sorted(old))
    assert sorted(new) == sorted(old)
    for file, value in old.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(new[file], value, obj=file)
        else:
            assert new[file] == value, file


def test_timing_fields_are_the_only_ones_left_out() -> None:
    kept = ("dice_mean", "hd95_et", "best_epoch", "n_cases", "lesions_found", "froc_cpm", "checkpoint", "stats_seed")
    assert [k for k in ("eval_time_s", "train_time_s", "epoch_time_s", "latency_ms", "latency_ms_std", "date_utc")
            if not TIMING.search(k)] == []
    assert [k for k in kept if TIMING.search(k)] == []


HELP_FLAGS = {
    "checkpoints": ("--results_dir", "--checkpoint", "--models", "--list_models", "--split", "--splits_file",
                    "--image_dir", "--label_dir", "--label_convention", "--data_path", "--dataset_version", "--tta",
                    "--device", "--no_amp", "--min_lesion_size", "--lesionwise_dilation", "--output_dir",
                    "--save_predictions", "--save_probabilities", "--probability_format", "--visualize_cases",
                    "--gradcam_layer", "--gradcam_model", "--gradcam_class"),
    "folders": ("--pred_dir", "--label_dir", "--output_csv", "--task", "--label_convention", "--spacing", "--prob_dir",
                "--min_lesion_size", "--lesion_hit", "--lesion_score_threshold"),
    "boxes": ("--boxes_json", "--output_json", "--lesion_hit", "--lesion_score_threshold"),
    "aggregate": ("--results_dir", "--external_predictions", "--external_label_map", "--ensemble", "--postprocess"),
    "compare": ("DIR", "--output_dir", "--baseline", "--stats_seed", "--bootstrap_resamples"),
    "export": ("--results_dir", "--format", "--output_dir", "--data_path", "--cache_dir"),
}
NOT_THEIRS = {  # flags of the other subcommands (and of the flag-only forms) that each one refuses
    "checkpoints": ("--pred_dir", "--boxes_json", "--compare", "--aggregate", "--task", "--prob_dir", "--output_csv",
                    "--output_json", "--baseline"),
    "folders": ("--results_dir", "--tta", "--output_dir", "--data_path", "--lesionwise_dilation", "--output_json"),
    "boxes": ("--label_dir", "--output_csv", "--min_lesion_size", "--spacing", "--output_dir"),
    "aggregate": ("--output_dir", "--models", "--baseline", "--aggregate"),
    "compare": ("--compare", "--models", "--results_dir", "--tta"),
    "export": ("--models", "--tta", "--baseline", "--pred_dir", "--external_predictions"),
}


@pytest.mark.parametrize("name", evaluate_experiment.COMMANDS)
def test_each_subcommand_has_its_own_help(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate_experiment.main([name, "-h"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: evaluate_experiment.py {name}")
    assert [flag for flag in HELP_FLAGS[name] if flag not in text] == []
    parser = evaluate_experiment.subcommand_parsers(evaluate_experiment.build_parser())[name]
    own = {option for action in parser._actions for option in action.option_strings}
    assert own.isdisjoint(NOT_THEIRS[name]), own & set(NOT_THEIRS[name])


def test_top_level_help_lists_the_subcommands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate_experiment.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(re.search(rf"^\s+{name}\b", text, re.M) for name in evaluate_experiment.COMMANDS), text
    assert "flag-only forms of before still work" in text


@pytest.mark.parametrize("argv, needle", [
    (["folders", "--pred_dir", "p", "--label_dir", "l", "--output_csv", "o.csv", "--tta"], "--tta"),
    (["compare", "a", "--output_dir", "o", "--models", "x"], "--models"),
    (["aggregate", "--results_dir", "d", "--baseline", "b"], "--baseline"),
])
def test_a_subcommand_refuses_the_flags_of_the_others(argv: list[str], needle: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate_experiment.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and needle in err and err.count("\n") == 1
