"""Datasets described by a file (``--dataset_version nnunet``: an nnU-Net raw folder's ``dataset.json``;
``--dataset_version datalist``: a MONAI datalist JSON): the record their readers return, and loading it through
the preprocessing cache into a :class:`~dataio.types.LoadedDataset`.

The readers (:mod:`dataio.nnunet_raw`, :mod:`dataio.datalist`) only list files and check the description; the
voxels are read by :func:`dataio.channels_preprocess.preprocess_channels_case` through the on-disk cache (cache
parameters ``{"kind": "channels", ...}``), so every bad file of every case is reported at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import DEFAULT_CACHE_ROOT, PreprocessedCache
from .label_names import LabelScheme, labels_from_count
from .splits import given_splits
from .types import CaseFiles, DatasetInfo, LoadedDataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DescribedDataset:
    """What a dataset's description file says, with its cases found on disk.

    Attributes:
        version: ``nnunet`` or ``datalist``.
        source: the description file (for messages and the cache identity).
        channels: volbench channel names, in channel order (``dataio.label_names.channel_names``).
        scheme: declared labels and regions; ``None``: the file declares none (the label files decide, ``label<k>``).
        cases: training cases, then the fixed test cases (``fixed_split == "test"``), sorted by id in each part.
        folds: (train ids, val ids) per fold the file fixes; ``None``: the sweep draws its split.
        folds_source: the file the folds come from (``splits_final.json``, the datalist), for messages.
    """

    version: str
    source: Path
    channels: tuple[str, ...]
    scheme: LabelScheme | None
    cases: tuple[CaseFiles, ...]
    folds: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] | None = None
    folds_source: str = ""

    @property
    def test_ids(self) -> tuple[str, ...]:
        return tuple(c.case_id for c in self.cases if c.fixed_split == "test")

    def info(self, scheme: LabelScheme | None = None) -> DatasetInfo:
        """The dataset's :class:`DatasetInfo` (``multiclass`` labels) with ``scheme`` or the declared one."""
        scheme = scheme or self.scheme or labels_from_count(1, str(self.source))
        return DatasetInfo(name=self.version, channels=self.channels, label_kind="multiclass",
                           labels=scheme.labels, regions=scheme.regions)


def _found_scheme(described: DescribedDataset, cases: list) -> LabelScheme:
    """The declared scheme, or ``label1..labelK`` with K the highest label value of the cached cases."""
    if described.scheme is not None:
        return described.scheme
    highest = max((int(np.max(c.label)) for c in cases if c.label is not None and c.label.size), default=0)
    if highest < 1:
        raise ValueError(f"{described.source}: no label file holds a foreground label")
    return labels_from_count(highest, str(described.source))


def open_described(described: DescribedDataset, *, cache_root: Path = DEFAULT_CACHE_ROOT,
                   max_samples: int | None = None, clip_percentiles: tuple[float, float] = (0.5, 99.5),
                   progress: bool = True) -> LoadedDataset:
    """Preprocess (cached) the cases of ``described`` and return the dataset with its info, fixed test cases and,
    when the file fixes folds, the split (:func:`dataio.splits.given_splits`).

    Raises:
        ValueError: ``max_samples`` with folds fixed by the file (they name every case); every problem of the
            files (:class:`~dataio.input_errors.InputErrors`, all cases at once).
    """
    cases = list(described.cases)
    if max_samples is not None:
        if described.folds is not None:
            raise ValueError(f"--max_samples cannot cut a dataset whose folds {described.folds_source} fixes "
                             "(every listed case is needed)")
        cases = cases[:max_samples]
    scheme = described.scheme
    params = {"kind": "channels", "clip_percentiles": [float(p) for p in clip_percentiles],
              "label_values": None if scheme is None else list(scheme.values)}
    dataset_id = f"{described.source.resolve()}:{described.version}"
    cache = PreprocessedCache(cache_root)
    loaded = cache.get_or_create(cases, dataset_id, params, progress=progress)  # InputErrors: every bad case
    logger.info("%d %s cases ready from %s (%d preprocessed, %d from cache)", len(loaded), described.version,
                described.source, cache.stats["built"], cache.stats["reused"])
    test_ids = tuple(c.case_id for c in cases if c.fixed_split == "test")
    splits = None
    if described.folds is not None:
        splits = given_splits([(list(t), list(v)) for t, v in described.folds], list(test_ids),
                              described.folds_source)
    return LoadedDataset(info=described.info(_found_scheme(described, loaded)), cases=loaded, test_ids=test_ids,
                         splits=splits)
