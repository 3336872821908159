"""Splits: disjointness, coverage, determinism, patient grouping, file round-trip and validation."""

from __future__ import annotations

import json

import pytest

from dataio.splits import check_disjoint, iter_folds, load_splits, make_splits, save_splits

CASES = [f"case_{i:03d}" for i in range(40)]


def _all_ids(splits: dict) -> set[str]:
    return set(splits["test"]).union(*(set(f["train"]) | set(f["val"]) for f in splits["folds"]))


@pytest.mark.parametrize("use_5fold", [False, True])
def test_disjoint_and_covering(use_5fold: bool) -> None:
    splits = make_splits(list(reversed(CASES)), use_5fold=use_5fold)
    folds = iter_folds(splits)
    assert len(folds) == (5 if use_5fold else 1)
    test = set(splits["test"])
    assert test
    for fold, train, val in folds:
        assert train and val
        assert not set(train) & set(val)
        assert not set(train) & test
        assert not set(val) & test
        # every fold uses every case exactly once across train/val/test
        assert sorted(train + val + splits["test"]) == sorted(CASES)
    assert _all_ids(splits) == set(CASES)
    if use_5fold:
        assert [f for f, _, _ in folds] == list(range(5))
        vals = [v for _, _, vs in folds for v in vs]
        assert sorted(vals) == sorted(set(CASES) - test)  # folds partition the non-test cases
    else:
        assert folds[0][0] is None
        assert len(folds[0][1]) > 0.7 * len(CASES)


def test_deterministic_and_seed_dependent() -> None:
    a = make_splits(CASES, use_5fold=True, split_seed=42)
    b = make_splits(list(reversed(CASES)), use_5fold=True, split_seed=42)
    assert a == b
    c = make_splits(CASES, use_5fold=True, split_seed=7)
    assert c["test"] != a["test"] or c["folds"] != a["folds"]
    json.dumps(a)  # JSON-able


def test_patient_grouping() -> None:
    patients = [f"p{i // 3}" for i in range(len(CASES))]  # three cases per patient
    of = dict(zip(CASES, patients))
    for use_5fold in (False, True):
        splits = make_splits(CASES, patients, use_5fold=use_5fold, split_seed=3)
        for _, train, val in iter_folds(splits):
            for part_a, part_b in ((train, val), (train, splits["test"]), (val, splits["test"])):
                assert not {of[c] for c in part_a} & {of[c] for c in part_b}


def test_too_few_cases() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        make_splits(["a", "b"], use_5fold=False)
    with pytest.raises(ValueError, match="non-test patients"):
        make_splits([f"c{i}" for i in range(5)], use_5fold=True)
    with pytest.raises(ValueError, match="duplicate"):
        make_splits(["a", "a", "b", "c"], use_5fold=False)
    small = make_splits(["a", "b", "c"], use_5fold=False)
    assert len(small["test"]) == 1 and len(small["folds"][0]["train"]) == 1


def test_save_load_round_trip(tmp_path) -> None:
    splits = make_splits(CASES, use_5fold=True)
    path = tmp_path / "splits.json"
    save_splits(path, splits)
    assert load_splits(path, CASES) == splits


def _write(path, obj) -> None:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_bad_user_splits_rejected(tmp_path) -> None:
    good = {"test": ["case_000"], "folds": [{"fold": None, "train": ["case_001"], "val": ["case_002"]}]}
    path = tmp_path / "user_splits.json"
    _write(path, good)
    assert load_splits(path, CASES)["mode"] == "holdout"

    bad_cases = {
        "not json": ("{not json", "not valid JSON"),
        "unknown": ({**good, "test": ["nope_1"]}, "nope_1"),
        "overlap": ({"test": ["case_000"], "folds": [{"fold": 0, "train": ["case_001", "case_002"],
                                                        "val": ["case_002"]}]}, "case_002"),
        "test in train": ({"test": ["case_001"], "folds": good["folds"]}, "case_001"),
        "missing key": ({"folds": good["folds"]}, "test"),
        "missing fold key": ({"test": [], "folds": [{"fold": 0, "train": ["case_001"]}]}, "val"),
    }
    for name, (obj, needle) in bad_cases.items():
        _write(path, obj)
        with pytest.raises(ValueError) as err:
            load_splits(path, CASES)
        assert str(path) in str(err.value), name
        assert needle in str(err.value), name


def test_check_disjoint_detects_overlap() -> None:
    splits = make_splits(CASES, use_5fold=False)
    check_disjoint(splits)
    splits["folds"][0]["val"].append(splits["test"][0])
    with pytest.raises(ValueError, match="val and test"):
        check_disjoint(splits)
