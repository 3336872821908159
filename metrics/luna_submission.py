"""LUNA16's evaluation of a submission CSV (noduleCADEvaluationLIDC.py), computed by volbench's FROC code.

Files (comma-separated, as the challenge distributes them; coordinates are world mm, LPS, used as given: a
distance is the same in any orientation):
- annotations / excluded findings: header ``seriesuid,coordX,coordY,coordZ,diameter_mm`` (extra columns ignored);
- submission candidates: header ``seriesuid,coordX,coordY,coordZ,probability`` (extra columns ignored);
- series list (``seriesuids.csv``): one seriesuid per line, NO header row (first field of a line; blank lines
  skipped).

Rules (the script's): at most ``MAX_MARKS_PER_SERIES`` marks per series: when a series has more, the
(cap + 1)-th highest probability is a threshold and the marks strictly above it are kept, in file order (ties at
the threshold can leave fewer); a mark hits a nodule when its squared distance to the centre is strictly below
(diameter / 2)^2, a diameter below 0 counting as 10 mm; a mark hitting no nodule but an excluded finding is
ignored; FROC as ``metrics.froc`` computes it, with every listed series (with or without candidates or nodules)
in the FPs-per-scan denominator. Candidates and annotations of series not in the list are ignored (logged).

One code path with the sweep: each series becomes a ``CaseBoxes`` (``luna_cases``) scored by
``metrics.froc.froc_metrics(rule="radius")``. Scores: ``CaseBoxes`` holds float32; when two distinct
probabilities would round to the same float32, the probabilities are replaced by their dense ranks (FROC
depends only on the order and ties of the scores, so the values are the float64 script's). Predicted boxes are
zero-size placeholders at each mark (float32 world mm): rule radius reads only the centres.

Hand-written: the script is not an importable library (and needs SimpleITK-era helpers); its loops are ported
literally in tests/test_luna_froc.py and compared with this module.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from typing import Sequence, Union

import numpy as np

from utils.schema import SUBMISSION_FILES

from .froc import froc_metrics
from .lesions import CaseBoxes, case_hits, case_ignored

logger = logging.getLogger(__name__)

__all__ = ["ANNOTATION_COLUMNS", "CANDIDATE_COLUMNS", "LUNA_COUNT_KEYS", "MAX_MARKS_PER_SERIES", "cap_marks",
           "luna_cases", "luna_froc", "read_annotations", "read_candidates", "read_series"]

ANNOTATION_COLUMNS: tuple[str, ...] = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS: tuple[str, ...] = SUBMISSION_FILES["luna_candidates"][1]  # the run files volbench writes
MAX_MARKS_PER_SERIES = 100  # the script's maxNumberOfCADMarks
LUNA_COUNT_KEYS: tuple[str, ...] = ("n_series", "n_nodules", "n_candidates", "nodules_found", "ignored_candidates")

Mark = tuple[float, float, float, float]  # (x, y, z, diameter_mm or probability), world mm
PathLike = Union[str, "os.PathLike[str]"]


def _read_table(path: PathLike, columns: Sequence[str]) -> dict[str, list[Mark]]:
    """Rows of a headed CSV grouped by seriesuid in file order: (x, y, z, last column) as floats."""
    out: dict[str, list[Mark]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{os.fspath(path)}: missing column(s) {missing}; header is {header}, "
                             f"expected {list(columns)}")
        index = [header.index(c) for c in columns]
        for line, row in enumerate(reader, start=2):
            if not any(field.strip() for field in row):
                continue
            if len(row) <= max(index):
                raise ValueError(f"{os.fspath(path)}, line {line}: {len(row)} fields, the header has {len(header)}")
            values = [_number(path, line, c, row[i]) for c, i in zip(columns[1:], index[1:])]
            out.setdefault(row[index[0]].strip(), []).append((values[0], values[1], values[2], values[3]))
    return out


def _number(path: PathLike, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{os.fspath(path)}, line {line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{os.fspath(path)}, line {line}: {column} {text!r} is not finite")
    return value


def read_annotations(path: PathLike) -> dict[str, list[Mark]]:
    """LUNA16 annotations (or excluded findings): ``{seriesuid: [(x, y, z, diameter_mm), ...]}`` in file order.

    ValueError naming the file for a missing column or an unparsable / non-finite number.
    """
    return _read_table(path, ANNOTATION_COLUMNS)


def read_series(path: PathLike) -> list[str]:
    """The series of ``seriesuids.csv`` (one uid per line, no header row; first field; blank lines skipped).

    ValueError naming the file when it lists no series, lists one twice (the script would count it twice), or
    starts with a ``seriesuid`` header line.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        series = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    if not series:
        raise ValueError(f"{os.fspath(path)}: the series list is empty")
    if series[0] == ANNOTATION_COLUMNS[0]:
        raise ValueError(f"{os.fspath(path)}: line 1 is the header {series[0]!r}; seriesuids.csv has no header row")
    seen: set[str] = set()
    twice = [s for s in series if s in seen or seen.add(s)]
    if twice:
        raise ValueError(f"{os.fspath(path)}: series listed more than once: {sorted(set(twice))[:5]}")
    return series


