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
) -> dict[str, Any]:
    """Build the patient-grouped splits described in the module docstring.

    Args:
        case_ids: unique case names.
        patient_ids: patient of each case (same order as ``case_ids``); ``None``: one patient per case.
        use_5fold: ``n_folds``-fold cross-validation on the non-test patients instead of one holdout.
        split_seed: seed of the patient shuffle (independent of the training seed).
        n_folds: number of folds when ``use_5fold``.

    Raises:
        ValueError: duplicate case ids, length mismatch, fewer than 3 cases or patients, or fewer
            non-test patients than folds.
    """
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
