"""LUNA16 data (``luna16``, ``synthetic_luna``): the .mhd reader's orientation, world <-> voxel against SimpleITK with
a rotated non-symmetric direction, the chapter's nodule masks, the annotation CSVs and their errors, findings kept
in the cache, subset folds, the phantoms read back by the real adapter, and the data flags."""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dataio.adapters import dataset_info, default_hu_window, discover_cases
from dataio.cache import PreprocessedCache, open_dataset
from dataio.ct_adapters import CTOptions
from dataio.luna16 import (lps_to_ras, ras_affine, ras_to_lps, subset_splits, voxel_to_world, world_to_voxel)
from dataio.luna_preprocess import grow_radius, nodule_mask, read_mhd
from dataio.splits import check_disjoint, iter_folds, make_splits
from dataio.synthetic_luna import case_id, make_luna_phantom

HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
SPACING = (0.7, 0.8, 2.0)
ORIGIN = (-12.5, 30.0, -250.0)


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    """Rz @ Rx: a rotation whose matrix is not symmetric."""
    a, b = np.deg2rad(z_deg), np.deg2rad(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


DIRECTION = rotation(20.0, 10.0)


def sitk_image(hu_xyz: np.ndarray, direction: np.ndarray = DIRECTION) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu_xyz.transpose(2, 1, 0)).astype(np.int16))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(direction.ravel().tolist())
    return image


def write_scan(path: Path, hu_xyz: np.ndarray) -> sitk.Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk_image(hu_xyz)
    sitk.WriteImage(image, str(path), useCompression=False)
    return image


def chest(shape: tuple[int, int, int] = (20, 20, 16)) -> np.ndarray:
    """Air around a body at 30 HU holding a lung at -850 HU with one 50 HU nodule block at (9, 9, 8)."""
    hu = np.full(shape, -1000.0)
    hu[2:-2, 2:-2, :] = 30.0
    hu[9:11, 15:17, :] = 400.0  # a vertebra
    hu[4:-4, 4:-4, 2:-2] = -850.0
    hu[8:11, 7:12, 6:11] = 50.0  # half-widths 1, 2, 2 around (9, 9, 8)
    return hu


def write_csv(path: Path, rows: list[list], header: list[str] | None = HEADER) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def world_of(image: sitk.Image, index: tuple[float, float, float]) -> list[float]:
    return list(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))


def luna_folder(root: Path) -> dict[str, sitk.Image]:
    """Three scans (subsets 0, 1, 2): A holds the nodule, B and C none; annotations name A and an absent series;
    the excluded file names A and B (diameter -1)."""
    images = {uid: write_scan(root / f"subset{k}" / f"{uid}.mhd", chest() if uid == "1.2.3" else
                              np.where(chest() == 50.0, -850.0, chest()))
              for k, uid in enumerate(["1.2.3", "1.2.4", "1.2.5"])}
    centre = world_of(images["1.2.3"], (9.1, 8.9, 8.2))
    write_csv(root / "annotations.csv", [["1.2.3", *centre, 4.2], ["9.9.9", 1.0, 2.0, 3.0, 5.0]])
    write_csv(root / "annotations_excluded.csv", [["1.2.3", *world_of(images["1.2.3"], (5, 5, 3)), 2.0],
                                                  ["1.2.4", *world_of(images["1.2.4"], (6, 7, 4)), -1]])
    (root / "seriesuids.csv").write_text("1.2.3\n1.2.4\n1.2.5\n")
    (root / "candidates.csv").write_text("seriesuid,coordX,coordY,coordZ,class\n")
    return images


# --- geometry and reading ---------------------------------------------------------------------------------------

