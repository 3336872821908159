"""``evaluate_experiment.py export``: a sweep's cases and folds as an nnU-Net raw dataset or a MONAI datalist.

The sweeps here are folders holding only what export reads (config.json with the data flags, splits.json): no
training is needed to export a split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import evaluate_experiment
from dataio.dataset_export import export_dataset
from dataio.splits import iter_folds, make_splits, save_splits
from engine.options.data_options import DataOptions
from utils.schema import CONFIG_JSON, SPLITS_JSON


def sweep_folder(root: Path, data: DataOptions, *, use_5fold: bool) -> tuple[Path, dict]:
    """A sweep folder with the recorded data flags and a split of the dataset's cases."""
    cases = data.load_cases(progress=False)
    record = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(data).items()}
    root.mkdir(parents=True)
    (root / CONFIG_JSON).write_text(json.dumps(dict(record, use_5fold=use_5fold)))
    ids = sorted(c.case_id for c in cases)
    splits = make_splits(ids, ids, use_5fold=use_5fold, n_folds=3)
    save_splits(root / SPLITS_JSON, splits)
    return root, splits


def export(results: Path, out: Path, fmt: str) -> int:
    return evaluate_experiment.main(["export", "--results_dir", str(results), "--format", fmt,
                                     "--output_dir", str(out)])


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, DataOptions]:
    cache = tmp_path_factory.mktemp("cache")
    data = DataOptions(synthetic_cases=7, synthetic_size=(16, 16, 16), cache_dir=str(cache))
    results, splits = sweep_folder(tmp_path_factory.mktemp("sweep") / "brats", data, use_5fold=True)
    return results, splits, data


def test_nnunet_export_has_the_sweeps_folds_test_cases_and_nnunets_brats_labels(brats, tmp_path: Path) -> None:
    results, splits, data = brats
    out = tmp_path / "Dataset501_Phantoms"
    assert export(results, out, "nnunet") == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert dataset["labels"] == {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
                                 "enhancing_tumor": [3]}
    assert dataset["regions_class_order"] == [1, 2, 3] and dataset["file_ending"] == ".nii.gz"
    folds = json.loads((out / "splits_final.json").read_text())
    assert [(sorted(f["train"]), sorted(f["val"])) for f in folds] == \
        [(sorted(tr), sorted(val)) for _, tr, val in iter_folds(splits)]
    train = sorted({c for f in folds for c in f["val"]})
    assert dataset["numTraining"] == len(train)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in train]
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == [f"{c}.nii.gz" for c in sorted(splits["test"])]
    files = {c.case_id: c for c in data.case_files(require_labels=True)}
    case = files[train[0]]
    for k, modality in enumerate(("t1", "t1ce", "t2", "flair")):  # the original files, byte for byte
        assert (out / "imagesTr" / f"{case.case_id}_{k:04d}.nii.gz").read_bytes() == case.images[modality].read_bytes()
    raw = np.asarray(nib.load(case.label).dataobj)
    written = nib.load(out / "labelsTr" / f"{case.case_id}.nii.gz")
    by_hand = np.select([raw == 2, raw == 1, raw == 4], [1, 2, 3], 0)  # ED -> 1, NCR/NET -> 2, ET -> 3
    assert set(np.unique(raw).tolist()) >= {1, 2, 4}
    np.testing.assert_array_equal(np.asarray(written.dataobj), by_hand)
    np.testing.assert_allclose(written.affine, nib.load(case.label).affine)
    assert not list(out.parent.glob(".*.tmp")), "the staging folder was left behind"


