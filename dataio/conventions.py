"""Label conventions of the supported datasets, and the mapping to volbench's internal label map.

Internal map (``dataio.types.LABEL_NAMES``): 0 background, 1 NCR/NET (necrotic / non-enhancing core),
2 ED (oedema, SNFH), 3 ET (enhancing tumour).

- ``brats2021`` (BraTS 2018-2021): file labels 0, 1 NCR/NET, 2 ED, 4 ET -> 4 becomes 3.
- ``brats2023`` (BraTS 2023+): 0, 1 NETC, 2 SNFH, 3 ET -> identity.
- ``msd`` (MSD Task01_BrainTumour): 1 oedema -> 2, 2 non-enhancing tumour -> 1, 3 enhancing -> 3.
- ``internal``: identity on {0, 1, 2, 3}.
- ``binary`` (CT haemorrhage masks, ``ich`` / ``synthetic_ich``): 0 background, 1 lesion -> identity on {0, 1}
  (0/255 masks are not accepted: the CT preprocessing refuses them with a message).
- ``identity`` (datasets described by a file: ``nnunet``, ``datalist``): labels 0..255 as stored (nnU-Net's
  consecutive labels are volbench's internal labels unchanged; ``dataio.label_names``).
"""

from __future__ import annotations

import numpy as np

# file label -> internal label, one dict per convention (inverses are derived from them)
_TO_INTERNAL: dict[str, dict[int, int]] = {
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},
    "internal": {0: 0, 1: 1, 2: 2, 3: 3},
    "binary": {0: 0, 1: 1},
    "identity": {v: v for v in range(256)},
}

CONVENTIONS: tuple[str, ...] = tuple(_TO_INTERNAL)

DATASET_CONVENTION: dict[str, str] = {
    "synthetic": "brats2021",
    "brats2018": "brats2021",
    "brats2021": "brats2021",
    "brats2023": "brats2023",
    "msd_task01": "msd",
    "ich": "binary",
    "synthetic_ich": "binary",
    "luna16": "binary",
    "synthetic_luna": "binary",
    "nnunet": "identity",
    "datalist": "identity",
}


def _check_convention(convention: str) -> dict[int, int]:
    if convention not in _TO_INTERNAL:
        raise ValueError(f"unknown label convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    return _TO_INTERNAL[convention]


def _remap(label: np.ndarray, mapping: dict[int, int], what: str) -> np.ndarray:
    """Apply ``mapping`` to an integer-valued array; raise ValueError listing values not in it."""
    arr = np.asarray(label)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = np.unique(arr[~np.isfinite(arr) | (arr != np.round(arr))])[:10]
            raise ValueError(f"{what}: label values must be integers, found {bad.tolist()}")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{what}: label dtype {arr.dtype} is not numeric")
    values = np.unique(arr)
    unexpected = [v for v in values.tolist() if int(v) not in mapping]
    if unexpected:
        raise ValueError(f"{what}: unexpected label values {unexpected[:10]}; allowed {sorted(mapping)}")
    if all(src == dst for src, dst in mapping.items()):  # identity: one cast instead of a pass per label
        return arr.astype(np.uint8)
    out = np.zeros(arr.shape, dtype=np.uint8)
    for src, dst in mapping.items():
        if dst != 0:
            out[arr == src] = dst
    return out


def to_internal(label: np.ndarray, convention: str, *, source: str = "") -> np.ndarray:
    """Map a label array from ``convention`` to internal labels (uint8, same shape).

    Raises:
        ValueError: naming ``source`` (the file) and the offending values when a label is not an
            integer or not part of the convention, or when the convention is unknown.
    """
    mapping = _check_convention(convention)
    what = f"label file {source} (convention {convention})" if source else f"label (convention {convention})"
    return _remap(label, mapping, what)


def from_internal(label: np.ndarray, convention: str) -> np.ndarray:
    """Map internal labels back to ``convention`` (uint8), e.g. to write predictions in the dataset's labels."""
    inverse = {dst: src for src, dst in _check_convention(convention).items()}
    return _remap(label, inverse, f"internal label (to convention {convention})")


def remap_labels(label: np.ndarray, mapping: dict[int, int], *, source: str = "") -> np.ndarray:
    """Map a label array with an explicit ``{file label: internal label}`` table (uint8, same shape).

    Raises:
        ValueError: naming ``source`` and the values that are not integers or not keys of ``mapping``.
    """
    return _remap(label, mapping, f"label file {source}" if source else "label")