def test_stored_array_is_axial_last_in_itk_index_order(tmp_path: Path) -> None:
    image = sitk.Image(7, 5, 4, sitk.sitkInt16)
    image += -1000
    image.SetPixel((5, 1, 3), 500)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(tmp_path / "scan.mhd"), useCompression=False)
    assert (tmp_path / "scan.raw").is_file()
    scan = read_mhd(tmp_path / "scan.mhd")
    assert scan.hu.shape == (7, 5, 4) and scan.hu.dtype == np.float32
    assert scan.hu[5, 1, 3] == 500 and np.count_nonzero(scan.hu == 500) == 1
    assert scan.spacing == pytest.approx(SPACING)


def test_world_voxel_match_simpleitk_for_a_non_symmetric_direction() -> None:
    assert not np.allclose(DIRECTION, DIRECTION.T)
    image = sitk_image(np.zeros((10, 12, 8)))
    rng = np.random.default_rng(0)
    indices = rng.uniform(-2, 12, size=(6, 3))
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in indices])
    world = voxel_to_world(indices, ORIGIN, SPACING, DIRECTION)
    np.testing.assert_allclose(world, expected, atol=1e-9)
    back = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in expected])
    np.testing.assert_allclose(world_to_voxel(expected, ORIGIN, SPACING, DIRECTION), back, atol=1e-9)
    np.testing.assert_allclose(world_to_voxel(expected[0], ORIGIN, SPACING, DIRECTION.ravel()), indices[0], atol=1e-9)
    chapter = ((expected - ORIGIN) @ np.linalg.inv(DIRECTION)) / SPACING  # the book's xyz2irc order
    assert np.abs(chapter - indices).max() > 0.1  # ... which the test would catch
    # the RAS affine maps an array index to the RAS point of the same ITK physical point
    affine = ras_affine(ORIGIN, SPACING, DIRECTION)
    np.testing.assert_allclose((affine @ np.append(indices[1], 1.0))[:3], lps_to_ras(expected[1]), atol=1e-9)


def test_lps_ras_flip_x_and_y() -> None:
    points = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]])
    np.testing.assert_array_equal(lps_to_ras(points), [[-1.0, 2.0, 3.0], [-4.0, -5.0, -6.0]])
    np.testing.assert_array_equal(ras_to_lps(lps_to_ras(points)), points)
    with pytest.raises(ValueError, match="expected a point"):
        lps_to_ras([1.0, 2.0])


# --- the chapter's nodule mask ----------------------------------------------------------------------------------

def test_chapter_mask_grows_a_box_along_the_centre_lines() -> None:
    hu = np.full((20, 20, 20), -1000.0)
    hu[8:11, 7:12, 6:13] = 50.0  # half-widths 1, 2, 3 around (9, 9, 9)
    hu[9, 12:16, 9] = 50.0  # tissue beyond the block on the +y centre line only
    hu[11:18, 10, 10] = 50.0  # a vessel leaving the block off the centre lines
    centre = (9, 9, 9)
    assert [grow_radius(hu, centre, a, -700.0) for a in range(3)] == [2, 3, 4]
    mask = nodule_mask(hu, [centre], -700.0)
    expected = np.zeros(hu.shape, dtype=bool)
    expected[8:11, 7:12, 6:13] = True
    expected[9, 12, 9] = expected[11, 10, 10] = True  # inside the box; the rest of the wall and vessel is not
    np.testing.assert_array_equal(mask, expected)
    edge = np.full((5, 9, 9), 50.0)  # out of the image: one step back, as the chapter's IndexError
    assert grow_radius(edge, (2, 4, 4), 0, -700.0) == 2 and grow_radius(edge, (2, 4, 4), 1, -700.0) == 4
    assert not nodule_mask(hu, [], -700.0).any()


# --- the luna16 adapter and preprocessing -----------------------------------------------------------------------

