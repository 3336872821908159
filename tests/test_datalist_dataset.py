"""--dataset_version datalist: a MONAI datalist with fold keys through a tiny sweep; labels from the file or from
the label files; bad datalists are errors naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import integrated_experiment
from dataio.datalist import read_datalist
from described_data import LABELS, REGION_LABELS, write_datalist
from engine.options.data_options import DataOptions


def test_datalist_sweep_honours_fold_keys_with_label_and_region_columns(tmp_path: Path) -> None:
    labels = {"background": 0, "oedema": 1, "core": 2, "enhancing": 3, "Whole Tumour": [1, 2, 3]}
    datalist = write_datalist(tmp_path / "data", labels=labels)
    out = tmp_path / "out"
    code = integrated_experiment.main([
        "--dataset_version", "datalist", "--data_path", str(tmp_path / "data"), "--datalist", str(datalist),
        "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(out), "--models", "unet3d_xs", "--tiny",
        "--epochs", "1", "--seeds", "1", "--samples_per_volume", "1", "--num_workers", "0", "--skip_efficiency"])
    assert code == 0
    entries = json.loads(datalist.read_text())["training"]
    expected = {k: sorted(Path(e["image"]).name[:-7] for e in entries if e["fold"] == k) for k in (0, 1)}
    val = pd.read_csv(out / "val_per_case_results.csv")
    assert {k: sorted(set(g)) for k, g in val.groupby("fold")["case_id"]} == expected
    assert json.loads((out / "splits.json").read_text())["test"] == ["dlt_000", "dlt_001"]
    runs = pd.read_csv(out / "integrated_experiment_results.csv")
    assert sorted(runs["fold"]) == [0, 1]
    for name in ("oedema", "core", "enhancing", "wt"):  # "Whole Tumour" is BraTS' whole tumour: wt
        for metric in ("dice", "hd95", "precision", "recall"):
            assert runs[f"{metric}_{name}"].map(math.isfinite).all(), f"{metric}_{name}"
    assert (runs["dice_mean"] == runs["dice_wt"]).all()  # the mean is over the named regions


def test_labels_come_from_the_label_files_when_the_datalist_names_none(tmp_path: Path) -> None:
    write_datalist(tmp_path / "data", n_train=3, n_test=0, folds=None)
    loaded = DataOptions(data_path=str(tmp_path / "data"), dataset_version="datalist",
                         cache_dir=str(tmp_path / "cache")).load()
    assert loaded.info.labels == ("label1", "label2", "label3") and loaded.info.regions == ()
    assert loaded.info.channels == ("ch0", "ch1") and loaded.splits is None and loaded.test_ids == ()


def test_region_labels_in_a_datalist_are_read_as_in_dataset_json(tmp_path: Path) -> None:
    write_datalist(tmp_path / "data", n_train=2, n_test=1, labels=REGION_LABELS)
    described = read_datalist(tmp_path / "data")
    assert described.scheme is not None
    assert described.scheme.regions == (("wt", (1, 2, 3)), ("tc", (2, 3)), ("et", (3,)))
    assert described.folds == ((("dl_001",), ("dl_000",)), (("dl_000",), ("dl_001",)))


def test_entries_without_fold_train_in_every_fold_and_bad_folds_are_refused(tmp_path: Path) -> None:
    datalist = write_datalist(tmp_path / "data", n_train=4, n_test=1, labels=LABELS)
    meta = json.loads(datalist.read_text())
    del meta["training"][3]["fold"]  # MONAI's datafold_read: no fold key -> always trains
    datalist.write_text(json.dumps(meta))
    assert read_datalist(tmp_path / "data").folds == ((("dl_001", "dl_003"), ("dl_000", "dl_002")),
                                                     (("dl_000", "dl_002", "dl_003"), ("dl_001",)))
    meta["training"][3]["fold"] = "one"
    datalist.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"datalist\.json: 'fold' values must be integers >= 0, got 'one'"):
        read_datalist(tmp_path / "data")


def test_folds_need_labelled_testing_entries(tmp_path: Path) -> None:
    write_datalist(tmp_path / "data", n_train=3, n_test=0)
    with pytest.raises(ValueError, match=r"test set must come from 'testing' entries with a 'label'"):
        read_datalist(tmp_path / "data")


def test_missing_image_file_names_the_datalist_and_the_file(tmp_path: Path) -> None:
    write_datalist(tmp_path / "data", n_train=3, n_test=1)
    (tmp_path / "data" / "images" / "dl_002.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"datalist\.json: case dl_002: image file .*dl_002\.nii\.gz is missing"):
        read_datalist(tmp_path / "data")
