"""Channel, label and region names of datasets described by a file (nnU-Net ``dataset.json``, MONAI datalists).

Conventions (volbench's reading of such files):
- Channels: a name that denotes an MRI modality becomes volbench's modality name (``t1``, ``t1ce``, ``t2``,
  ``flair``: e.g. ``T1w`` -> ``t1``, ``T1Gd`` / ``t1c`` -> ``t1ce``, ``T2w`` -> ``t2``, ``FLAIR`` / ``t2f`` ->
  ``flair``), so models that need named modalities find them; ``CT`` becomes ``ct``; any other name is lowercased
  to an identifier (``ch<k>`` when it gives none or repeats one), and any-channel models take every channel.
- Labels: integer values 0..N-1 in the files (nnU-Net's rule: consecutive, 0 = background) are volbench's internal
  labels unchanged. Each foreground label has a column name: its ``dataset.json`` name as an identifier
  (lowercase, other characters ``_``), or ``label<k>`` where the file names only regions.
- Regions: a ``labels`` entry whose value is a list (nnU-Net's region-based training, e.g. BraTS'
  ``{"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}``) is a named region, evaluated as the
  union of its labels. BraTS' region names map to the BraTS columns: whole tumour -> ``wt``, tumour core ->
  ``tc``, enhancing tumour -> ``et``; other region names become identifiers like labels.
- A name that would clash with another column (``mean``, a repeated name) gets a ``_label`` / ``_region`` suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# lowercased names with separators removed -> volbench's modality names
_MODALITY_ALIASES: dict[str, str] = {
    "t1": "t1", "t1w": "t1", "t1n": "t1", "t1native": "t1",
    "t1ce": "t1ce", "t1gd": "t1ce", "t1c": "t1ce", "t1wce": "t1ce", "t1contrast": "t1ce", "t1post": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2flair": "flair",
    "ct": "ct",
}
# lowercased names with separators removed -> the BraTS region columns (metrics.regions.BRATS_REGIONS)
_BRATS_REGION_ALIASES: dict[str, str] = {
    "wholetumor": "wt", "wholetumour": "wt", "wt": "wt",
    "tumorcore": "tc", "tumourcore": "tc", "tc": "tc",
    "enhancingtumor": "et", "enhancingtumour": "et", "enhancing": "et", "et": "et",
}
RESERVED_NAMES: frozenset[str] = frozenset({"mean", "background"})  # dice_mean is the mean column


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def identifier(name: str) -> str:
    """``name`` lowercased with every run of other characters replaced by ``_`` (``"Left Kidney"`` ->
    ``left_kidney``); a leading digit gets an ``l`` prefix; empty when nothing is left."""
    text = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    return f"l{text}" if text[:1].isdigit() else text


def channel_names(raw: list[str]) -> tuple[str, ...]:
    """volbench names of the channels named ``raw`` (in channel order), see the module docstring."""
    out: list[str] = []
    for k, name in enumerate(raw):
        mapped = _MODALITY_ALIASES.get(_squash(name)) or identifier(name)
        out.append(mapped if mapped and mapped not in out else f"ch{k}")
    return tuple(out)


@dataclass(frozen=True)
class LabelScheme:
    """The labels and regions of a dataset, in volbench's terms.

    Attributes:
        labels: column name of each foreground label; ``labels[i]`` is internal (and file) label ``i + 1``.
        regions: (column name, member labels) of each named region, in file order.
        source: the file that declares them, for messages.
    """

    labels: tuple[str, ...]
    regions: tuple[tuple[str, tuple[int, ...]], ...] = ()
    source: str = ""

    @property
    def values(self) -> tuple[int, ...]:
        """Every label value the files may hold (background included)."""
        return tuple(range(len(self.labels) + 1))


def _unique(name: str, taken: set[str], suffix: str) -> str:
    while name in taken or name in RESERVED_NAMES:
        name = f"{name}_{suffix}"
    taken.add(name)
    return name


def _int_label(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{source}: labels[{key!r}] must be an integer >= 0 or a list of them, got {value!r}")
    return int(value)


def parse_labels(labels: Any, source: str, regions_class_order: Any = None) -> LabelScheme:
    """Read an nnU-Net ``labels`` object (name -> value, or name -> list of values for a region; MSD's
    value -> name form is accepted too) into a :class:`LabelScheme`.

    Raises:
        ValueError: naming ``source``: not an object, no background 0, values that are not consecutive from 0,
            more than 255 labels, a region without ``regions_class_order`` of matching length.
    """
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{source}: 'labels' must be a non-empty object of name -> label value")
    if all(isinstance(k, str) and k.isdigit() for k in labels) and all(isinstance(v, str) for v in labels.values()):
        labels = {v: int(k) for k, v in labels.items()}  # MSD: {"0": "background", "1": "edema", ...}
    singles: dict[int, str] = {}
    groups: list[tuple[str, tuple[int, ...]]] = []
    for key, value in labels.items():
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{source}: region {key!r} lists no labels")
            groups.append((str(key), tuple(sorted({_int_label(v, key, source) for v in value}))))
        else:
            singles.setdefault(_int_label(value, key, source), str(key))
    if groups and regions_class_order is None:
        raise ValueError(f"{source}: 'labels' defines regions ({', '.join(n for n, _ in groups)}) but no "
                         "'regions_class_order' (nnU-Net needs one label value per region)")
    n_entries = len(groups) + len([v for v in singles if v != 0])  # nnU-Net: every foreground entry is a region
    if groups and (not isinstance(regions_class_order, list) or len(regions_class_order) != n_entries):
        raise ValueError(f"{source}: 'regions_class_order' must list one label value per foreground entry of "
                         f"'labels' ({n_entries}), got {regions_class_order!r}")
    values = set(singles) | {v for _, members in groups for v in members} | {0}
    if 0 not in singles and not groups:
        raise ValueError(f"{source}: 'labels' must declare the background as 0")
    n = max(values)
    if sorted(values) != list(range(n + 1)):
        raise ValueError(f"{source}: label values must be consecutive integers from 0 (nnU-Net's rule), got "
                         f"{sorted(values)}")
    if n > 255 or n < 1:
        raise ValueError(f"{source}: between 1 and 255 foreground labels are supported, got {n}")
    taken: set[str] = set()
    names = tuple(_unique(identifier(singles[v]) if v in singles and identifier(singles[v]) else f"label{v}",
                          taken, "label") for v in range(1, n + 1))
    regions = tuple((_unique(_BRATS_REGION_ALIASES.get(_squash(name)) or identifier(name) or f"region{i}",
                             taken, "region"), members) for i, (name, members) in enumerate(groups))
    return LabelScheme(labels=names, regions=regions, source=source)


def labels_from_count(n_foreground: int, source: str = "") -> LabelScheme:
    """Scheme of a dataset that names no labels: foreground labels 1..n named ``label1``... (no regions)."""
    if not 1 <= n_foreground <= 255:
        raise ValueError(f"{source}: the label files hold {n_foreground} foreground labels; 1 to 255 are supported")
    return LabelScheme(labels=tuple(f"label{v}" for v in range(1, n_foreground + 1)), source=source)