def test_luna16_folder_labels_findings_subsets_and_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "LUNA16"
    images = luna_folder(root)
    with caplog.at_level(logging.WARNING):
        data = open_dataset(tmp_path, "luna16", cache_root=tmp_path / "cache", progress=False)
    absent = [m for m in caplog.messages if "not in the subset folders" in m]
    assert len(absent) == 1 and absent[0].startswith("1 annotation rows (1 series)")
    assert data.info == dataset_info("luna16") and data.info.region == "nodule" and data.info.channels == ("ct",)
    assert data.subsets == {"1.2.3": 0, "1.2.4": 1, "1.2.5": 2}
    a, b, c = data.cases
    assert a.case_id == a.patient_id == "1.2.3"
    full = np.zeros(a.original_shape, dtype=np.uint8)
    full[a.crop.slices()] = a.label
    np.testing.assert_array_equal(full, nodule_mask(chest(), [(9, 9, 8)], -700.0))
    assert full[8:11, 7:12, 6:11].all() and a.foreground_voxels == int(full.sum())
    assert not b.label.any() and not c.label.any() and c.findings == ()
    assert [f.excluded for f in a.findings] == [False, True] and b.findings[0].diameter_mm == -1.0
    centre = a.findings[0].centre_ras_mm
    np.testing.assert_allclose(centre, lps_to_ras(world_of(images["1.2.3"], (9.1, 8.9, 8.2))))
    np.testing.assert_allclose((a.affine @ [9.1, 8.9, 8.2, 1.0])[:3], centre, atol=1e-9)
    assert a.spacing == pytest.approx(SPACING) and a.crop.start == (2, 2, 0)
    assert a.image[0][9 - 2, 9 - 2, 8] == pytest.approx((50.0 + 1000.0) / 2000.0)  # LUNA16's [-1000, 1000] window
    again = open_dataset(tmp_path, "luna16", cache_root=tmp_path / "cache", progress=False)
    assert [x.findings for x in again.cases] == [x.findings for x in data.cases]
    assert again.cases[0].findings[0].origin.endswith("annotations.csv line 2")
    entries = list((tmp_path / "cache").glob("*/1.2.3"))
    key = json.loads((entries[0].parent / "key.json").read_text())
    assert key["params"] == {"kind": "luna", "hu_window": [-1000.0, 1000.0], "nodule_hu_threshold": -700.0,
                             "crop": "body"}
    meta = json.loads((entries[0] / "meta.json").read_text())
    del meta["findings"]  # an entry written before findings were recorded
    (entries[0] / "meta.json").write_text(json.dumps(meta))
    assert PreprocessedCache._read(entries[0]).findings is None


def test_chapter_annotation_file_with_extra_columns_is_accepted(tmp_path: Path) -> None:
    images = luna_folder(tmp_path)
    centre = world_of(images["1.2.3"], (9, 9, 8))
    write_csv(tmp_path / "annotations_with_malignancy.csv", [["1.2.3", *centre, 4.0, "False", "x"]],
              header=HEADER + ["isMal_bool", "note"])
    cases = discover_cases(tmp_path, "luna16", ct=CTOptions(annotations="annotations_with_malignancy.csv"))
    assert [len(c.findings) for c in cases] == [2, 1, 0]  # one annotation + one excluded for 1.2.3
    assert cases[0].subset == 0 and cases[0].extra_files[0].name == "1.2.3.raw"
    with pytest.raises(ValueError, match="--annotations nowhere.csv"):
        discover_cases(tmp_path, "luna16", ct=CTOptions(annotations="nowhere.csv"))


def test_missing_raw_is_an_error_naming_it(tmp_path: Path) -> None:
    luna_folder(tmp_path)
    (tmp_path / "subset1" / "1.2.4.raw").unlink()
    with pytest.raises(ValueError, match=r"1\.2\.4\.raw .*does not exist"):
        discover_cases(tmp_path, "luna16")


