"""A model's own preprocessing (SAM-Med3D: 1.5 mm isotropic, z-normalised foreground): its cache entries, their key,
the default entries every other model shares, and the way back onto the dataset's grid for scoring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import make_brats2021

from dataio.adapters import dataset_info, discover_cases
from dataio.cache import MODEL_KEY, PreprocessedCache, load_dataset
from dataio.model_cache import model_inputs
from dataio.model_preprocess import apply_model_preprocessing, to_dataset_grid
from dataio.types import CachedCase, CropBox
from engine.tasks import task_for
from engine.tasks.own_inputs import OwnInputs
from models import list_models, model_info

SAM = model_info("sam_med3d").preprocessing.params()


def _key_dirs(cache: Path) -> list[dict]:
    return [json.loads((d / "key.json").read_text()) for d in sorted(cache.iterdir()) if (d / "key.json").is_file()]


@pytest.fixture()
def brats(tmp_path: Path):
    make_brats2021(tmp_path / "data", n=2, shape=(24, 20, 16))
    cases = load_dataset(tmp_path / "data", "brats2021", cache_root=tmp_path / "cache", progress=False)
    return tmp_path / "cache", cases


def test_sam_declares_its_own_preprocessing_and_other_models_none() -> None:
    assert SAM == {"target_spacing": [1.5, 1.5, 1.5], "intensity": "zscore_nonzero"}
    others = [m for m in list_models() if m != "sam_med3d" and model_info(m).preprocessing is not None]
    assert others == []


def test_cached_arrays_have_1_5_mm_and_z_normalised_foreground(brats) -> None:
    cache, cases = brats
    case = cases[0]
    own = model_inputs(case, SAM)
    assert own.spacing == (1.5, 1.5, 1.5) and own.case_id == case.case_id
    extent = [(n - 1) * s for n, s in zip(case.image.shape[1:], case.spacing)]
    assert all(abs((m - 1) * 1.5 - e) < 1.5 for m, e in zip(own.image.shape[1:], extent))  # same field of view
    assert own.image.shape[1:] == own.label.shape and own.image.shape[0] == case.image.shape[0]
    for channel in np.asarray(own.image):
        values = channel[channel != 0]
        assert values.size > 0 and abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-3
    assert set(np.unique(own.label)) <= set(np.unique(case.label))  # nearest neighbour: no new label values
    entry = Path(own.image.filename).parent  # memory-mapped from its own cache entry
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["spacing"] == [1.5, 1.5, 1.5] and meta["params"][MODEL_KEY] == SAM


def test_own_key_differs_and_default_models_share_one_entry(brats, tmp_path: Path) -> None:
    cache, cases = brats
    default_key = Path(cases[0].image.filename).parent.parent
    own = model_inputs(cases[0], SAM)
    own_key = Path(own.image.filename).parent.parent
    assert own_key != default_key and own_key.parent == default_key.parent
    keys = _key_dirs(cache)
    assert len(keys) == 2 and sum(MODEL_KEY in k["params"] for k in keys) == 1
    # models without a declaration (two of them here) read the dataset's one entry: loading again builds nothing
    again = PreprocessedCache(cache)
    for name in ("unet3d_xs", "vista3d"):
        assert model_info(name).preprocessing is None
        again.get_or_create(discover_cases(tmp_path / "data", "brats2021"), keys[0]["dataset_id"],
                            next(k["params"] for k in keys if MODEL_KEY not in k["params"]), progress=False)
        assert again.stats == {"built": 0, "reused": 2}
    assert len(_key_dirs(cache)) == 2


def test_own_entry_is_reused_and_rebuilt_when_the_dataset_entry_changes(brats) -> None:
    _, cases = brats
    first = Path(model_inputs(cases[0], SAM).image.filename)
    stamp = first.stat().st_mtime_ns
    assert Path(model_inputs(cases[0], SAM).image.filename).stat().st_mtime_ns == stamp  # reused
    base = Path(cases[0].image.filename)
    np.save(base.with_name("new.npy"), np.asarray(cases[0].image) * 2)  # the dataset's entry was rebuilt ...
    os.replace(base.with_name("new.npy"), base)  # (a new file, as the cache writes them: open maps stay valid)
    rebuilt = model_inputs(PreprocessedCache._read(base.parent), SAM)  # ... so the model's entry follows
    assert Path(rebuilt.image.filename).stat().st_mtime_ns != stamp
    np.testing.assert_allclose(np.asarray(rebuilt.image), apply_model_preprocessing(
        PreprocessedCache._read(base.parent), SAM).image)


def test_cases_not_from_the_cache_are_preprocessed_in_memory(brats) -> None:
    _, cases = brats
    plain = apply_model_preprocessing(cases[0], SAM)
    copy = type(cases[0])(**{**cases[0].__dict__, "image": np.array(cases[0].image)})
    again = model_inputs(copy, SAM)
    assert not hasattr(again.image, "filename") or not again.image.filename
    np.testing.assert_array_equal(np.asarray(again.image), plain.image)


def test_predictions_go_back_to_the_dataset_grid() -> None:
    """A field linear in mm survives the trip model grid -> dataset grid (trilinear is exact on it) inside the
    model grid's extent; the result has the dataset grid's shape."""
    spacing, shape = (0.9, 1.0, 4.5), (20, 18, 7)
    mm = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    field = (0.3 * mm[0] - 0.2 * mm[1] + 0.1 * mm[2]).astype(np.float32)
    case = CachedCase(case_id="c", patient_id="c", image=field[None], label=np.zeros(shape, np.uint8),
                      spacing=spacing, affine=np.eye(4), original_shape=shape,
                      crop=CropBox((0, 0, 0), shape), convention="binary")
    own = apply_model_preprocessing(case, {"target_spacing": [1.5, 1.5, 1.5], "intensity": "none"})
    back = to_dataset_grid(torch.from_numpy(np.asarray(own.image)), own.spacing, spacing, shape)[0].numpy()
    assert back.shape == shape
    inside = tuple(slice(0, int((m - 1) * 1.5 / s) + 1) for m, s in zip(own.image.shape[1:], spacing))
    np.testing.assert_allclose(back[inside], field[inside], atol=1e-3)
    mask = OwnInputs({"target_spacing": [1.5, 1.5, 1.5], "intensity": "none"}).mask_back(
        np.asarray(own.image[0]) > 1.0, own, case)
    assert mask.shape == shape and mask.dtype == bool


def test_the_task_of_sam_med3d_uses_its_preprocessing_and_records_it() -> None:
    task = task_for(model_info("sam_med3d"), dataset_info("synthetic_ich"), loss="sam_med3d")
    assert task.own is not None and task.checkpoint_meta()["input_preprocessing"] == SAM
    plain = task_for(model_info("vista3d"), dataset_info("synthetic_ich"), loss="sam_med3d")
    assert plain.own is None and plain.checkpoint_meta()["input_preprocessing"] is None