def test_datalist_export_marks_each_validation_case_with_its_fold(tmp_path: Path) -> None:
    data = DataOptions(dataset_version="synthetic_ich", synthetic_cases=8, synthetic_size=(16, 16, 16),
                       cache_dir=str(tmp_path / "cache"))
    results, splits = sweep_folder(tmp_path / "ct", data, use_5fold=False)
    out = tmp_path / "datalist_out"
    assert export(results, out, "datalist") == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["channel_names"] == {"0": "CT"} and datalist["labels"] == {"background": 0, "ich": 1}
    (_, train, val), = iter_folds(splits)  # holdout: validation fold 0, training cases without a fold
    assert {e["label"].split("/")[1][:-7]: e.get("fold") for e in datalist["training"]} == \
        {**{c: None for c in train}, **{c: 0 for c in val}}
    assert sorted(e["label"].split("/")[1][:-7] for e in datalist["testing"]) == sorted(splits["test"])
    for entry in datalist["training"] + datalist["testing"]:
        image, label = nib.load(out / entry["image"]), nib.load(out / entry["label"])
        assert image.shape == label.shape and set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1}
        assert float(np.asarray(image.dataobj).min()) < -500  # HU, not the windowed cache


def test_export_refuses_a_non_empty_output_folder_and_leaves_it_alone(brats, tmp_path: Path) -> None:
    results, _, _ = brats
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert export(results, out, "nnunet") == 2
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_a_case_that_fails_to_read_leaves_no_half_written_dataset(brats, tmp_path: Path) -> None:
    results, splits, data = brats
    files = {c.case_id: c for c in data.case_files(require_labels=True)}
    broken = dict(files)
    last = sorted(splits["test"])[-1]  # written last: every other case is already staged
    broken[last] = dataclasses.replace(files[last], label=tmp_path / "missing.nii.gz")
    out = tmp_path / "Dataset502"
    with pytest.raises(ValueError, match="missing.nii.gz"):
        export_dataset(broken, data.dataset_info(), splits, out, fmt="nnunet")
    assert not out.exists() and not list(tmp_path.glob(".Dataset502.*"))


def test_an_nnunet_export_reads_back_with_the_same_cases_folds_and_labels(brats, tmp_path: Path) -> None:
    results, splits, data = brats
    out = tmp_path / "Dataset503_RoundTrip"
    assert export(results, out, "nnunet") == 0
    back = DataOptions(dataset_version="nnunet", data_path=str(out), nnunet_splits=str(out / "splits_final.json"),
                       cache_dir=str(tmp_path / "cache")).described()
    assert back.channels == ("t1", "t1ce", "t2", "flair")
    assert [(sorted(tr), sorted(val)) for tr, val in back.folds] == \
        [(sorted(tr), sorted(val)) for _, tr, val in iter_folds(splits)]
    assert sorted(back.test_ids) == sorted(splits["test"])
    regions = dict(back.info().regions)
    assert regions == {"wt": (1, 2, 3), "tc": (2, 3), "et": (3,)}  # BraTS' regions give the WT/TC/ET columns
    loaded = {c.case_id: c for c in DataOptions(dataset_version="nnunet", data_path=str(out),
                                                 cache_dir=str(tmp_path / "cache")).load().cases}
    original = {c.case_id: c for c in data.load_cases(progress=False)}
    internal = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}  # volbench's labels: 1 NCR/NET, 2 ED, 3 ET
    for case_id in sorted(splits["test"]):  # each region holds as many voxels after the round trip (crops differ)
        for name, members in internal.items():
            ours = int(np.isin(np.asarray(original[case_id].label), members).sum())
            theirs = int(np.isin(np.asarray(loaded[case_id].label), regions[name]).sum())
            assert ours == theirs and (ours > 0 or name != "wt"), (case_id, name, ours, theirs)


def test_a_datalist_export_reads_back_with_the_same_folds(tmp_path: Path) -> None:
    data = DataOptions(dataset_version="synthetic_ich", synthetic_cases=8, synthetic_size=(16, 16, 16),
                       cache_dir=str(tmp_path / "cache"))
    results, splits = sweep_folder(tmp_path / "ct", data, use_5fold=True)
    out = tmp_path / "datalist_out"
    assert export(results, out, "datalist") == 0
    back = DataOptions(dataset_version="datalist", data_path=str(out), cache_dir=str(tmp_path / "cache")).described()
    assert [(sorted(tr), sorted(val)) for tr, val in back.folds] == \
        [(sorted(tr), sorted(val)) for _, tr, val in iter_folds(splits)]
    assert sorted(back.test_ids) == sorted(splits["test"])
    assert back.channels == ("ct",)
