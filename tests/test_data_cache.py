"""Preprocessing numerics, crop / paste_back, the on-disk cache and load_dataset."""

from __future__ import annotations

import json
import socket
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from data_fixtures import file_label, make_brats2021, make_msd

from dataio.adapters import discover_cases
from dataio.cache import PreprocessedCache, load_dataset
from dataio.conventions import from_internal
from dataio.preprocess import paste_back, preprocess_case
from dataio.types import MODALITY_ORDER

PARAMS = {"clip_percentiles": [0.5, 99.5]}


def _files(case):
    return {m: np.asarray(nib.load(str(p)).dataobj, dtype=np.float64) for m, p in case.images.items()}


def test_preprocess_zscore_background_crop_and_paste_back(tmp_path):
    make_brats2021(tmp_path, n=1)
    case = discover_cases(tmp_path, "brats2021")[0]
    raw = _files(case)
    cached = preprocess_case(case, clip_percentiles=(0.0, 100.0))
    assert cached.image.dtype == np.float32 and cached.label.dtype == np.uint8
    assert cached.image.shape[0] == 4 and cached.original_shape == (16, 16, 16)
    # the fixture's head occupies [2:-3, 3:-2, 2:-2]: that is the crop
    assert cached.crop.start == (2, 3, 2) and cached.crop.stop == (13, 14, 14)
    for k, m in enumerate(MODALITY_ORDER):
        full = paste_back(cached.image[k], cached.crop, cached.original_shape)
        inside = raw[m] != 0
        assert np.all(full[~inside] == 0)  # background stays 0
        expected = (raw[m][inside] - raw[m][inside].mean()) / raw[m][inside].std()
        np.testing.assert_allclose(full[inside], expected, atol=1e-4)  # channel k is modality m, z-scored
    label_back = paste_back(cached.label, cached.crop, cached.original_shape)
    file_seg = np.asarray(nib.load(str(case.label)).dataobj)
    np.testing.assert_array_equal(from_internal(label_back, "brats2021"), file_seg)


def test_preprocess_clips_to_percentiles(tmp_path):
    make_brats2021(tmp_path, n=1)
    case = discover_cases(tmp_path, "brats2021")[0]
    cached = preprocess_case(case, clip_percentiles=(5.0, 95.0))
    for k in range(4):
        ch = np.asarray(cached.image[k])
        values = ch[ch != 0]
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-4
        # clipping piles 5% of the voxels onto each bound
        assert np.mean(values == values.max()) > 0.03 and np.mean(values == values.min()) > 0.03
    with pytest.raises(ValueError, match="clip_percentiles"):
        preprocess_case(case, clip_percentiles=(90.0, 10.0))


def test_msd_channels_are_reordered_and_labels_mapped(tmp_path):
    make_msd(tmp_path)
    case = discover_cases(tmp_path, "msd_task01")[0]
    cached = preprocess_case(case, clip_percentiles=(0.0, 100.0))
    stack = np.asarray(nib.load(str(case.image_4d)).dataobj, dtype=np.float64)
    for k, m in enumerate(MODALITY_ORDER):
        src = stack[..., case.channel_order.index(m)][cached.crop.slices()]
        inside = src != 0
        np.testing.assert_allclose(cached.image[k][inside], (src[inside] - src[inside].mean()) / src[inside].std(),
                                   atol=1e-4)
    seg = np.asarray(nib.load(str(case.label)).dataobj)[cached.crop.slices()]
    np.testing.assert_array_equal(file_label(cached.label, "msd"), seg)


def test_cache_reuses_entries_and_rebuilds_changed_sources(tmp_path):
    make_brats2021(tmp_path / "data", n=2)
    cases = discover_cases(tmp_path / "data", "brats2021")
    cache = PreprocessedCache(tmp_path / "cache")
    first = cache.get_or_create(cases, "ds", PARAMS, progress=False)
    assert cache.stats == {"built": 2, "reused": 0}
    second = PreprocessedCache(tmp_path / "cache").get_or_create(cases, "ds", PARAMS, progress=False)
    again = PreprocessedCache(tmp_path / "cache")
    third = again.get_or_create(cases, "ds", PARAMS, progress=False)
    assert again.stats == {"built": 0, "reused": 2}
    for a, b in zip(first, second + third):
        assert a.case_id == b.case_id and a.crop == b.crop and a.original_shape == b.original_shape
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_allclose(a.affine, b.affine)
    assert isinstance(third[0].image, np.memmap)
    # a changed source file invalidates its entry only
    t1 = cases[1].images["t1"]
    os.utime(t1, ns=(time.time_ns(), t1.stat().st_mtime_ns + 5_000_000_000))
    again.get_or_create(cases, "ds", PARAMS, progress=False)
    assert again.stats == {"built": 1, "reused": 1}
    # other params or another dataset id -> another key
    assert PreprocessedCache.key_for("ds", PARAMS) != PreprocessedCache.key_for("ds", {"clip_percentiles": [1, 99]})
    assert PreprocessedCache.key_for("ds", PARAMS) != PreprocessedCache.key_for("ds2", PARAMS)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_cache_recovers_from_killed_writes(tmp_path):
    make_brats2021(tmp_path / "data", n=2)
    cases = discover_cases(tmp_path / "data", "brats2021")
    cache = PreprocessedCache(tmp_path / "cache")
    cache.get_or_create(cases, "ds", PARAMS, progress=False)
    key_dir = tmp_path / "cache" / cache.key_for("ds", PARAMS)
    # a killed writer: entry without meta.json, and leftover temp folders (dead local pid; old foreign host)
    (key_dir / "BraTS2021_00000" / "meta.json").unlink()
    host = socket.gethostname().replace(".", "_")
    dead = key_dir / f".tmp-BraTS2021_00002.{host}.{_dead_pid()}.abcd1234"
    foreign = key_dir / ".tmp-BraTS2021_00002.otherhost.1.abcd1234"
    for d in (dead, foreign):
        d.mkdir()
        np.save(d / "image.npy", np.zeros(3))
    old = time.time() - 7 * 3600
    os.utime(foreign, (old, old))
    # a corrupt meta.json is not trusted either
    (key_dir / "BraTS2021_00002" / "meta.json").write_text("{ truncated")
    out = cache.get_or_create(cases, "ds", PARAMS, progress=False)
    assert cache.stats == {"built": 2, "reused": 0}
    assert not dead.exists() and not foreign.exists()
    assert sorted(p.name for p in key_dir.iterdir() if p.name.startswith(".tmp-")) == []
    assert json.loads((key_dir / "BraTS2021_00000" / "meta.json").read_text())["case_id"] == "BraTS2021_00000"
    assert out[0].image.shape[0] == 4


