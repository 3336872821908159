"""The data flags of a sweep as one record, and loading the cached cases they describe.

Shared by the sweep (``ExperimentConfig`` extends it) and ``evaluate_experiment.py`` (which reads it
back from a results folder's ``config.json``), so both read exactly the same cache entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataio.adapters import dataset_info
from dataio.cache import DEFAULT_CACHE_ROOT, load_dataset, synthetic_root
from dataio.types import CachedCase, DatasetInfo, LoadedDataset


@dataclass
class DataOptions:
    """Dataset choice: a layout under ``data_path``, or the synthetic phantoms (sizes in voxels)."""

    data_path: str | None = None
    dataset_version: str = "synthetic"
    synthetic_cases: int = 12
    synthetic_size: tuple[int, int, int] = (64, 64, 64)
    synthetic_seed: int = 0
    cache_dir: str | None = None
    max_samples: int | None = None

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else DEFAULT_CACHE_ROOT

    @property
    def dataset_root(self) -> Path:
        """Folder holding the original files (where the phantoms are written when synthetic)."""
        if self.data_path:
            return Path(self.data_path).expanduser()
        return synthetic_root(self.cache_root, self.synthetic_cases, tuple(self.synthetic_size), self.synthetic_seed)

    def dataset_info(self) -> DatasetInfo:
        """Channels and label kind of the chosen dataset."""
        return dataset_info(self.dataset_version)

    def load(self) -> LoadedDataset:
        """The dataset's description and its labelled cached cases."""
        return LoadedDataset(info=self.dataset_info(), cases=self.load_cases())

    def load_cases(self, *, require_labels: bool = True, progress: bool = True) -> list[CachedCase]:
        """Cached cases of this dataset (generated and preprocessed on first use)."""
        return load_dataset(Path(self.data_path) if self.data_path else None, self.dataset_version,
                            cache_root=self.cache_root, synthetic_cases=self.synthetic_cases,
                            synthetic_size=tuple(self.synthetic_size), synthetic_seed=self.synthetic_seed,
                            max_samples=self.max_samples, require_labels=require_labels, progress=progress)


DATA_FIELDS = tuple(DataOptions.__dataclass_fields__)


def data_options_from_config(config: dict[str, Any]) -> DataOptions:
    """The data flags recorded in a sweep's ``config.json``."""
    values = {k: config[k] for k in DATA_FIELDS if k in config}
    if values.get("synthetic_size") is not None:
        values["synthetic_size"] = tuple(values["synthetic_size"])
    return DataOptions(**values)
