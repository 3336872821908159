"""Every bad input reported at once (discovery and cache build), and corrupt cache entries rebuilt."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from data_fixtures import BRATS21_FILES, make_brats2021, write_nifti, write_split_case
from dataio.adapters import discover_cases
from dataio.cache import PreprocessedCache, load_dataset
from dataio.input_errors import InputErrors, map_all

PARAMS = {"clip_percentiles": [0.5, 99.5]}


def _case_file(root, case_id: str, suffix: str):
    return root / "BraTS2021_Training_Data" / case_id / f"{case_id}_{suffix}.nii.gz"


def _break_cases(root) -> dict[str, str]:
    """Six cases, four broken in different ways; returns file -> the words its problem line must hold."""
    for i in range(6):
        case_id = f"BraTS2021_{i:05d}"
        write_split_case(root / "BraTS2021_Training_Data" / case_id, case_id, "_", BRATS21_FILES, "brats2021", seed=i)
    truncated = _case_file(root, "BraTS2021_00000", "flair")
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    nan_file = _case_file(root, "BraTS2021_00001", "t2")
    t2 = np.asarray(nib.load(str(nan_file)).dataobj).astype(np.float32)
    t2[4, 4, 4], t2[5, 5, 5] = np.nan, np.inf
    write_nifti(nan_file, t2)
    bad_label = _case_file(root, "BraTS2021_00002", "seg")
    seg = np.asarray(nib.load(str(bad_label)).dataobj).astype(np.uint8)
    seg[8, 8, 8] = 7
    write_nifti(bad_label, seg)
    shape_file = _case_file(root, "BraTS2021_00003", "t1ce")
    write_nifti(shape_file, np.ones((16, 16, 12), dtype=np.float32))
    return {str(truncated): "cannot read", str(nan_file): "2 NaN or infinite", str(bad_label): "unexpected label values",
            str(shape_file): "shape"}


def test_cache_build_reports_every_bad_case_and_keeps_the_good_ones(tmp_path):
    expected = _break_cases(tmp_path / "data")
    cases = discover_cases(tmp_path / "data", "brats2021")
    assert len(cases) == 6
    cache = PreprocessedCache(tmp_path / "cache")
    with pytest.raises(InputErrors) as info:
        cache.get_or_create(cases, "ds", PARAMS, progress=False)
    problems = info.value.problems
    assert len(problems) == 4, problems
    for path, words in expected.items():
        line = [p for p in problems if path in p]
        assert len(line) == 1 and words in line[0], (path, problems)
    assert "4 bad input file(s) (all 6 cases were checked)" in str(info.value)
    # the good cases were cached: a run with only them reuses every entry
    good = [c for c in cases if c.case_id in ("BraTS2021_00004", "BraTS2021_00005")]
    cache.get_or_create(good, "ds", PARAMS, progress=False)
    assert cache.stats == {"built": 0, "reused": 2}


def test_discovery_names_every_missing_file(tmp_path):
    ids = make_brats2021(tmp_path / "data", n=3)
    gone = [_case_file(tmp_path / "data", ids[0], "t1ce"), _case_file(tmp_path / "data", ids[0], "seg"),
            _case_file(tmp_path / "data", ids[2], "flair")]
    for path in gone:
        path.unlink()
    with pytest.raises(InputErrors) as info:
        load_dataset(tmp_path / "data", "brats2021", cache_root=tmp_path / "cache", progress=False)
    assert len(info.value.problems) == 3
    for path, problem in zip(gone, info.value.problems):
        assert "missing" in problem and path.name in problem
    assert isinstance(info.value, ValueError)  # callers catching bad input as ValueError keep working


@pytest.mark.parametrize("damage", ["truncate", "garble_header"])
def test_corrupt_cache_array_with_intact_metadata_is_rebuilt(tmp_path, caplog, damage):
    make_brats2021(tmp_path / "data", n=2)
    cases = discover_cases(tmp_path / "data", "brats2021")
    first = [np.array(c.image) for c in PreprocessedCache(tmp_path / "cache").get_or_create(
        cases, "ds", PARAMS, progress=False)]
    entry = tmp_path / "cache" / PreprocessedCache.key_for("ds", PARAMS) / cases[1].case_id / "image.npy"
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) - 100] if damage == "truncate" else b"\x00" * 64 + data[64:])
    cache = PreprocessedCache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="dataio.cache"):
        again = cache.get_or_create(cases, "ds", PARAMS, progress=False)
    assert cache.stats == {"built": 1, "reused": 1}
    assert any("rebuilding" in r.getMessage() and cases[1].case_id in r.getMessage() for r in caplog.records)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b.image)


def test_ct_folder_names_every_image_without_a_label(tmp_path):
    for stem in ("a", "b", "c"):
        write_nifti(tmp_path / "images" / f"{stem}.nii.gz", np.zeros((4, 4, 4), dtype=np.int16))
    write_nifti(tmp_path / "labels" / "b.nii.gz", np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(InputErrors) as info:
        discover_cases(tmp_path, "ich")
    assert [p.split(" has no label")[0] for p in info.value.problems] == [
        f"image {tmp_path / 'images' / 'a.nii.gz'}", f"image {tmp_path / 'images' / 'c.nii.gz'}"]


def test_map_all_tries_every_item_and_lets_other_errors_through():
    seen = []

    def check(x: int) -> int:
        seen.append(x)
        if x % 2:
            raise ValueError(f"item {x} is odd")
        return x

    with pytest.raises(InputErrors, match=r"item 1 is odd(.|\n)*item 3 is odd"):
        map_all(check, [0, 1, 2, 3])
    assert seen == [0, 1, 2, 3]
    assert map_all(check, [0, 2]) == [0, 2]
    with pytest.raises(KeyError):
        map_all(lambda x: {}[x], [1, 2])


def test_missing_and_unreadable_files_are_reported_together_before_any_job(tmp_path):
    ids = make_brats2021(tmp_path / "data", n=3)
    missing = _case_file(tmp_path / "data", ids[2], "t1")
    missing.unlink()
    truncated = _case_file(tmp_path / "data", ids[0], "flair")
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(InputErrors) as info:
        load_dataset(tmp_path / "data", "brats2021", cache_root=tmp_path / "cache", progress=False)
    assert len(info.value.problems) == 2 and "all 3 cases were checked" in str(info.value)
    assert missing.name in info.value.problems[0] and str(truncated) in info.value.problems[1]