def test_load_dataset_synthetic_max_samples_and_errors(tmp_path):
    kwargs = dict(cache_root=tmp_path / "cache", synthetic_cases=3, synthetic_size=(20, 20, 20), progress=False)
    cases = load_dataset(None, "synthetic", max_samples=2, **kwargs)
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    assert (tmp_path / "cache" / "synthetic" / "n3_s20x20x20_seed0" / "BraTS2021_Training_Data").is_dir()
    assert set(np.unique(np.concatenate([np.asarray(c.label).ravel() for c in cases])).tolist()) <= {0, 1, 2, 3}
    assert all(c.convention == "brats2021" and c.spacing == (1.0, 1.0, 1.0) for c in cases)
    # with a data_path the phantoms go there
    load_dataset(tmp_path / "phantoms", "synthetic", max_samples=1, **kwargs)
    assert (tmp_path / "phantoms" / "BraTS2021_Training_Data" / "BraTS2021_00002").is_dir()
    with pytest.raises(ValueError, match="--data_path is required for --dataset_version brats2021"):
        load_dataset(None, "brats2021", cache_root=tmp_path / "cache")
    with pytest.raises(ValueError, match="--max_samples"):
        load_dataset(None, "synthetic", max_samples=0, **kwargs)
    with pytest.raises(ValueError, match="brats2030.*synthetic"):
        load_dataset(None, "brats2030", cache_root=tmp_path / "cache")


def test_load_dataset_real_layout(tmp_path):
    make_brats2021(tmp_path / "data", n=3)
    cases = load_dataset(tmp_path / "data", "brats2021", cache_root=tmp_path / "cache", max_samples=2,
                         progress=False)
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert cases[0].label is not None and set(np.unique(cases[0].label).tolist()) == {0, 1, 2, 3}


def test_many_cached_cases_fit_under_a_low_open_file_limit(tmp_path):
    """Every cached array is a memory map holding a file descriptor: a full BraTS release (1251 cases,
    two maps each) must not die with 'Too many open files' under the common soft limit of 1024."""
    pytest.importorskip("resource")
    from data_fixtures import BRATS21_FILES, write_split_case

    n = 40
    for i in range(n):
        case_id = f"BraTS2021_{i:05d}"
        write_split_case(tmp_path / "data" / "BraTS2021_Training_Data" / case_id, case_id, "_", BRATS21_FILES,
                         "brats2021", shape=(8, 8, 8), seed=i)
    cases = discover_cases(tmp_path / "data", "brats2021")
    PreprocessedCache(tmp_path / "cache").get_or_create(cases, "ds", PARAMS, progress=False)
    code = (
        "import os, resource, sys\n"
        "from pathlib import Path\n"
        "from dataio.adapters import discover_cases\n"
        "from dataio.cache import PreprocessedCache\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "low = len(os.listdir('/proc/self/fd')) + 30\n"  # room for 15 cases only
        "resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))\n"
        "root = Path(sys.argv[1])\n"
        "cache = PreprocessedCache(root / 'cache')\n"
        "out = cache.get_or_create(discover_cases(root / 'data', 'brats2021'), 'ds',\n"
        "                          {'clip_percentiles': [0.5, 99.5]}, progress=False)\n"
        "assert cache.stats['reused'] == len(out) == 40, cache.stats\n"
        "print(sum(int(c.label.sum() > 0) for c in out))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(n)


def test_concurrent_writer_winning_the_rename_is_not_an_error(tmp_path, monkeypatch):
    """Two processes (e.g. a sweep and an evaluation, or several ranks) may build the same entry; the one
    whose rename finds the other's finished entry in place must use it instead of crashing."""
    import shutil

    import dataio.cache as cache_mod

    make_brats2021(tmp_path / "data", n=1)
    cases = discover_cases(tmp_path / "data", "brats2021")
    real_replace = os.replace

    def racing_replace(src, dst):
        src, dst = Path(src), Path(dst)
        if dst.name == "BraTS2021_00002" and src.name.startswith(".tmp-") and not dst.exists():
            shutil.copytree(src, dst)  # the other writer finishes first
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", racing_replace)
    cache = PreprocessedCache(tmp_path / "cache")
    out = cache.get_or_create(cases, "ds", PARAMS, progress=False)
    assert out[0].case_id == "BraTS2021_00002" and out[0].image.shape[0] == 4
    key_dir = tmp_path / "cache" / cache.key_for("ds", PARAMS)
    assert not [p for p in key_dir.iterdir() if p.name.startswith(".tmp-")]
