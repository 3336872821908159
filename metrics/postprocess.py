"""nnU-Net's post-processing: keep only the largest connected component, chosen on validation predictions.

Rules (nnU-Net v2's ``determine_postprocessing``, with the keep rule of volbench's issue):

- Component step: the voxels of a label group (one region's labels, or every foreground label) that lie outside
  the group's largest connected component become background (label 0). Connectivity 26 (faces, edges and
  corners: ``metrics.lesions.STRUCTURE_26``), which is what nnU-Net applies: its ``remove_all_but_largest_component``
  (acvl_utils) labels with ``skimage.measure.label(connectivity=None)``, full connectivity, as MONAI's
  ``KeepLargestConnectedComponent`` does by default. Components tied for the largest size are all kept (nnU-Net's
  rule; MONAI keeps one of them).
- Candidates, in order: (1) the whole foreground (labels 1..K-1 together); (2) when the task has more than one
  region, each region of the spec in its order (BraTS: WT, TC, ET), applied to the output of the steps kept so far.
- Keep rule: step (1) is kept when the mean validation ``dice_mean`` rises and no ``dice_<region>`` or
  ``dice_<class>`` mean falls; a region step when that region's mean Dice rises and no ``dice_<region>`` or
  ``dice_<class>`` mean falls (nnU-Net v2 checks only the region itself there; volbench also refuses a step that
  costs another region). Comparisons are strict; a NaN mean (no case with a non-empty reference or prediction) is
  neither a rise nor a fall.
- Validation Dice: per case as ``metrics.segmentation.case_metrics`` (NaN when both masks are empty), the mean over
  the validation predictions a nanmean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .lesions import label_components
from .regions import MetricSpec, region_mask
from .segmentation import case_metrics

CONNECTIVITY = 26
FOREGROUND_STEP = "foreground"


@dataclass(frozen=True)
class ComponentStep:
    """One candidate step: ``name`` (``foreground`` or a region name) and the labels whose union is filtered."""

    name: str
    labels: tuple[int, ...]


def keep_largest_component(labels: np.ndarray, members: Sequence[int], background: int = 0) -> np.ndarray:
    """A copy of the label map in which the voxels of ``members`` outside the largest 26-connected component of
    their union are ``background`` (components tied for the largest size are all kept)."""
    out = np.array(labels, copy=True)
    mask = region_mask(out, tuple(int(m) for m in members))
    components, n = label_components(mask)
    if n <= 1:
        return out
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes == sizes.max()
    out[mask & ~keep[components]] = background
    return out


def apply_rule(labels: np.ndarray, steps: Sequence[ComponentStep]) -> np.ndarray:
    """The label map after the component ``steps`` in order (a copy; unchanged when there are none)."""
    out = np.array(labels, copy=True)
    for step in steps:
        out = keep_largest_component(out, step.labels)
    return out


def candidate_steps(spec: MetricSpec) -> list[ComponentStep]:
    """The steps tried on ``spec``'s label maps, in order: the whole foreground, then each region when there are
    several (see the module docstring)."""
    steps = [ComponentStep(FOREGROUND_STEP, tuple(range(1, spec.n_classes)))]
    if len(spec.regions) > 1:
        steps += [ComponentStep(name, tuple(members)) for name, members in spec.regions.items()]
    return steps


def mean_dice(pairs: Sequence[tuple[np.ndarray, np.ndarray]], spec: MetricSpec) -> dict[str, float]:
    """Nanmean over ``(prediction, reference)`` label-map pairs of ``dice_mean`` and every ``dice_<region>`` and
    ``dice_<class>`` of ``spec`` (NaN where no pair has a value)."""
    rows = [case_metrics(p, r, 1.0, spec, include_hd95=False) for p, r in pairs]
    keys = ["dice_mean"] + [f"dice_{n}" for n in (*spec.regions, *spec.classes)]
    out = {}
    for key in keys:
        values = [row[key] for row in rows if not math.isnan(row[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def _rises(after: float, before: float) -> bool:
    return not (math.isnan(after) or math.isnan(before)) and after > before


def _falls(after: dict[str, float], before: dict[str, float]) -> list[str]:
    return [k for k in before if k != "dice_mean" and _rises(before[k], after[k])]


@dataclass
class PostprocessDecision:
    """The steps tried (with the validation Dice before and after each), the steps kept (the rule) and the
    validation Dice of the predictions as they are and after the rule."""

    n_cases: int
    tried: list[dict[str, Any]] = field(default_factory=list)
    rule: list[ComponentStep] = field(default_factory=list)
    dice_before: dict[str, float] = field(default_factory=dict)
    dice_after: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``postprocessing.json``)."""
        return dict(n_validation_cases=self.n_cases, rule=[dict(step=s.name, labels=list(s.labels)) for s in self.rule],
                    tried=self.tried, validation_dice_before=self.dice_before, validation_dice_after=self.dice_after)

    @property
    def label(self) -> str:
        """The rule as text, e.g. ``foreground+wt`` (``none`` when no step is kept)."""
        return "+".join(s.name for s in self.rule) or "none"


def choose_postprocessing(pairs: Sequence[tuple[np.ndarray, np.ndarray]], spec: MetricSpec) -> PostprocessDecision:
    """Try :func:`candidate_steps` on validation ``(prediction, reference)`` label maps and keep each step by the keep
    rule of the module docstring; each step is tried on the output of the steps kept before it."""
    current = [(np.asarray(p), np.asarray(r)) for p, r in pairs]
    before = mean_dice(current, spec)
    decision = PostprocessDecision(n_cases=len(current), dice_before=before)
    for step in candidate_steps(spec):
        trial = [(keep_largest_component(p, step.labels), r) for p, r in current]
        after = mean_dice(trial, spec)
        metric = "dice_mean" if step.name == FOREGROUND_STEP else f"dice_{step.name}"
        worse = _falls(after, before)
        kept = _rises(after[metric], before[metric]) and not worse
        decision.tried.append(dict(step=step.name, labels=list(step.labels), metric=metric, kept=kept,
                                   dice_before=before, dice_after=after, worsened=worse))
        if kept:
            decision.rule.append(step)
            current, before = trial, after
    decision.dice_after = before
    return decision
