"""--dataset_version nnunet: an nnU-Net raw folder with regions and a splits_final.json through a tiny sweep; each
inconsistency of the folder is an error naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import integrated_experiment
from dataio.nifti_io import save_volume
from dataio.nnunet_raw import read_nnunet_raw
from described_data import AFFINE, LABELS, case_arrays, write_nnunet, write_splits_final
from engine.options.config import ExperimentConfig
from engine.options.data_options import DataOptions

TRAIN = [f"CASE_{i:03d}" for i in range(6)]
FOLDS = [(TRAIN[2:], TRAIN[:2]), (TRAIN[:2] + TRAIN[4:], TRAIN[2:4])]  # not what a seeded draw would give


def _sweep(data: Path, splits: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    code = integrated_experiment.main([
        "--dataset_version", "nnunet", "--data_path", str(data), "--nnunet_splits", str(splits),
        "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(out), "--models", "unet3d_xs", "--tiny",
        "--epochs", "1", "--seeds", "1", "--samples_per_volume", "1", "--num_workers", "0", "--skip_efficiency",
        "--lesion_labels", "label3"])
    assert code == 0
    return out


def test_nnunet_sweep_honours_splits_final_with_label_and_region_columns(tmp_path: Path) -> None:
    data = write_nnunet(tmp_path / "Dataset001_Toy")
    out = _sweep(data, write_splits_final(tmp_path / "splits_final.json", FOLDS), tmp_path)
    splits = json.loads((out / "splits.json").read_text())
    assert [(f["train"], f["val"]) for f in splits["folds"]] == [(sorted(t), sorted(v)) for t, v in FOLDS]
    assert splits["test"] == ["TEST_000", "TEST_001"]
    val = pd.read_csv(out / "val_per_case_results.csv")
    assert {k: sorted(set(g)) for k, g in val.groupby("fold")["case_id"]} == {0: FOLDS[0][1], 1: FOLDS[1][1]}
    runs = pd.read_csv(out / "integrated_experiment_results.csv")
    assert sorted(runs["fold"]) == [0, 1] and set(runs["status"]) == {"ok"}
    names = ["label1", "label2", "label3", "wt", "tc", "et"]  # region-based labels: label<k>; BraTS regions wt/tc/et
    for name in names:
        for metric in ("dice", "hd95", "precision", "recall"):
            column = f"{metric}_{name}"
            assert column in runs.columns, column
            assert runs[column].map(math.isfinite).all(), column
    cases = pd.read_csv(out / "per_case_results.csv")
    assert sorted(set(cases["case_id"])) == ["TEST_000", "TEST_001"]
    assert {"map_label3", "froc_cpm_label3", "lesions_found_label3"} <= set(runs.columns)  # --lesion_labels
    assert cases["lesions_label3"].ge(0).all() and "lesions_label1" not in cases.columns


def _small(tmp_path: Path, **kwargs: object) -> Path:
    return write_nnunet(tmp_path / "ds", n_train=3, with_test=False, **kwargs)  # type: ignore[arg-type]


def _load(data: Path, tmp_path: Path, splits: Path | None = None) -> object:
    return DataOptions(data_path=str(data), dataset_version="nnunet", cache_dir=str(tmp_path / "cache"),
                       nnunet_splits=None if splits is None else str(splits)).load()


def test_label_value_not_in_dataset_json_names_both_files(tmp_path: Path) -> None:
    data = _small(tmp_path, labels=dict(LABELS))
    image, label = case_arrays(1)
    label[0, 0, 0] = 7
    save_volume(data / "labelsTr" / "CASE_001.nii.gz", label, AFFINE)
    with pytest.raises(ValueError, match=r"CASE_001\.nii\.gz holds label value\(s\) \[7\].*dataset\.json"):
        _load(data, tmp_path)


def test_missing_channel_file_is_named(tmp_path: Path) -> None:
    data = _small(tmp_path)
    (data / "imagesTr" / "CASE_002_0001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case CASE_002: channel 1 \(flair\) file .*CASE_002_0001\.nii\.gz is missing"):
        read_nnunet_raw(data)


def test_num_training_mismatch_names_dataset_json(tmp_path: Path) -> None:
    data = _small(tmp_path)
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps(dict(meta, numTraining=5)))
    with pytest.raises(ValueError, match=r"dataset\.json: numTraining is 5 but imagesTr holds 3 cases"):
        read_nnunet_raw(data)


def test_splits_final_case_not_on_disk(tmp_path: Path) -> None:
    data = write_nnunet(tmp_path / "ds", n_train=3, n_test=1)
    splits = write_splits_final(tmp_path / "splits_final.json", [(["CASE_000", "CASE_009"], ["CASE_001"])])
    with pytest.raises(ValueError, match=r"splits_final\.json: 1 case\(s\) are not training cases on disk.*CASE_009"):
        read_nnunet_raw(data, splits)


def test_splits_final_needs_a_labelled_test_folder(tmp_path: Path) -> None:
    data = _small(tmp_path)
    splits = write_splits_final(tmp_path / "splits_final.json", [(["CASE_000", "CASE_001"], ["CASE_002"])])
    with pytest.raises(ValueError, match=r"test set must come from imagesTs/ with labelsTs/"):
        read_nnunet_raw(data, splits)


def test_without_splits_the_test_folder_is_the_fixed_test_set(tmp_path: Path) -> None:
    data = write_nnunet(tmp_path / "ds", n_train=3, n_test=1, labels=dict(LABELS))
    loaded = _load(data, tmp_path)
    assert loaded.splits is None and loaded.test_ids == ("TEST_000",)  # type: ignore[attr-defined]
    info = loaded.info  # type: ignore[attr-defined]
    assert info.channels == ("t1", "flair") and info.labels == ("oedema", "core", "enhancing") and info.regions == ()
    case = loaded.cases[0]  # type: ignore[attr-defined]
    assert case.image.shape[0] == 2 and case.label.max() == 3 and case.convention == "identity"


def test_nnunet_flags_are_refused_with_other_versions(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        integrated_experiment.main(["--dataset_version", "brats2021", "--data_path", str(tmp_path),
                                    "--nnunet_splits", "x.json"])
    with pytest.raises(ValueError, match="--nnunet_splits a.json and --splits_file b.json"):
        ExperimentConfig(data_path=str(tmp_path), dataset_version="nnunet", nnunet_splits="a.json",
                         splits_file="b.json").validate_data()
