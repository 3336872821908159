"""BraTS lesion-wise Dice and HD95 per region (the metric the BraTS 2023 challenges rank by), per test case.

Rules (``metrics.lesionwise.lesionwise_scores``): 26-connected reference lesions (those closer than the dilation
merge into one, as in the BraTS 2023 code), each dilated
``dilation`` times for matching; predicted components touching a dilated lesion are its match; missed
lesions and false-positive components score Dice 0 and HD95 ``hd95_penalty`` mm and count in the
denominator; reference lesions of ``min_lesion_size`` voxels or fewer are dropped. Columns per region r:
``lesion_dice_r``, ``lesion_hd95_r`` (means over cases in the run table), and per case ``lesions_r``
(reference lesions kept) and ``lesion_fp_r`` (false-positive components).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataio.types import CachedCase
from metrics.lesionwise import lesionwise_scores
from metrics.regions import MetricSpec, region_mask

from engine.tasks.flags import TaskFlag

LESIONWISE_METRICS = ("lesion_dice", "lesion_hd95")


@dataclass(frozen=True)
class LesionwiseSettings:
    """BraTS 2023 lesion-wise matching (voxels, mm); see the module docstring."""

    dilation: int = 3
    min_lesion_size: int = 50
    hd95_penalty: float = 374.0

    @classmethod
    def of(cls, options: Any) -> "LesionwiseSettings":
        """From the lesion flags (``--lesionwise_dilation``, ``--lesionwise_min_size``); defaults for ``None``."""
        if options is None:
            return cls()
        return cls(dilation=int(options.lesionwise_dilation), min_lesion_size=int(options.lesionwise_min_size))


# the flags of the lesion-wise rules (fields of engine.options.lesion_options.LesionOptions), owned by BraTS
LESIONWISE_FLAGS: tuple[TaskFlag, ...] = (
    TaskFlag("lesionwise_dilation", LesionwiseSettings.dilation,
             "BraTS lesion-wise metrics: dilations of each reference lesion for matching", dict(type=int)),
    TaskFlag("lesionwise_min_size", LesionwiseSettings.min_lesion_size, "BraTS lesion-wise metrics: reference lesions "
             "of this many voxels or fewer are dropped", dict(type=int, metavar="VOXELS")),
)


class LesionwiseAccumulator:
    """Per-case lesion-wise rows for every region of ``spec``."""

    def __init__(self, spec: MetricSpec, settings: LesionwiseSettings) -> None:
        self.spec, self.settings = spec, settings
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, case: CachedCase, labels: np.ndarray) -> None:
        """Add one case: ``labels`` are the predicted internal labels in the frame of ``case.label``."""
        if case.case_id in self.rows:
            return
        reference = np.asarray(case.label)
        row: dict[str, Any] = {"case_id": case.case_id}
        s = self.settings
        for region, members in self.spec.regions.items():
            scores = lesionwise_scores(region_mask(labels, members), region_mask(reference, members), case.spacing,
                                       dilation_iterations=s.dilation, min_lesion_size=s.min_lesion_size,
                                       hd95_penalty=s.hd95_penalty)
            row.update({f"lesion_dice_{region}": scores["lesion_dice"], f"lesion_hd95_{region}": scores["lesion_hd95"],
                        f"lesions_{region}": int(scores["n_lesions"]), f"lesion_fp_{region}": int(scores["n_fp"])})
        self.rows[case.case_id] = row

    def per_case(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows.values()]

    def aggregate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for region in self.spec.regions:
            for metric in LESIONWISE_METRICS:
                values = [float(r[f"{metric}_{region}"]) for r in self.rows.values()]
                finite = [v for v in values if not math.isnan(v)]
                out[f"{metric}_{region}"] = float(np.mean(finite)) if finite else float("nan")
        return out

    def share(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.rows.items()}

    def merge(self, shares: list[dict[str, dict[str, Any]]], order: list[str]) -> None:
        for rows in shares:
            for case_id, row in rows.items():
                self.rows.setdefault(case_id, row)
        position = {c: i for i, c in enumerate(order)}
        self.rows = dict(sorted(self.rows.items(), key=lambda item: position.get(item[0], len(position))))
