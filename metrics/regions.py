"""Named evaluation regions: groups of internal labels, and the metric spec of a task.

Internal label map (every adapter translates into it): 0 background, 1 NCR/NET (necrotic /
non-enhancing tumour core), 2 ED (peritumoural oedema), 3 ET (enhancing tumour).

BraTS regions (overlapping, as in the challenge): WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
Per-class entries add the classes that are not already a region: NCR = 1, ED = 2 (class 3 is ET).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from utils.schema import BRATS_CLASS_NAMES, BRATS_REGION_NAMES

# names (wt, tc, et; ncr, ed) from utils.schema, which owns the column names; members as documented above
BRATS_REGIONS: Mapping[str, tuple[int, ...]] = MappingProxyType(dict(zip(BRATS_REGION_NAMES, ((1, 2, 3), (1, 3), (3,)))))
BRATS_CLASSES: Mapping[str, int] = MappingProxyType(dict(zip(BRATS_CLASS_NAMES, (1, 2))))


def region_mask(labels: Any, members: tuple[int, ...] | list[int] | int) -> np.ndarray:
    """Boolean mask of the voxels whose label is one of ``members``.

    Args:
        labels: integer label map of any shape (numpy array or anything ``np.asarray`` takes).
        members: the labels forming the region (one int for a single class).

    Raises:
        ValueError: if ``members`` is empty or holds a negative label.
    """
    members_t = (members,) if isinstance(members, (int, np.integer)) else tuple(members)
    if not members_t:
        raise ValueError("region members must name at least one label, got an empty group")
    if any(int(m) < 0 for m in members_t):
        raise ValueError(f"region members must be labels >= 0, got {members_t}")
    return np.isin(np.asarray(labels), np.asarray(members_t, dtype=np.int64))


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class MetricSpec:
    """What to evaluate for one task.

    Attributes:
        name: task name (``brats``, ``ich``, ...).
        regions: region name -> tuple of internal labels forming it (Dice, HD95, precision, recall).
        classes: class name -> single internal label (Dice, precision, recall; no HD95).
        n_classes: number of internal labels including background (size of the confusion matrix).
        mean_of: the regions whose Dice values ``dice_mean`` averages; empty: every region.
    """

    name: str
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    classes: Mapping[str, int] = field(default_factory=dict)
    n_classes: int = 2
    mean_of: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", _frozen({k: tuple(int(x) for x in v) for k, v in self.regions.items()}))
        object.__setattr__(self, "classes", _frozen({k: int(v) for k, v in self.classes.items()}))
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (background + one class), got {self.n_classes}")
        if not self.regions:
            raise ValueError(f"MetricSpec {self.name!r} needs at least one region")
        overlap = set(self.regions) & set(self.classes)
        if overlap:
            raise ValueError(f"region and class names must differ, both have {sorted(overlap)}")
        labels = [x for v in self.regions.values() for x in v] + list(self.classes.values())
        bad = [x for x in labels if not 0 < x < self.n_classes]
        if bad:
            raise ValueError(f"region/class labels must lie in [1, {self.n_classes}), got {sorted(set(bad))}")
        object.__setattr__(self, "mean_of", tuple(self.mean_of))
        unknown = [r for r in self.mean_of if r not in self.regions]
        if unknown:
            raise ValueError(f"mean_of names {unknown}, which are not regions of {self.name!r}")

    @property
    def mean_regions(self) -> tuple[str, ...]:
        """The regions whose Dice values ``dice_mean`` averages (``mean_of``, else every region)."""
        return self.mean_of or tuple(self.regions)


BRATS_SPEC = MetricSpec(name="brats", regions=BRATS_REGIONS, classes=BRATS_CLASSES, n_classes=4)


def binary_spec(name: str) -> MetricSpec:
    """Spec of a binary task: one region ``name`` = label 1, no extra classes, 2 labels.

    Example: ``binary_spec("ich")`` -> regions ``{"ich": (1,)}``, classes ``{}``, ``n_classes`` 2.
    """
    if not name or not name.isidentifier():
        raise ValueError(f"binary_spec name must be a non-empty identifier (used in column names), got {name!r}")
    return MetricSpec(name=name, regions={name: (1,)}, classes={}, n_classes=2)


def multiclass_spec(labels: tuple[str, ...] | list[str], regions: Any = (), name: str = "multiclass") -> MetricSpec:
    """Spec of a multi-class dataset (nnU-Net raw, MONAI datalist; names from ``dataio.label_names``).

    Every foreground label ``labels[i]`` (internal label ``i + 1``) and every named region (``(name, members)``
    pairs, e.g. ``("wt", (1, 2, 3))``) is a region of the spec: each gets ``dice_<name>``, ``hd95_<name>``,
    ``precision_<name>`` and ``recall_<name>``, labels first, then the named regions in the dataset's order.
    ``dice_mean`` averages the named regions when there are any (nnU-Net's region-based datasets are scored on
    their regions), else the labels (nnU-Net's foreground mean). ``n_classes`` = len(labels) + 1.

    Example: ``multiclass_spec(("a", "b"), [("ab", (1, 2))])`` -> regions a = (1,), b = (2,), ab = (1, 2),
    ``dice_mean`` over ab.

    Raises:
        ValueError: no labels, a name that is not an identifier or used twice.
    """
    pairs = [(str(n), (i + 1,)) for i, n in enumerate(labels)] + [(str(n), tuple(m)) for n, m in regions]
    names = [n for n, _ in pairs]
    if not labels:
        raise ValueError("a multi-class spec needs at least one foreground label")
    bad = [n for n in names if not n.isidentifier() or n == "mean"]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"label and region names must be distinct identifiers other than 'mean' (used in column "
                         f"names), got {names}")
    named = tuple(str(n) for n, _ in regions)
    return MetricSpec(name=name, regions=dict(pairs), classes={}, n_classes=len(labels) + 1, mean_of=named)