def cap_marks(marks: Sequence[Mark], max_marks: int = MAX_MARKS_PER_SERIES) -> list[Mark]:
    """The script's cap on one series' marks (x, y, z, probability): all of them when at most ``max_marks``;
    else the ``max_marks + 1``-th highest probability is a threshold and the marks strictly above it are kept, in
    their order, at most ``max_marks`` (ties at the threshold can leave fewer)."""
    if max_marks < 1:
        raise ValueError(f"max_marks must be >= 1, got {max_marks}")
    if len(marks) <= max_marks:
        return list(marks)
    threshold = sorted((m[3] for m in marks), reverse=True)[max_marks]
    return [m for m in marks if m[3] > threshold][:max_marks]


def read_candidates(path: PathLike, *, max_marks: int = MAX_MARKS_PER_SERIES) -> dict[str, list[Mark]]:
    """Submission candidates: ``{seriesuid: [(x, y, z, probability), ...]}`` in file order, each series capped by
    :func:`cap_marks`. ValueError naming the file for a missing column or an unparsable / non-finite number."""
    table = _read_table(path, CANDIDATE_COLUMNS)
    capped = {uid: cap_marks(marks, max_marks) for uid, marks in table.items()}
    dropped = sum(len(table[uid]) - len(capped[uid]) for uid in table)
    if dropped:
        logger.info("%s: %d marks above %d per series dropped (LUNA16's cap)", os.fspath(path), dropped, max_marks)
    return capped


def _scores(probabilities: np.ndarray) -> np.ndarray:
    """float32 scores in the order (and with the ties) of the float64 ``probabilities`` (module docstring)."""
    scores = probabilities.astype(np.float32)
    distinct, ranks = np.unique(probabilities, return_inverse=True)
    if np.unique(scores).size == distinct.size:
        return scores
    logger.info("luna: distinct probabilities round to one float32; scoring by their dense ranks instead")
    return ranks.reshape(-1).astype(np.float32)


def luna_cases(candidates: dict[str, list[Mark]], annotations: dict[str, list[Mark]],
               excluded: dict[str, list[Mark]], series: Sequence[str]) -> list[CaseBoxes]:
    """One ``CaseBoxes`` per listed series, in list order: marks (``pred_centres``, scores), nodules
    (``gt_centres``, ``gt_diameters``), excluded findings; no boxes to match (``gt_boxes`` empty)."""
    for name, table in (("candidates", candidates), ("annotations", annotations), ("excluded findings", excluded)):
        unlisted = set(table) - set(series)
        if unlisted:
            log = logger.warning if name == "candidates" else logger.info
            log("luna: %d %s of %d series not in the series list ignored", sum(len(table[u]) for u in unlisted),
                name, len(unlisted))
    marks = [np.asarray(candidates.get(uid, []), dtype=np.float64).reshape(-1, 4) for uid in series]
    scores = np.split(_scores(np.concatenate([m[:, 3] for m in marks])), np.cumsum([len(m) for m in marks])[:-1])
    cases = []
    for uid, mark, score in zip(series, marks, scores):
        nodules = np.asarray(annotations.get(uid, []), dtype=np.float64).reshape(-1, 4)
        other = np.asarray(excluded.get(uid, []), dtype=np.float64).reshape(-1, 4)
        cases.append(CaseBoxes(uid, np.hstack([mark[:, :3]] * 2), score, np.zeros((0, 6)),
                               pred_centres=mark[:, :3], gt_centres=nodules[:, :3], gt_diameters=nodules[:, 3],
                               excluded_centres=other[:, :3], excluded_diameters=other[:, 3]))
    return cases


def luna_froc(candidates_csv: PathLike, annotations_csv: PathLike, excluded_csv: PathLike,
              series_csv: PathLike) -> dict[str, float | int]:
    """LUNA16's FROC of a submission: ``metrics.froc.FROC_KEYS`` (``froc_fp0.125`` ... ``froc_fp8``,
    ``froc_cpm``; NaN without nodules) and the counts ``LUNA_COUNT_KEYS``: listed series, their nodules, their
    candidates after the cap, nodules hit by a candidate, candidates ignored on excluded findings."""
    series = read_series(series_csv)
    cases = luna_cases(read_candidates(candidates_csv), read_annotations(annotations_csv),
                       read_annotations(excluded_csv), series)
    out: dict[str, float | int] = dict(froc_metrics(cases, rule="radius"))
    out.update(n_series=len(series), n_nodules=sum(len(c.gt_centres) for c in cases),
               n_candidates=sum(len(c.pred_scores) for c in cases),
               nodules_found=sum(int(case_hits(c, rule="radius").any(axis=0).sum()) for c in cases),
               ignored_candidates=sum(int(case_ignored(c, rule="radius").sum()) for c in cases))
    return out