def test_annotation_outside_its_image_is_an_error(tmp_path: Path) -> None:
    luna_folder(tmp_path)
    write_csv(tmp_path / "annotations.csv", [["1.2.3", 500.0, 500.0, 500.0, 6.0]])
    with pytest.raises(ValueError, match=r"series 1\.2\.3: annotation at .*annotations\.csv line 2 .*outside"):
        open_dataset(tmp_path, "luna16", cache_root=tmp_path / "cache", progress=False)


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no subset0..subset9 folders"):
        discover_cases(tmp_path, "luna16")
    luna_folder(tmp_path)
    (tmp_path / "annotations.csv").unlink()
    with pytest.raises(ValueError, match="annotations.csv does not exist"):
        discover_cases(tmp_path, "luna16")
    assert discover_cases(tmp_path, "luna16", require_labels=False)[0].findings is None
    write_csv(tmp_path / "annotations.csv", [["1.2.3", "x", 1, 2, 3]])
    with pytest.raises(ValueError, match="annotations.csv line 2: coordX"):
        discover_cases(tmp_path, "luna16")


# --- subset folds -----------------------------------------------------------------------------------------------

def test_subset_splits_rule_and_format() -> None:
    ids = [f"s{i:02d}" for i in range(12)]
    subsets = {c: i % 4 for i, c in enumerate(ids)}  # subsets 0..3, three cases each
    splits = subset_splits(ids, subsets)
    reference = make_splits(ids, use_5fold=True, n_folds=3)
    assert set(reference) - {"stratified", "fixed_test"} <= set(splits) and splits["mode"] == "5fold"
    assert all(set(f) == set(reference["folds"][0]) for f in splits["folds"])
    assert splits["test"] == ["s03", "s07", "s11"] and splits["test_subset"] == 3
    assert [k for k, _, _ in iter_folds(splits)] == [0, 1, 2] and splits["fold_subsets"] == [0, 1, 2]
    assert splits["folds"][1] == {"fold": 1, "train": ["s00", "s02", "s04", "s06", "s08", "s10"],
                                  "val": ["s01", "s05", "s09"]}
    check_disjoint(splits)
    json.dumps(splits)
    with pytest.raises(ValueError, match="at least 3 subsets"):
        subset_splits(ids[:8], {c: i % 2 for i, c in enumerate(ids[:8])})
    with pytest.raises(ValueError, match="have no subset number"):
        subset_splits(ids, {c: 0 for c in ids[1:]})


# --- synthetic_luna ---------------------------------------------------------------------------------------------

def test_synthetic_luna_is_read_back_by_the_luna16_adapter(tmp_path: Path) -> None:
    data = open_dataset(None, "synthetic_luna", cache_root=tmp_path, synthetic_cases=8, synthetic_size=(32, 32, 24),
                        progress=False)
    root = tmp_path / "synthetic_luna" / "n8_s32x32x24_seed0"
    assert data.subsets == {case_id(i): i for i in range(8)} and data.info.region == "nodule"
    assert (root / "subset3" / f"{case_id(3)}.raw").is_file()
    assert (root / "seriesuids.csv").read_text().split() == [case_id(i) for i in range(8)]
    for i, case in enumerate(data.cases):
        nodules = [f for f in case.findings if not f.excluded]
        assert bool(nodules) == (i % 4 != 3)
        assert bool(case.label.any()) == bool(nodules), case.case_id
        assert case.image.shape[1:] == case.label.shape and 0.0 <= case.image.min() <= case.image.max() <= 1.0
    excluded = list(csv.reader(open(root / "annotations_excluded.csv")))
    assert excluded[0] == HEADER and any(float(r[4]) == -1 for r in excluded[1:])
    image = sitk.ReadImage(str(root / "subset0" / f"{case_id(0)}.mhd"))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert not np.allclose(direction, direction.T) and not np.allclose(image.GetOrigin(), 0)
    sx, sy, sz = image.GetSpacing()
    assert 0.6 <= sx == sy <= 0.8 and 1.25 <= sz <= 2.5
    again = open_dataset(None, "synthetic_luna", cache_root=tmp_path, synthetic_cases=8, synthetic_size=(32, 32, 24),
                         progress=False)
    assert [c.findings for c in again.cases] == [c.findings for c in data.cases]
    assert all(c.findings is not None for c in again.cases)
    first, second = (make_luna_phantom((24, 24, 16), np.random.default_rng([3, 1]), 1) for _ in range(2))
    np.testing.assert_array_equal(first.hu, second.hu)


