"""Label conventions, NIfTI io, dataset adapters and the input checks of preprocessing."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (BRATS21_FILES, head_arrays, make_brats2018, make_brats2021, make_brats2023, make_msd,
                           write_nifti, write_split_case)

from dataio.adapters import DATASET_VERSIONS, discover_cases
from dataio.conventions import CONVENTIONS, DATASET_CONVENTION, from_internal, to_internal
from dataio.nifti_io import load_label, load_volume, save_volume
from dataio.preprocess import preprocess_case
from dataio.types import MODALITY_ORDER

# ---------------------------------------------------------------- conventions


@pytest.mark.parametrize("convention, file_values, internal_values", [
    ("brats2021", [0, 1, 2, 4], [0, 1, 2, 3]),
    ("brats2023", [0, 1, 2, 3], [0, 1, 2, 3]),
    ("msd", [0, 1, 2, 3], [0, 2, 1, 3]),
    ("internal", [0, 1, 2, 3], [0, 1, 2, 3]),
])
def test_to_internal_maps_each_convention(convention, file_values, internal_values):
    x = np.array([[file_values, file_values[::-1]]], dtype=np.int16)
    expected = np.array([[internal_values, internal_values[::-1]]], dtype=np.uint8)
    out = to_internal(x, convention)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(from_internal(out, convention), x)
    # float storage of the same integers is accepted too
    np.testing.assert_array_equal(to_internal(x.astype(np.float32), convention), expected)


def test_conventions_cover_every_dataset():
    assert set(DATASET_CONVENTION) == set(DATASET_VERSIONS)
    assert set(DATASET_CONVENTION.values()) <= set(CONVENTIONS)


@pytest.mark.parametrize("convention, bad", [("brats2021", 3), ("brats2023", 4), ("msd", 4), ("internal", 5)])
def test_to_internal_rejects_values_outside_convention(convention, bad):
    x = np.array([0, 1, bad], dtype=np.uint8)
    with pytest.raises(ValueError, match=rf"case_7_seg\.nii\.gz.*\[{bad}\]"):
        to_internal(x, convention, source="case_7_seg.nii.gz")


def test_to_internal_rejects_non_integer_and_unknown_convention():
    with pytest.raises(ValueError, match=r"seg\.nii\.gz.*integers.*1\.5"):
        to_internal(np.array([0.0, 1.5]), "brats2021", source="seg.nii.gz")
    with pytest.raises(ValueError, match="brats2019.*brats2021"):
        to_internal(np.zeros(2), "brats2019")

# ---------------------------------------------------------------- NIfTI io


def test_save_volume_round_trip_is_atomic(tmp_path):
    arr = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    save_volume(tmp_path / "x.nii.gz", arr, affine)
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]  # no temp file left
    with gzip.open(tmp_path / "x.nii.gz") as fh:  # really gzip-compressed
        fh.read(10)
    data, aff, spacing = load_volume(tmp_path / "x.nii.gz")
    assert data.dtype == np.float32 and spacing == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(data, arr)
    np.testing.assert_allclose(aff, affine)
    np.testing.assert_array_equal(load_label(tmp_path / "x.nii.gz")[0], arr)


@pytest.mark.parametrize("name", ["pred.nii.gz", "pred.nii"])
def test_save_volume_honours_umask_not_0600(tmp_path, name):
    """Phantoms and predictions are shared files: the temp file's private 0600 mode must not stick."""
    old = os.umask(0o022)
    try:
        save_volume(tmp_path / name, np.zeros((2, 2, 2), dtype=np.uint8), np.eye(4))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert load_label(tmp_path / name)[0].shape == (2, 2, 2)


