"""Lesion-stratified and fixed-test splits: no all-negative test/validation set when the data allow it,
patients never straddle splits, and ``strata=None`` keeps the split of before, id for id."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataio.splits import check_disjoint, make_splits

IDS = [f"c{i:02d}" for i in range(12)]
PATIENTS = [f"p{i // 2}" if i < 4 else f"p{i}" for i in range(12)]
# make_splits(IDS, PATIENTS, use_5fold=..., split_seed=7) as computed by the code before strata existed
BEFORE = json.loads("""{"holdout": {"split_seed": 7, "mode": "holdout", "test": ["c08"], "folds": [{"fold": null,
 "train": ["c02", "c03", "c04", "c05", "c06", "c07", "c09", "c10", "c11"], "val": ["c00", "c01"]}]},
 "5fold": {"split_seed": 7, "mode": "5fold", "test": ["c08"], "folds": [
 {"fold": 0, "train": ["c02", "c03", "c04", "c05", "c06", "c09", "c10", "c11"], "val": ["c00", "c01", "c07"]},
 {"fold": 1, "train": ["c00", "c01", "c04", "c05", "c06", "c07", "c09", "c10"], "val": ["c02", "c03", "c11"]},
 {"fold": 2, "train": ["c00", "c01", "c02", "c03", "c04", "c05", "c07", "c09", "c11"], "val": ["c06", "c10"]},
 {"fold": 3, "train": ["c00", "c01", "c02", "c03", "c06", "c07", "c09", "c10", "c11"], "val": ["c04", "c05"]},
 {"fold": 4, "train": ["c00", "c01", "c02", "c03", "c04", "c05", "c06", "c07", "c10", "c11"], "val": ["c09"]}]}}""")


@pytest.mark.parametrize("mode", ["holdout", "5fold"])
def test_without_strata_the_split_is_the_one_of_before(mode: str) -> None:
    five = mode == "5fold"
    assert json.dumps(make_splits(IDS, PATIENTS, use_5fold=five, split_seed=7)) == json.dumps(BEFORE[mode])
    # one stratum only (every scan positive, or none): nothing to stratify, the same split
    for value in (0, 1):
        same = make_splits(IDS, PATIENTS, use_5fold=five, split_seed=7, strata=[value] * len(IDS))
        assert json.dumps(same) == json.dumps(BEFORE[mode])


def _patients_of(ids: list[str], patient_of: dict[str, str]) -> set[str]:
    return {patient_of[c] for c in ids}


@pytest.mark.parametrize("n, positive_fraction", [(12, 0.75), (20, 0.2), (30, 0.5), (40, 0.1), (16, 0.9)])
def test_no_all_negative_test_or_validation_set(n: int, positive_fraction: float) -> None:
    ids = [f"s{i:03d}" for i in range(n)]
    patient_of = {c: f"pt{i // 2}" for i, c in enumerate(ids)}  # two scans per patient
    rng = np.random.default_rng(n)
    positive_patients = set(rng.choice(sorted(set(patient_of.values())),
                                       size=max(1, round(positive_fraction * n / 2)), replace=False).tolist())
    # a positive patient has one positive and one negative scan: the patient counts as positive
    strata = [int(patient_of[c] in positive_patients and i % 2 == 0) for i, c in enumerate(ids)]
    n_pos = len(positive_patients)
    for seed in range(8):
        for five in (False, True):
            if five and n // 2 < 7:
                continue
            splits = make_splits(ids, [patient_of[c] for c in ids], use_5fold=five, split_seed=seed, strata=strata)
            check_disjoint(splits)
            positive = lambda part: _patients_of(part, patient_of) & positive_patients  # noqa: E731
            parts = [splits["test"]] + [f["val"] for f in splits["folds"]]
            needed = 1 + (5 if five else 1) + (0 if five else 1)  # test + each validation set (+ train, holdout)
            if n_pos >= needed:
                assert all(positive(p) for p in parts), (seed, five, parts)
            for f in splits["folds"]:  # patients stay whole
                assert not _patients_of(f["train"], patient_of) & _patients_of(f["val"] + splits["test"], patient_of)
                assert positive(f["train"])  # training always sees lesions
            if five:
                vals = [c for f in splits["folds"] for c in f["val"]]
                assert sorted(vals + splits["test"]) == sorted(ids)  # the folds partition the non-test cases
            assert splits["stratified"] is True


def test_minority_positives_still_reach_a_one_case_test_set() -> None:
    ids = [f"s{i:02d}" for i in range(12)]
    strata = [1, 1, 1] + [0] * 9  # 3 positive scans: one for test, one for val, one for training
    for seed in range(20):
        splits = make_splits(ids, None, use_5fold=False, split_seed=seed, strata=strata)
        assert len(splits["test"]) == 1 and strata[ids.index(splits["test"][0])] == 1
        assert any(strata[ids.index(c)] for c in splits["folds"][0]["val"])
        assert sum(strata[ids.index(c)] for c in splits["folds"][0]["train"]) == 1


def test_fixed_test_cases_form_the_test_set_and_the_rest_is_split() -> None:
    ids = [f"s{i:02d}" for i in range(14)]
    fixed = ["s12", "s13"]
    strata = [i % 2 for i in range(14)]
    for five in (False, True):
        splits = make_splits(ids, None, use_5fold=five, split_seed=3, strata=strata, fixed_test=fixed)
        assert splits["test"] == fixed and splits["fixed_test"] is True
        for f in splits["folds"]:
            assert not set(f["train"] + f["val"]) & set(fixed)
            assert any(strata[ids.index(c)] for c in f["val"])
        if not five:
            assert sorted(splits["folds"][0]["train"] + splits["folds"][0]["val"]) == ids[:12]
    plain = make_splits(ids, None, use_5fold=False, split_seed=3, fixed_test=fixed)  # no strata: still fixed
    assert plain["test"] == fixed and plain["stratified"] is False


def test_fixed_test_errors_name_the_patient_or_case() -> None:
    ids = ["a1", "a2", "b1", "c1", "d1"]
    patients = ["A", "A", "B", "C", "D"]
    with pytest.raises(ValueError, match=r"patient A has cases in the test folders \(\['a2'\]\) and outside "
                                         r"them \(\['a1'\]\)"):
        make_splits(ids, patients, use_5fold=False, fixed_test=["a2"])
    with pytest.raises(ValueError, match=r"not in the dataset: \['zz'\]"):
        make_splits(ids, patients, use_5fold=False, fixed_test=["zz"])
    with pytest.raises(ValueError, match="at least 5 patients"):
        make_splits(ids, patients, use_5fold=True, fixed_test=["d1"])
    with pytest.raises(ValueError, match="strata has 2 entries"):
        make_splits(ids, patients, use_5fold=False, strata=[0, 1])


def test_prepare_data_stratifies_binary_data_and_keeps_fixed_test_ids(tmp_path) -> None:
    from dataio.types import CachedCase, CropBox, DatasetInfo, LoadedDataset
    from engine.options.config import parse_config
    from engine.sweep_plan import prepare_data

    def case(i: int, positive: bool, recorded: bool) -> CachedCase:
        label = np.zeros((4, 4, 4), np.uint8)
        label[1, 1, 1] = positive
        return CachedCase(f"s{i:02d}", f"s{i:02d}", np.zeros((1, 4, 4, 4), np.float32), label, (1.0, 1.0, 1.0),
                          np.eye(4), (4, 4, 4), CropBox((0, 0, 0), (4, 4, 4)), "binary", ("ct",),
                          foreground_voxels=int(positive) if recorded else None)

    cases = [case(i, i < 3, recorded=i % 2 == 0) for i in range(12)]  # 3 positives; half without a record
    info = DatasetInfo(name="ich", channels=("ct",), label_kind="binary", region="ich")
    config = parse_config(["--dataset_version", "synthetic_ich", "--output_dir", str(tmp_path)])
    data = prepare_data(config, tmp_path, LoadedDataset(info=info, cases=cases))
    assert data.splits["stratified"] is True
    assert data.splits["test"][0] in {"s00", "s01", "s02"}
    data = prepare_data(config, tmp_path, LoadedDataset(info=info, cases=cases, test_ids=("s10", "s11")))
    assert data.splits["test"] == ["s10", "s11"]