# --- windows and flags ------------------------------------------------------------------------------------------

def test_default_hu_windows() -> None:
    assert default_hu_window("ich") == (0.0, 120.0) and default_hu_window("synthetic_luna") == (-1000.0, 1000.0)
    assert default_hu_window("luna16", (-1200, 600)) == (-1200.0, 600.0)
    with pytest.raises(ValueError, match="not a CT version"):
        default_hu_window("brats2021")


@pytest.mark.parametrize("values, needle", [
    (dict(dataset_version="brats2021", data_path="x", annotations="a.csv"),
     "--annotations applies to the LUNA16 versions"),
    (dict(dataset_version="ich", data_path="x", use_subset_folds=True), "--use_subset_folds applies to the LUNA16"),
    (dict(dataset_version="luna16", data_path="x", manifest="m.csv", mask_dir="d"),
     "--manifest, --mask_dir apply to --dataset_version ich or synthetic_ich only"),
    (dict(dataset_version="synthetic_luna", target_spacing=(1.0, 1.0, 1.0)), "--target_spacing applies to"),
    (dict(dataset_version="synthetic_luna", annotations="a.csv"), "synthetic_luna phantoms write and read"),
    (dict(dataset_version="luna16"), "--data_path is required for --dataset_version luna16"),
    (dict(dataset_version="synthetic", hu_window=(0.0, 80.0)),
     "--hu_window applies to the CT versions .*luna16 or synthetic_luna"),
    (dict(dataset_version="luna16", data_path="x", nodule_hu_threshold=float("nan")), "--nodule_hu_threshold must"),
])
def test_luna_flags_apply_to_the_luna_versions_only(values: dict, needle: str) -> None:
    from engine.options.data_options import DataOptions

    with pytest.raises(ValueError, match=needle):
        DataOptions(**values).validate_data()


def test_luna_flag_parsing_and_records() -> None:
    from engine.options.data_options import (DataOptions, add_luna_arguments, data_options_from_config,
                                             effective_hu_window)

    parser = argparse.ArgumentParser()
    add_luna_arguments(parser.add_argument_group("data"))
    args = parser.parse_args(["--annotations", "annotations_with_malignancy.csv", "--nodule_hu_threshold", "-650",
                              "--use_subset_folds"])
    assert (args.annotations, args.nodule_hu_threshold, args.use_subset_folds) == \
        ("annotations_with_malignancy.csv", -650.0, True)
    defaults = parser.parse_args([])
    assert (defaults.annotations, defaults.nodule_hu_threshold, defaults.use_subset_folds) == (None, -700.0, False)
    options = DataOptions(dataset_version="luna16", data_path="x", annotations=args.annotations,
                          nodule_hu_threshold=-650.0, use_subset_folds=True)
    options.validate_data()
    DataOptions(dataset_version="synthetic_luna", hu_window=(-1000.0, 400.0)).validate_data()
    assert options.ct_options().nodule_hu_threshold == -650.0 and options.ct_options().hu_window is None
    assert data_options_from_config({"dataset_version": "synthetic", "hu_window": [0.0, 120.0]}).hu_window is None
    assert data_options_from_config({"dataset_version": "ich", "data_path": "x",
                                     "hu_window": [0.0, 120.0]}).hu_window == (0.0, 120.0)
    assert effective_hu_window("ich", None) == effective_hu_window("ich", [0, 120]) == (0.0, 120.0)
    assert effective_hu_window("brats2021", [0.0, 120.0]) is None and effective_hu_window("luna16", None)[0] == -1000
    recorded = argparse.ArgumentParser()
    add_luna_arguments(recorded.add_argument_group("data"), recorded=True)
    assert vars(recorded.parse_args([])) == {"annotations": None, "nodule_hu_threshold": None,
                                             "use_subset_folds": None}
