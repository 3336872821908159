"""Train/val/test splits and 5-fold cross-validation folds, grouped by patient.

Conventions:
- Splits depend only on the case ids, the patient ids and ``split_seed`` (never on the training
  seed or the model), so every model of a sweep sees exactly the same cases.
- The cases of one patient never straddle train/val/test (nor two folds).
- Patients are shuffled with ``numpy.random.default_rng(split_seed)``; 10% of the patients
  (at least 1) form the test set. Holdout: 10% of all patients (at least 1) validate and the rest
  (~80%) train. 5-fold: the non-test patients are partitioned by scikit-learn's ``KFold`` into
  ``n_folds`` folds; fold k validates on part k and trains on the others. Test cases are never
  trained on in any fold.
- Case id lists in the result are sorted.
- Optional lesion strata (``strata``: one integer per case, e.g. 1 = the scan holds a lesion; a patient
  takes the largest value of its scans, so a patient is positive if any of its scans is). With two or more
  strata among the patients, each part is drawn per stratum from the same shuffled order: the test set and
  the validation set first get one patient of every stratum that has enough patients left (holdout: more
  than 2 before the test draw, i.e. one each for test, validation and training; 5-fold: more than
  ``n_folds``), higher strata first, then the rest of the part in proportion to the strata; the 5-fold
  folds deal the non-test patients round-robin over the strata (highest first), so a stratum with at least
  ``n_folds`` patients is in every fold's validation set. So no test or validation set is all negative
  when the data allow it. One stratum, or ``strata=None``: the unstratified split above, unchanged.
- Optional fixed test cases (``fixed_test``, e.g. separate test folders): they are the test set; train,
  validation and folds are drawn from the other patients only (holdout validation: 1/9 of them, at least 1,
  i.e. 10% of a 90% remainder). A patient with cases both in ``fixed_test`` and outside it is an error.

The split dict (JSON-able)::

    {"split_seed": 42, "mode": "5fold" | "holdout", "test": [...],
     "folds": [{"fold": 0, "train": [...], "val": [...]}, ...]}   # holdout: one entry, "fold": null
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)

TEST_FRACTION = 0.1
VAL_FRACTION = 0.1
MIN_CASES = 3


def make_splits(
    case_ids: list[str],
    patient_ids: list[str] | None = None,
    *,
    use_5fold: bool,
    split_seed: int = 42,
    n_folds: int = 5,
    strata: list[int] | None = None,
    fixed_test: list[str] | None = None,
) -> dict[str, Any]:
    """Build the patient-grouped splits described in the module docstring.

    Args:
        case_ids: unique case names.
        patient_ids: patient of each case (same order as ``case_ids``); ``None``: one patient per case.
        use_5fold: ``n_folds``-fold cross-validation on the non-test patients instead of one holdout.
        split_seed: seed of the patient shuffle (independent of the training seed).
        n_folds: number of folds when ``use_5fold``.
        strata: stratum of each case (same order as ``case_ids``), e.g. 1 if it holds a lesion, else 0;
            ``None``: no stratification.
        fixed_test: case ids forming the test set; ``None`` or empty: the test set is drawn.

    Raises:
        ValueError: duplicate case ids, length mismatch, fewer than 3 cases or patients, or fewer
            non-test patients than folds; unknown ``fixed_test`` ids or a patient on both sides of them.
    """
    if strata is not None or fixed_test:
        general = _make_general_splits(case_ids, patient_ids, use_5fold=use_5fold, split_seed=split_seed,
                                       n_folds=n_folds, strata=strata, fixed_test=fixed_test)
        if general is not None:
            return general
    groups = _group_by_patient(case_ids, patient_ids)
    n_pat = len(groups)
    if len(case_ids) < MIN_CASES or n_pat < MIN_CASES:
        raise ValueError(
            f"splits need at least {MIN_CASES} cases from {MIN_CASES} patients (train, val and test "
            f"each need one), got {len(case_ids)} cases from {n_pat} patients"
        )
    patients = sorted(groups)
    order = np.random.default_rng(split_seed).permutation(n_pat)
    shuffled = [patients[i] for i in order]
    n_test = max(1, int(round(TEST_FRACTION * n_pat)))
    test_pat, rest = shuffled[:n_test], shuffled[n_test:]

    def cases_of(pats: list[str]) -> list[str]:
        return sorted(c for p in pats for c in groups[p])

    folds: list[dict[str, Any]] = []
    if use_5fold:
        if n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {n_folds}")
        if len(rest) < n_folds:
            raise ValueError(
                f"{n_folds}-fold cross-validation needs at least {n_folds} non-test patients, got "
                f"{len(rest)} ({n_pat} patients, {n_test} held out for test); use fewer folds or "
                f"more cases"
            )
        # Patients are already shuffled with split_seed, so KFold itself does not shuffle.
        for k, (tr, va) in enumerate(KFold(n_splits=n_folds, shuffle=False).split(rest)):
            folds.append({"fold": k, "train": cases_of([rest[i] for i in tr]),
                          "val": cases_of([rest[i] for i in va])})
    else:
        n_val = min(max(1, int(round(VAL_FRACTION * n_pat))), len(rest) - 1)
        folds.append({"fold": None, "train": cases_of(rest[n_val:]), "val": cases_of(rest[:n_val])})
    splits = {"split_seed": int(split_seed), "mode": "5fold" if use_5fold else "holdout",
              "test": cases_of(test_pat), "folds": folds}
    check_disjoint(splits)
    logger.info("splits (%s, seed %d): %d test, folds train/val sizes %s", splits["mode"], split_seed,
                len(splits["test"]), [(len(f["train"]), len(f["val"])) for f in folds])
    return splits


def _patient_strata(groups: dict[str, list[str]], case_ids: list[str], strata: list[int] | None) -> dict[str, int]:
    if strata is None:
        return {p: 0 for p in groups}
    if len(strata) != len(case_ids):
        raise ValueError(f"strata has {len(strata)} entries but case_ids has {len(case_ids)}")
    of_case = {str(c): int(s) for c, s in zip(case_ids, strata)}
    return {p: max(of_case[c] for c in cases) for p, cases in groups.items()}


def _draw(order: list[str], stratum: dict[str, int], n: int, reserve: int) -> list[str]:
    """``n`` patients of ``order`` (kept in that order): one of every stratum with more than ``reserve``
    patients (higher strata first, while ``n`` allows), the rest in proportion to the strata sizes."""
    by: dict[int, list[str]] = {}
    for p in order:
        by.setdefault(stratum[p], []).append(p)
    if len(by) == 1:
        return order[:n]
    take = {s: 0 for s in by}
    for s in sorted(by, reverse=True):
        if len(by[s]) > reserve and sum(take.values()) < n:
            take[s] = 1
    while sum(take.values()) < n:
        open_ = [s for s in by if take[s] < len(by[s])]
        s = max(open_, key=lambda k: (n * len(by[k]) / len(order) - take[k], k))
        take[s] += 1
    chosen = {p for s, pats in by.items() for p in pats[:take[s]]}
    return [p for p in order if p in chosen]


def _deal_folds(rest: list[str], stratum: dict[str, int], n_folds: int) -> list[list[str]]:
    """Validation patients of each fold: contiguous KFold parts for one stratum (as unstratified), else the
    patients dealt round-robin over the strata, highest stratum first."""
    if len({stratum[p] for p in rest}) == 1:
        return [[rest[i] for i in va] for _, va in KFold(n_splits=n_folds, shuffle=False).split(rest)]
    sequence = [p for s in sorted({stratum[p] for p in rest}, reverse=True) for p in rest if stratum[p] == s]
    return [[p for i, p in enumerate(sequence) if i % n_folds == k] for k in range(n_folds)]


def _make_general_splits(case_ids: list[str], patient_ids: list[str] | None, *, use_5fold: bool, split_seed: int,
                         n_folds: int, strata: list[int] | None, fixed_test: list[str] | None
                         ) -> dict[str, Any] | None:
    """Stratified and/or fixed-test splits (module docstring); ``None`` when neither applies (one stratum and
    no fixed test), so that the caller makes the unstratified split, unchanged."""
    groups = _group_by_patient(case_ids, patient_ids)
    stratum = _patient_strata(groups, case_ids, strata)
    if not fixed_test and len(set(stratum.values())) < 2:
        return None
    if use_5fold and n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if fixed_test:
        known = set(map(str, case_ids))
        unknown = sorted(set(map(str, fixed_test)) - known)
        if unknown:
            raise ValueError(f"fixed test cases not in the dataset: {unknown[:10]}")
        test_cases = set(map(str, fixed_test))
        test_pat = sorted(p for p, cs in groups.items() if any(c in test_cases for c in cs))
        straddle = [p for p in test_pat if not all(c in test_cases for c in groups[p])]
        if straddle:
            p = straddle[0]
            inside = sorted(c for c in groups[p] if c in test_cases)
            outside = sorted(c for c in groups[p] if c not in test_cases)
            raise ValueError(f"patient {p} has cases in the test folders ({inside[:5]}) and outside them "
                             f"({outside[:5]}); a patient "
                             "must stay in one split (check --patient_regex or move the files)")
        pool = sorted(p for p in groups if p not in set(test_pat))
        need = n_folds if use_5fold else 2
        if len(pool) < need:
            what = f"{n_folds}-fold cross-validation needs" if use_5fold else "training and validation need"
            raise ValueError(f"besides the {len(test_cases)} fixed test cases, {what} at least {need} patients, "
                             f"got {len(pool)}")
        rest = [pool[i] for i in np.random.default_rng(split_seed).permutation(len(pool))]
        n_val = min(max(1, int(round(VAL_FRACTION / (1.0 - TEST_FRACTION) * len(pool)))), len(rest) - 1)
    else:
        n_pat = len(groups)
        if len(case_ids) < MIN_CASES or n_pat < MIN_CASES:
            raise ValueError(
                f"splits need at least {MIN_CASES} cases from {MIN_CASES} patients (train, val and test "
                f"each need one), got {len(case_ids)} cases from {n_pat} patients")
        patients = sorted(groups)
        shuffled = [patients[i] for i in np.random.default_rng(split_seed).permutation(n_pat)]
        n_test = max(1, int(round(TEST_FRACTION * n_pat)))
        test_pat = _draw(shuffled, stratum, n_test, reserve=n_folds if use_5fold else 2)
        rest = [p for p in shuffled if p not in set(test_pat)]
        if use_5fold and len(rest) < n_folds:
            raise ValueError(
                f"{n_folds}-fold cross-validation needs at least {n_folds} non-test patients, got "
                f"{len(rest)} ({n_pat} patients, {n_test} held out for test); use fewer folds or more cases")
        n_val = min(max(1, int(round(VAL_FRACTION * n_pat))), len(rest) - 1)

    def cases_of(pats: list[str]) -> list[str]:
        return sorted(c for p in pats for c in groups[p])

    vals = _deal_folds(rest, stratum, n_folds) if use_5fold else [_draw(rest, stratum, n_val, reserve=1)]
    folds: list[dict[str, Any]] = []
    for k, val in enumerate(vals):
        chosen = set(val)
        folds.append({"fold": k if use_5fold else None, "train": cases_of([p for p in rest if p not in chosen]),
                      "val": cases_of(val)})
    splits = {"split_seed": int(split_seed), "mode": "5fold" if use_5fold else "holdout",
              "test": cases_of(test_pat), "folds": folds,
              "stratified": len(set(stratum.values())) > 1, "fixed_test": bool(fixed_test)}
    check_disjoint(splits)
    logger.info("splits (%s, seed %d%s%s): %d test, folds train/val sizes %s; positive patients in test %d, "
                "in each validation set %s", splits["mode"], split_seed,
                ", stratified" if splits["stratified"] else "", ", fixed test" if fixed_test else "",
                len(splits["test"]), [(len(f["train"]), len(f["val"])) for f in folds],
                sum(stratum[p] > 0 for p in test_pat), [sum(stratum[p] > 0 for p in val) for val in vals])
    return splits


def _group_by_patient(case_ids: list[str], patient_ids: list[str] | None) -> dict[str, list[str]]:
    if patient_ids is None:
        patient_ids = list(case_ids)
    if len(patient_ids) != len(case_ids):
        raise ValueError(f"patient_ids has {len(patient_ids)} entries but case_ids has {len(case_ids)}")
    dupes = sorted(c for c, n in Counter(case_ids).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate case ids: {dupes[:10]}")
    groups: dict[str, list[str]] = {}
    for case, patient in sorted(zip(case_ids, patient_ids)):
        groups.setdefault(str(patient), []).append(str(case))
    return groups


def iter_folds(splits: dict[str, Any]) -> list[tuple[int | None, list[str], list[str]]]:
    """``(fold index or None for holdout, train ids, val ids)`` for each fold of ``splits``."""
    return [(f["fold"], list(f["train"]), list(f["val"])) for f in splits["folds"]]


def check_disjoint(splits: dict[str, Any], source: str = "splits") -> None:
    """Raise ``ValueError`` if any case is in two of train/val/test of one fold, or listed twice.

    ``source`` names the origin (e.g. a file path) in the message.
    """
    test = list(splits["test"])
    for f in splits["folds"]:
        parts = {"train": list(f["train"]), "val": list(f["val"]), "test": test}
        for name, ids in parts.items():
            if len(set(ids)) != len(ids):
                dup = sorted(c for c, n in Counter(ids).items() if n > 1)
                raise ValueError(f"{source}: fold {f['fold']} {name} lists cases twice: {dup[:10]}")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = sorted(set(parts[a]) & set(parts[b]))
            if both:
                raise ValueError(f"{source}: fold {f['fold']} has cases in both {a} and {b}: {both[:10]}")


def save_splits(path: str | os.PathLike[str], splits: dict[str, Any]) -> None:
    """Write ``splits`` as JSON atomically."""
    check_disjoint(splits)
    atomic_write_json(path, splits)


def load_splits(path: str | os.PathLike[str], available_case_ids: list[str] | None = None) -> dict[str, Any]:
    """Read and validate a splits JSON file (e.g. user-supplied).

    Checks: valid JSON; keys ``test`` and ``folds`` (a non-empty list of objects with ``fold``,
    ``train``, ``val``; lists of strings; non-empty train and val); no case in two parts of a fold;
    every id in ``available_case_ids`` when given. ``mode`` and ``split_seed`` are filled in
    (inferred mode, seed ``None``) when absent.

    Raises:
        ValueError: naming the file and the offending keys or case ids.
    """
    src = Path(path)
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"splits file {src} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"splits file {src} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"splits file {src}: top level must be an object, got {type(data).__name__}")
    missing = [k for k in ("test", "folds") if k not in data]
    if missing:
        raise ValueError(f"splits file {src}: missing keys {missing}")
    if not isinstance(data["folds"], list) or not data["folds"]:
        raise ValueError(f"splits file {src}: 'folds' must be a non-empty list")
    _check_id_list(data["test"], f"splits file {src}: 'test'")
    for i, f in enumerate(data["folds"]):
        if not isinstance(f, dict):
            raise ValueError(f"splits file {src}: folds[{i}] must be an object")
        miss = [k for k in ("fold", "train", "val") if k not in f]
        if miss:
            raise ValueError(f"splits file {src}: folds[{i}] is missing keys {miss}")
        for part in ("train", "val"):
            _check_id_list(f[part], f"splits file {src}: folds[{i}] '{part}'")
            if not f[part]:
                raise ValueError(f"splits file {src}: folds[{i}] '{part}' is empty")
    check_disjoint(data, source=f"splits file {src}")
    if available_case_ids is not None:
        known = set(available_case_ids)
        listed = set(data["test"]).union(*(set(f["train"]) | set(f["val"]) for f in data["folds"]))
        unknown = sorted(listed - known)
        if unknown:
            raise ValueError(f"splits file {src}: {len(unknown)} case ids not in the dataset: {unknown[:10]}")
    data.setdefault("mode", "holdout" if len(data["folds"]) == 1 and data["folds"][0]["fold"] is None
                    else "5fold")
    data.setdefault("split_seed", None)
    return data


def _check_id_list(value: Any, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of case id strings")


def given_splits(folds: list[tuple[list[str], list[str]]], test: list[str], source: str) -> dict[str, Any]:
    """The split a dataset fixes itself (nnU-Net's ``splits_final.json``, a MONAI datalist's ``fold`` keys), in the
    format of :func:`make_splits`: fold k trains on ``folds[k][0]`` and validates on ``folds[k][1]``, taken as given
    (no patient grouping is imposed), and ``test`` is the fixed test set. ``mode`` is ``5fold`` whatever the fold
    count; ``split_seed`` is ``None``; ``given_by`` records ``source``. Case id lists are sorted.

    Raises:
        ValueError: naming ``source``: no folds, an empty train or val list, a case in two parts of a fold.
    """
    if not folds:
        raise ValueError(f"{source}: no folds")
    out = []
    for k, (train, val) in enumerate(folds):
        if not train or not val:
            raise ValueError(f"{source}: fold {k} has {len(train)} training and {len(val)} validation cases; "
                             "both need at least one")
        out.append({"fold": k, "train": sorted(train), "val": sorted(val)})
    splits = {"split_seed": None, "mode": "5fold", "test": sorted(test), "folds": out, "given_by": source}
    check_disjoint(splits, source=source)
    logger.info("folds given by %s: %d folds, train/val sizes %s, %d test cases", source, len(out),
                [(len(f["train"]), len(f["val"])) for f in out], len(test))
    return splits
