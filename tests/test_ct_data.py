"""CT haemorrhage data (``ich``, ``synthetic_ich``): layouts, formats, checks with clear errors, HU windowing,
resampling, the synthetic CT phantoms, and the data flags."""

from __future__ import annotations

import csv
import pickle
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dataio.adapters import dataset_info, discover_cases
from dataio.cache import load_dataset, open_dataset, synthetic_ct_root, synthetic_root
from dataio.ct_adapters import CTOptions
from dataio.ct_preprocess import resample, window_hu
from dataio.preprocess import paste_back
from dataio.synthetic_ct import (CSF, GM, HAEM, HU_RANGE, SKULL, WM, ensure_synthetic_ct, make_ct_phantom)
from dataio.types import DatasetInfo

SHAPE = (16, 16, 8)
AFFINE = np.diag([0.5, 0.5, 2.0, 1.0])


def ct_volume(lesion: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HU image (air -1000, skull 1000, brain ~30, a 70 HU bleed of 3 x 3 x 2 voxels) and its 0/1 label."""
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    hu[2:14, 3:13, 1:7] = 1000.0
    hu[3:13, 4:12, 2:6] = 30.0 + rng.normal(0, 2, size=(10, 8, 4))
    label = np.zeros(SHAPE, dtype=np.uint8)
    if lesion:
        hu[6:9, 6:9, 3:5] = 70.0
        label[6:9, 6:9, 3:5] = 1
    return hu, label


def write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".npy"):
        np.save(path, array)
    elif path.name.endswith((".pkl", ".pickle")):
        path.write_bytes(pickle.dumps(array))
    else:
        nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def folder_dataset(root: Path, ext: str = ".nii.gz", n: int = 3) -> Path:
    for i in range(n):
        hu, label = ct_volume(lesion=i != 2, seed=i)
        write(root / "images" / f"case{i}{ext}", hu.astype(np.int16))
        write(root / "labels" / f"case{i}{'_seg' if i == 1 else ''}{ext}", label)
    return root


def load(root: Path | None, tmp_path: Path, **ct: object):
    return open_dataset(root, "ich", cache_root=tmp_path / "cache", ct=CTOptions(**ct), progress=False)


# --- layouts and formats ------------------------------------------------------------------------------------

def test_dataset_info_of_the_ct_versions() -> None:
    for version in ("ich", "synthetic_ich"):
        assert dataset_info(version) == DatasetInfo(name=version, channels=("ct",), label_kind="binary", region="ich")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".npy"])
def test_folder_layout_in_each_format(tmp_path: Path, ext: str) -> None:
    root = folder_dataset(tmp_path / "data", ext)
    npy_spacing = (0.8, 0.8, 5.0)
    ds = load(root, tmp_path, spacing=npy_spacing)
    assert [c.case_id for c in ds.cases] == ["case0", "case1", "case2"] and ds.test_ids == ()
    assert ds.info.channels == ("ct",) and ds.info.label_kind == "binary"
    expected = npy_spacing if ext == ".npy" else (0.5, 0.5, 2.0)
    hu, label = ct_volume()
    for case in ds.cases:
        assert case.channel_names == ("ct",) and case.convention == "binary" and case.image.shape[0] == 1
        assert case.image.dtype == np.float32 and 0.0 <= case.image.min() and case.image.max() <= 1.0
        assert case.label.dtype == np.uint8 and set(np.unique(case.label).tolist()) <= {0, 1}
        np.testing.assert_allclose(case.spacing, expected, rtol=1e-6)
        np.testing.assert_allclose(np.diag(case.affine)[:3], expected, rtol=1e-6)
        # the crop is the head box (voxels above -500 HU) and pastes back onto the original grid
        assert case.original_shape == SHAPE and case.crop.start == (2, 3, 1) and case.crop.stop == (14, 13, 7)
        assert case.patient_id == case.case_id
    np.testing.assert_array_equal(paste_back(np.asarray(ds.cases[0].label), ds.cases[0].crop, SHAPE), label)
    assert [c.foreground_voxels for c in ds.cases] == [18, 18, 0]


def test_npy_spacing_and_hu_window_key_the_cache(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "data", ".npy", n=1)
    load(root, tmp_path)
    load(root, tmp_path)  # same flags: same entry
    keys = lambda: sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())  # noqa: E731
    assert len(keys()) == 1
    assert load(root, tmp_path, spacing=(1.0, 1.0, 3.0)).cases[0].spacing == (1.0, 1.0, 3.0)
    wide = load(root, tmp_path, hu_window=(-100.0, 200.0)).cases[0]
    assert len(keys()) == 3
    assert wide.image.min() > 0.0  # air is at 0 under any window; here the window moved brain values
    default = load(root, tmp_path).cases[0]
    assert not np.allclose(wide.image, default.image)


def test_manifest_layout_with_masks_and_a_negative_without_mask(tmp_path: Path) -> None:
    base = tmp_path / "seed"
    hu, label = ct_volume()
    write(base / "scans" / "a.nii.gz", hu)
    b = write(tmp_path / "elsewhere" / "b.nii.gz", hu)
    write(base / "scans" / "c.nii.gz", ct_volume(lesion=False)[0])
    write(tmp_path / "masks" / "a.nii.gz", label)
    write(tmp_path / "masks" / "b.npy", label)  # .npy mask of a NIfTI image: no affine to compare
    manifest = base / "train.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "ich", "patient_id"])
        w.writerows([["scans/a.nii.gz", 1, "P1"], [str(b), 1, "P1"], ["scans/c.nii.gz", 0, "P2"]])
    ds = load(None, tmp_path, manifest=str(manifest), mask_dir=str(tmp_path / "masks"))
    by_id = {c.case_id: c for c in ds.cases}
    assert sorted(by_id) == ["a", "b", "c"]
    assert [by_id[k].patient_id for k in "abc"] == ["P1", "P1", "P2"]
    assert by_id["c"].label is not None and not np.asarray(by_id["c"].label).any()
    assert by_id["c"].foreground_voxels == 0 and by_id["a"].foreground_voxels == 18


def test_patient_regex_groups_scans_and_a_non_matching_name_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    hu, label = ct_volume()
    for name in ("P01_scan1", "P01_scan2", "P02_scan1"):
        write(root / "images" / f"{name}.nii.gz", hu)
        write(root / "labels" / f"{name}.nii.gz", label)
    cases = discover_cases(root, "ich", ct=CTOptions(patient_regex=r"^(P\d+)_"))
    assert [c.patient_id for c in cases] == ["P01", "P01", "P02"]
    assert [c.patient_id for c in discover_cases(root, "ich", ct=CTOptions(patient_regex=r"P\d+"))] == \
        ["P01", "P01", "P02"]  # no group: the whole match
    write(root / "images" / "other.nii.gz", hu)
    write(root / "labels" / "other.nii.gz", label)
    with pytest.raises(ValueError, match=r"other\.nii\.gz: file name stem 'other' does not match --patient_regex"):
        discover_cases(root, "ich", ct=CTOptions(patient_regex=r"^(P\d+)_"))


def test_separate_test_folders_give_the_fixed_test_ids(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "data")
    hu, label = ct_volume()
    for name in ("t1", "t2"):
        write(tmp_path / "test_images" / f"{name}.nii", hu)
        write(tmp_path / "test_labels" / f"{name}.nii", label)
    ds = load(root, tmp_path, test_image_dir=str(tmp_path / "test_images"),
              test_label_dir=str(tmp_path / "test_labels"))
    assert ds.test_ids == ("t1", "t2") and len(ds.cases) == 5
    write(tmp_path / "test_images" / "case0.nii", hu)  # same id as a training case
    write(tmp_path / "test_labels" / "case0.nii", label)
    with pytest.raises(ValueError, match="case id 'case0'.*used by several files"):
        discover_cases(root, "ich", ct=CTOptions(test_image_dir=str(tmp_path / "test_images"),
                                                 test_label_dir=str(tmp_path / "test_labels")))


# --- bad inputs: each error names the file and what is wrong --------------------------------------------------

def _one_case(tmp_path: Path, image: np.ndarray, label: np.ndarray, label_affine: np.ndarray = AFFINE) -> Path:
    root = tmp_path / "bad"
    write(root / "images" / "x.nii.gz", image)
    write(root / "labels" / "x.nii.gz", label, label_affine)
    return root


@pytest.mark.parametrize("values, needle", [((0, 255), r"values \[0, 255\].*0/255 mask"),
                                            ((0, 2), r"is not binary: values \[0, 2\]")])
def test_non_binary_label_is_refused(tmp_path: Path, values: tuple[int, int], needle: str) -> None:
    hu, label = ct_volume()
    root = _one_case(tmp_path, hu, (label * values[1]).astype(np.uint8))
    with pytest.raises(ValueError, match=r"labels/x\.nii\.gz.*" + needle):
        load(root, tmp_path)


def test_shape_mismatch(tmp_path: Path) -> None:
    hu, label = ct_volume()
    root = _one_case(tmp_path, hu, label[:, :, :6])
    with pytest.raises(ValueError, match=r"label .*x\.nii\.gz has shape \(16, 16, 6\) but image .*\(16, 16, 8\)"):
        load(root, tmp_path)


def test_affine_mismatch(tmp_path: Path) -> None:
    hu, label = ct_volume()
    root = _one_case(tmp_path, hu, label, np.diag([0.5, 0.5, 2.5, 1.0]))
    with pytest.raises(ValueError, match=r"affine of label .*labels/x\.nii\.gz differs from that of image"):
        load(root, tmp_path)


def test_image_not_in_hounsfield_units(tmp_path: Path) -> None:
    hu, label = ct_volume()
    root = _one_case(tmp_path, np.clip((hu + 1000) / 2000, 0, 1).astype(np.float32), label)
    with pytest.raises(ValueError, match=r"images/x\.nii\.gz does not look like CT in Hounsfield units: min 0, max "
                                         r"1.*min <= -200.*normalised"):
        load(root, tmp_path)


def _manifest(tmp_path: Path, rows: list[list[object]]) -> Path:
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "ich", "patient_id"], *rows])
    (tmp_path / "masks").mkdir(exist_ok=True)
    return path


def test_manifest_case_missing_on_disk(tmp_path: Path) -> None:
    write(tmp_path / "a.nii.gz", ct_volume(lesion=False)[0])
    manifest = _manifest(tmp_path, [["a.nii.gz", 0, "P"], ["gone.nii.gz", 0, "Q"]])
    with pytest.raises(ValueError, match=r"m\.csv line 3: image .*gone\.nii\.gz \(path 'gone\.nii\.gz'\) does "
                                         r"not exist"):
        load(None, tmp_path, manifest=str(manifest), mask_dir=str(tmp_path / "masks"))


@pytest.mark.parametrize("flag, lesion, needle", [
    (1, False, r"case a \(--manifest .*m\.csv line 2\): column ich says 1 but mask .*a\.nii\.gz has 0 foreground"),
    (0, True, r"case a .*column ich says 0 but mask .*a\.nii\.gz has 18 foreground voxels")])
def test_manifest_ich_column_must_agree_with_the_mask(tmp_path: Path, flag: int, lesion: bool, needle: str) -> None:
    hu, label = ct_volume(lesion=lesion)
    write(tmp_path / "a.nii.gz", hu)
    manifest = _manifest(tmp_path, [["a.nii.gz", flag, "P"]])
    write(tmp_path / "masks" / "a.nii.gz", label)
    with pytest.raises(ValueError, match=needle):
        load(None, tmp_path, manifest=str(manifest), mask_dir=str(tmp_path / "masks"))


def test_manifest_positive_without_mask(tmp_path: Path) -> None:
    write(tmp_path / "a.nii.gz", ct_volume()[0])
    manifest = _manifest(tmp_path, [["a.nii.gz", 1, "P"]])
    with pytest.raises(ValueError, match=r"line 2: case a has ich=1 but --mask_dir .* holds no mask a\.nii\.gz"):
        load(None, tmp_path, manifest=str(manifest), mask_dir=str(tmp_path / "masks"))


def test_pickles_are_refused_without_the_flag_and_read_with_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    hu, label = ct_volume()
    (root / "images").mkdir(parents=True)
    (root / "images" / "p.pkl").write_bytes(pickle.dumps({"image": hu, "note": "x"}))
    write(root / "labels" / "p.npy", label)
    with pytest.raises(ValueError, match=r"p\.pkl: pickled files .* unpickling runs arbitrary code.*--allow_pickle"):
        load(root, tmp_path)
    case = load(root, tmp_path, allow_pickle=True, spacing=(1.0, 1.0, 4.0)).cases[0]
    assert case.spacing == (1.0, 1.0, 4.0) and case.foreground_voxels == 18
    (root / "images" / "p.pkl").write_bytes(pickle.dumps(["not", "an", "array"]))
    with pytest.raises(ValueError, match=r"p\.pkl: the pickle holds list; expected a numpy array or a dict"):
        load(root, tmp_path / "other", allow_pickle=True)


def test_missing_folders_and_no_cases(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--data_path is required for --dataset_version ich"):
        load(None, tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match=r"--data_path .*d has no images/ folder"):
        load(tmp_path / "d", tmp_path)
    (tmp_path / "d" / "images").mkdir()
    with pytest.raises(ValueError, match=r"image folder .*images holds no \.nii\.gz"):
        load(tmp_path / "d", tmp_path)
    write(tmp_path / "d" / "images" / "a.nii.gz", ct_volume()[0])
    with pytest.raises(ValueError, match=r"label folder .*labels does not exist"):
        load(tmp_path / "d", tmp_path)
    (tmp_path / "d" / "labels").mkdir()
    with pytest.raises(ValueError, match=r"image .*a\.nii\.gz has no label in"):
        load(tmp_path / "d", tmp_path)


# --- windowing and resampling ----------------------------------------------------------------------------------

def test_hu_window_maps_to_unit_range_with_clipping() -> None:
    np.testing.assert_allclose(window_hu(np.array([-1000, -100, 0, 60, 120, 500], np.float32)),
                               [0, 0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(window_hu(np.array([-40, 40, 120], np.float32), (-40, 120)), [0, 0.5, 1])
    with pytest.raises(ValueError, match="--hu_window needs LOW < HIGH"):
        window_hu(np.zeros(3), (10, 10))


def test_resampling_changes_shape_spacing_and_affine() -> None:
    hu, label = ct_volume()
    affine = AFFINE.copy()
    affine[:3, 3] = [-4.0, -4.0, -8.0]
    image, lab, new_affine, spacing = resample(hu, label, affine, (0.5, 0.5, 2.0), (1.0, 1.0, 1.0))
    assert image.shape == lab.shape == (8, 8, 16) and spacing == (1.0, 1.0, 1.0)
    assert set(np.unique(lab).tolist()) <= {0, 1} and lab.dtype == np.uint8  # nearest: still binary
    # new voxel (0, 0, 0) is centred on old index (0.5, 0.5, -0.25): the volume's outer faces stay put
    np.testing.assert_allclose(new_affine @ [0, 0, 0, 1], affine @ [0.5, 0.5, -0.25, 1])
    np.testing.assert_allclose(np.abs(np.diag(new_affine)[:3]), spacing)
    # the 1.5 x 1.5 x 4 mm bleed covers 1-2 x 1-2 x 4 voxels of 1 mm (nearest neighbour)
    assert 4 <= np.count_nonzero(lab) <= 16 and np.count_nonzero(lab[:, :, 6:10]) == np.count_nonzero(lab)


def test_target_spacing_through_the_pipeline(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "data", n=1)
    case = load(root, tmp_path, target_spacing=(1.0, 1.0, 1.0)).cases[0]
    assert case.original_shape == (8, 8, 16) and case.spacing == (1.0, 1.0, 1.0)
    assert paste_back(np.asarray(case.label), case.crop, case.original_shape).shape == (8, 8, 16)


# --- synthetic CT phantoms -------------------------------------------------------------------------------------

def _read_set(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): np.asarray(nib.load(str(p)).dataobj) for p in sorted(root.rglob("*.nii.gz"))}


def test_phantoms_are_deterministic_and_anisotropic(tmp_path: Path) -> None:
    size = (32, 32, 16)
    a = _read_set(ensure_synthetic_ct(tmp_path / "a", n_cases=3, size=size, seed=5))
    b = _read_set(ensure_synthetic_ct(tmp_path / "b", n_cases=3, size=size, seed=5))
    c = _read_set(ensure_synthetic_ct(tmp_path / "c", n_cases=3, size=size, seed=6))
    assert sorted(a) == sorted(b) == [f"{d}/ICHSYN_0000{i}.nii.gz" for d in ("images", "labels") for i in range(3)]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["images/ICHSYN_00000.nii.gz"], c["images/ICHSYN_00000.nii.gz"])
    img = nib.load(str(tmp_path / "a" / "images" / "ICHSYN_00001.nii.gz"))
    lab = nib.load(str(tmp_path / "a" / "labels" / "ICHSYN_00001.nii.gz"))
    assert img.get_data_dtype() == np.int16 and img.shape == size
    zooms = np.diag(img.affine)[:3]
    assert 0.9 <= zooms[0] == zooms[1] <= 1.0 and 4.0 <= zooms[2] <= 5.0  # spacing lives in the affine
    np.testing.assert_allclose(img.affine, lab.affine)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        (tmp_path / "foreign" / "images").mkdir(parents=True)
        (tmp_path / "foreign" / "images" / "scan.nii.gz").write_bytes(b"real data")
        ensure_synthetic_ct(tmp_path / "foreign", n_cases=1, size=size)


def test_phantom_tissues_lie_in_their_hu_ranges() -> None:
    means: dict[int, list[float]] = {k: [] for k in (SKULL, CSF, GM, WM, HAEM)}
    for i in range(3):
        image, label, tissue, _ = make_ct_phantom((64, 64, 16), np.random.default_rng([1, i]), i)
        assert image.dtype == np.int16 and image.min() >= -1024 and (image[0, 0] < -900).all()
        np.testing.assert_array_equal(label, tissue == HAEM)
        for k in means:
            interior = ndimage.binary_erosion(tissue == k)
            if interior.any():
                lo, hi = HU_RANGE[k]
                assert lo <= image[interior].min() and image[interior].max() <= hi, k
                means[k].append(float(image[interior].mean()))
    assert HU_RANGE[SKULL] == (700.0, 1300.0) and HU_RANGE[CSF] == (0.0, 15.0)
    assert HU_RANGE[GM] == HU_RANGE[WM] == (20.0, 45.0) and HU_RANGE[HAEM] == (50.0, 90.0)
    assert 900 < np.mean(means[SKULL]) < 1100 and 3 < np.mean(means[CSF]) < 12
    assert np.mean(means[WM]) < np.mean(means[GM]) < np.mean(means[HAEM])


def test_synthetic_ich_is_read_back_by_the_ich_adapter(tmp_path: Path) -> None:
    start = time.perf_counter()
    cases = load_dataset(None, "synthetic_ich", cache_root=tmp_path / "cache", progress=False)
    elapsed = time.perf_counter() - start
    root = synthetic_ct_root(tmp_path / "cache", 12, (64, 64, 16), 0)
    assert root.is_dir() and root != synthetic_root(tmp_path / "cache", 12, (64, 64, 16), 0)
    assert len(cases) == 12 and all(c.original_shape == (64, 64, 16) and c.channel_names == ("ct",) for c in cases)
    assert elapsed < 30  # generation + preprocessing of 12 cases (a few seconds on a busy 2-core machine)
    counts, sizes = [], []
    for c in cases:
        assert 4.0 <= c.spacing[2] <= 5.0 and 0.9 <= c.spacing[0] <= 1.0
        components, n = ndimage.label(np.asarray(c.label), structure=np.ones((3, 3, 3)))
        counts.append(n)
        sizes += np.bincount(components.ravel())[1:].tolist()
        assert c.foreground_voxels == int(np.count_nonzero(c.label))
    assert counts.count(0) == 3  # a quarter without haemorrhage
    assert max(counts) >= 3 and min(sizes) <= 10 and max(sizes) >= 1000  # several per scan; tiny to large
    assert load_dataset(tmp_path / "mine", "synthetic_ich", synthetic_cases=2, cache_root=tmp_path / "cache",
                        progress=False)[0].case_id == "ICHSYN_00000"
    assert (tmp_path / "mine" / "images" / "ICHSYN_00001.nii.gz").is_file()


# --- flags -----------------------------------------------------------------------------------------------------

def _config(argv: list[str]):
    from engine.options.config import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv, needle", [
    (["--hu_window", "0", "80"], "--hu_window applies to the CT versions"),
    (["--dataset_version", "brats2021", "--data_path", "x", "--manifest", "m.csv", "--mask_dir", "d"],
     "--manifest, --mask_dir apply to the CT versions"),
    (["--dataset_version", "ich", "--manifest", "m.csv"], "--manifest m.csv needs --mask_dir"),
    (["--dataset_version", "synthetic_ich", "--hu_window", "120", "0"], "--hu_window needs LOW < HIGH"),
    (["--dataset_version", "ich", "--data_path", "x", "--spacing", "1", "0", "1"], "--spacing needs three values > 0"),
    (["--dataset_version", "ich", "--data_path", "x", "--target_spacing", "1", "1", "-2"], "--target_spacing needs"),
    (["--dataset_version", "ich"], "--data_path is required for --dataset_version ich"),
    (["--dataset_version", "synthetic_ich", "--allow_pickle"], "--allow_pickle describe the files of"),
    (["--dataset_version", "ich", "--data_path", "x", "--test_image_dir", "t"],
     "--test_image_dir and --test_label_dir"),
])
def test_bad_data_flags_name_the_flag(argv: list[str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        _config(argv)


def test_flag_defaults_and_records(tmp_path: Path) -> None:
    from engine.options.data_options import DATA_FIELDS, data_options_from_config

    ct = _config(["--dataset_version", "synthetic_ich", "--hu_window", "-20", "100", "--target_spacing", "1", "1", "2"])
    assert ct.synthetic_size == (64, 64, 16) and ct.hu_window == (-20.0, 100.0) and ct.target_spacing == (1, 1, 2)
    assert _config([]).synthetic_size == (64, 64, 64)  # BraTS keeps its phantom size
    assert _config(["--manifest", "m.csv", "--mask_dir", "d"]).dataset_version == "ich"
    recorded = ct.to_dict()
    assert {"hu_window", "spacing", "target_spacing", "manifest", "mask_dir", "allow_pickle"} <= set(DATA_FIELDS)
    again = data_options_from_config(recorded)
    assert again.ct_options() == ct.ct_options() and again.hu_window == (-20.0, 100.0)
    import evaluate_experiment

    args = evaluate_experiment.build_parser().parse_args(["checkpoints", "--results_dir", str(tmp_path)])  # recorded
    assert args.synthetic_size is None and args.dataset_version is None
