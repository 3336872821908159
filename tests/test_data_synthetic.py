"""Synthetic phantoms: determinism, idempotence, regeneration, argument checks and contrast sanity."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from dataio.adapters import discover_cases
from dataio.synthetic import MANIFEST_NAME, ensure_synthetic_brats, make_phantom

SIZE = (24, 24, 24)
FILES = ("t1", "t1ce", "t2", "flair", "seg")


def _read(root, index=0):
    case = f"BraTS2021_{index:05d}"
    folder = root / "BraTS2021_Training_Data" / case
    return {s: np.asarray(nib.load(str(folder / f"{case}_{s}.nii.gz")).dataobj) for s in FILES}


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_different_seed_differs(tmp_path):
    a = _read(ensure_synthetic_brats(tmp_path / "a", n_cases=2, size=SIZE, seed=3), 1)
    b = _read(ensure_synthetic_brats(tmp_path / "b", n_cases=2, size=SIZE, seed=3), 1)
    c = _read(ensure_synthetic_brats(tmp_path / "c", n_cases=2, size=SIZE, seed=4), 1)
    for s in FILES:
        np.testing.assert_array_equal(a[s], b[s])
    assert not np.array_equal(a["flair"], c["flair"])
    assert not np.array_equal(a["seg"], c["seg"])


def test_layout_affine_and_labels(tmp_path):
    root = ensure_synthetic_brats(tmp_path, n_cases=2, size=SIZE, seed=0)
    cases = discover_cases(root, "synthetic")
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    img = nib.load(str(cases[0].images["t1"]))
    np.testing.assert_allclose(img.affine, np.eye(4))
    assert img.shape == SIZE and str(cases[0].images["t1"]).endswith(".nii.gz")
    seg = np.asarray(nib.load(str(cases[0].label)).dataobj)
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
    t1 = np.asarray(img.dataobj)
    assert t1[0, 0, 0] == 0 and t1[12, 12, 12] > 0  # 0 outside the head, signal inside


def test_second_call_rewrites_nothing_and_partial_set_is_regenerated(tmp_path):
    ensure_synthetic_brats(tmp_path, n_cases=2, size=SIZE, seed=0)
    before = _mtimes(tmp_path)
    ensure_synthetic_brats(tmp_path, n_cases=2, size=SIZE, seed=0)
    assert _mtimes(tmp_path) == before
    # a killed run: a case file is missing -> everything regenerated, identical content
    victim = tmp_path / "BraTS2021_Training_Data" / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz"
    expected = _read(tmp_path, 1)
    victim.unlink()
    ensure_synthetic_brats(tmp_path, n_cases=2, size=SIZE, seed=0)
    np.testing.assert_array_equal(_read(tmp_path, 1)["t2"], expected["t2"])


def test_different_parameters_replace_the_set(tmp_path):
    ensure_synthetic_brats(tmp_path, n_cases=3, size=SIZE, seed=0)
    ensure_synthetic_brats(tmp_path, n_cases=2, size=(16, 20, 24), seed=0)
    cases = discover_cases(tmp_path, "synthetic")
    assert len(cases) == 2  # the third case folder of the old set is gone
    assert nib.load(str(cases[1].images["flair"])).shape == (16, 20, 24)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["n_cases"] == 2 and manifest["size"] == [16, 20, 24] and manifest["seed"] == 0


def test_refuses_to_overwrite_foreign_case_folders(tmp_path):
    foreign = tmp_path / "BraTS2021_Training_Data" / "BraTS2021_00000"
    foreign.mkdir(parents=True)
    (foreign / "BraTS2021_00000_t1.nii.gz").write_bytes(b"real data")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        ensure_synthetic_brats(tmp_path, n_cases=1, size=SIZE)
    assert (foreign / "BraTS2021_00000_t1.nii.gz").read_bytes() == b"real data"


@pytest.mark.parametrize("kwargs, flag", [
    ({"n_cases": 0}, "--synthetic_cases"), ({"size": (64, 15, 64)}, "--synthetic_size"),
    ({"size": (32, 32)}, "--synthetic_size"), ({"seed": -1}, "--synthetic_seed")])
def test_bad_arguments_name_the_flag(tmp_path, kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        ensure_synthetic_brats(tmp_path, **kwargs)


def test_contrasts_and_label_classes():
    """Pooled over a few 48^3 phantoms, the tissue contrasts the models are meant to learn hold."""
    flair_ed, flair_brain, t1ce_et, t1ce_ncr, t2_ncr, t2_brain, present = [], [], [], [], [], [], set()
    for i in range(3):
        images, seg = make_phantom((48, 48, 48), np.random.default_rng([0, i]))
        present |= set(np.unique(seg).tolist())
        normal = (seg == 0) & (images["t1"] > 0)
        flair_ed.append(images["flair"][seg == 2].mean())
        flair_brain.append(images["flair"][normal].mean())
        t1ce_et.append(images["t1ce"][seg == 4].mean())
        t1ce_ncr.append(images["t1ce"][seg == 1].mean())
        t2_ncr.append(images["t2"][seg == 1].mean())
        t2_brain.append(images["t2"][normal].mean())
    assert present == {0, 1, 2, 4}
    assert np.mean(flair_ed) > 1.3 * np.mean(flair_brain)
    assert np.mean(t1ce_et) > 1.3 * np.mean(t1ce_ncr)
    assert np.mean(t2_ncr) > np.mean(t2_brain)


def test_small_lesion_case_and_anisotropic_size():
    _, seg = make_phantom((64, 64, 64), np.random.default_rng([0, 3]), small=True)
    assert 100 <= np.count_nonzero(seg) <= 1000
    images, seg = make_phantom((40, 28, 20), np.random.default_rng([0, 1]))
    assert seg.shape == (40, 28, 20) and all(a.shape == (40, 28, 20) for a in images.values())
    assert np.count_nonzero(seg) > 0