def test_truncated_nifti_raises_naming_file(tmp_path):
    path = write_nifti(tmp_path / "case_t1.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"case_t1\.nii\.gz"):
        load_volume(path)
    path.write_bytes(b"not a nifti at all")
    with pytest.raises(ValueError, match=r"case_t1\.nii\.gz"):
        load_volume(path)

# ---------------------------------------------------------------- adapters


def _check_cases(cases, ids, convention, n_images=4):
    assert [c.case_id for c in cases] == ids
    for c in cases:
        assert c.convention == convention
        assert c.label is not None and c.label.is_file()
        if c.image_4d is None:
            assert sorted(c.images) == sorted(MODALITY_ORDER)
            assert all(p.is_file() for p in c.images.values())


@pytest.mark.parametrize("nesting", ["", "inner", "BRATS2018"])
def test_brats2018_layout(tmp_path, nesting):
    root = tmp_path / "BRATS2018" if nesting == "BRATS2018" else tmp_path
    ids = make_brats2018(root)
    data_path = tmp_path / "MICCAI_BraTS_2018_Data_Training" if nesting == "inner" else tmp_path
    cases = discover_cases(data_path, "brats2018")
    _check_cases(cases, ids, "brats2021")
    assert [c.patient_id for c in cases] == ids
    lgg = next(c for c in cases if c.case_id == "Brats18_TCIA09_141_1")
    assert lgg.images["t1ce"].name == "Brats18_TCIA09_141_1_t1ce.nii.gz"
    assert lgg.images["t1ce"].parent.parent.name == "LGG"


@pytest.mark.parametrize("nesting", ["", "inner", "BRATS2021"])
@pytest.mark.parametrize("version", ["brats2021", "synthetic"])
def test_brats2021_layout(tmp_path, nesting, version):
    root = tmp_path / "BRATS2021" if nesting == "BRATS2021" else tmp_path
    ids = make_brats2021(root)
    data_path = tmp_path / "BraTS2021_Training_Data" if nesting == "inner" else tmp_path
    cases = discover_cases(data_path, version)
    _check_cases(cases, ids, "brats2021")
    assert cases[0].images["flair"].name == "BraTS2021_00000_flair.nii.gz"


def test_brats2023_layout_patients_and_modality_names(tmp_path):
    ids = make_brats2023(tmp_path / "downloads")
    cases = discover_cases(tmp_path, "brats2023")
    _check_cases(cases, ids, "brats2023")
    assert [c.patient_id for c in cases] == ["00002", "00005", "00005"]
    c = cases[1]
    assert {m: p.name for m, p in c.images.items()} == {
        "t1": "BraTS-GLI-00005-000-t1n.nii.gz", "t1ce": "BraTS-GLI-00005-000-t1c.nii.gz",
        "t2": "BraTS-GLI-00005-000-t2w.nii.gz", "flair": "BraTS-GLI-00005-000-t2f.nii.gz"}
    # pointing at the inner folder works too
    inner = tmp_path / "downloads" / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    assert [c.case_id for c in discover_cases(inner, "brats2023")] == ids


@pytest.mark.parametrize("inner", [False, True])
def test_msd_task01_layout_skips_macos_files(tmp_path, inner):
    ids = make_msd(tmp_path)
    cases = discover_cases(tmp_path / "Task01_BrainTumour" if inner else tmp_path, "msd_task01")
    _check_cases(cases, ids, "msd")
    for c in cases:
        assert c.images == {} and c.image_4d.name == f"{c.case_id}.nii.gz"
        assert c.channel_order == ("flair", "t1", "t1ce", "t2")
        assert c.label.parent.name == "labelsTr" and c.patient_id == c.case_id


def test_missing_modality_names_case_and_file(tmp_path):
    make_brats2021(tmp_path)
    (tmp_path / "BraTS2021_Training_Data" / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"BraTS2021_00002.*t1ce.*BraTS2021_00002_t1ce\.nii\.gz"):
        discover_cases(tmp_path, "brats2021")


def test_missing_label_only_allowed_without_require_labels(tmp_path):
    make_brats2021(tmp_path, n=2)
    (tmp_path / "BraTS2021_Training_Data" / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"BraTS2021_00000_seg\.nii\.gz"):
        discover_cases(tmp_path, "brats2021")
    cases = discover_cases(tmp_path, "brats2021", require_labels=False)
    assert [c.label is None for c in cases] == [True, False]


def test_empty_or_missing_folder_and_unknown_version(tmp_path):
    (tmp_path / "BraTS2021_Training_Data").mkdir()
    with pytest.raises(ValueError, match=r"no brats2021 cases.*BraTS2021_Training_Data/BraTS2021_XXXXX"):
        discover_cases(tmp_path, "brats2021")
    with pytest.raises(ValueError, match=r"nowhere.*not a folder.*msd_task01"):
        discover_cases(tmp_path / "nowhere", "msd_task01")
    with pytest.raises(ValueError, match=r"brats2019.*brats2018.*msd_task01"):
        discover_cases(tmp_path, "brats2019")

# ---------------------------------------------------------------- bad inputs found when preprocessing


def _one_case(tmp_path):
    make_brats2021(tmp_path, n=1)
    return discover_cases(tmp_path, "brats2021")[0]


def test_truncated_image_file_raises_naming_file(tmp_path):
    case = _one_case(tmp_path)
    blob = case.images["t2"].read_bytes()
    case.images["t2"].write_bytes(blob[: len(blob) - 200])
    with pytest.raises(ValueError, match=r"BraTS2021_00002_t2\.nii\.gz"):
        preprocess_case(case)


def test_image_label_shape_mismatch_names_case_and_file(tmp_path):
    case = _one_case(tmp_path)
    write_nifti(case.label, np.zeros((16, 16, 15), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"case BraTS2021_00002.*BraTS2021_00002_seg\.nii\.gz.*shape"):
        preprocess_case(case)


def test_affine_mismatch_names_case_and_file(tmp_path):
    case = _one_case(tmp_path)
    images, _ = head_arrays((16, 16, 16), 0)
    write_nifti(case.images["flair"], images["flair"], affine=np.diag([1.0, 1.0, 1.2, 1.0]))
    with pytest.raises(ValueError, match=r"case BraTS2021_00002.*affine.*BraTS2021_00002_flair\.nii\.gz"):
        preprocess_case(case)


def test_label_values_outside_convention_name_file(tmp_path):
    case = _one_case(tmp_path)
    _, label = head_arrays((16, 16, 16), 0)  # internal labels: holds 3, which is not a BraTS 2021 file value
    write_nifti(case.label, label)
    with pytest.raises(ValueError, match=r"BraTS2021_00002_seg\.nii\.gz.*\[3\]"):
        preprocess_case(case)


def test_unlabelled_case_preprocesses_without_label(tmp_path):
    write_split_case(tmp_path / "BraTS2021_Training_Data" / "BraTS2021_00009", "BraTS2021_00009", "_",
                     BRATS21_FILES, "brats2021", with_label=False)
    case = discover_cases(tmp_path, "brats2021", require_labels=False)[0]
    cached = preprocess_case(case)
    assert cached.label is None and cached.image.shape[0] == 4
