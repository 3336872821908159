"""The data flags of a sweep as one record, and loading the cached cases they describe.

Shared by the sweep (``ExperimentConfig`` extends it) and ``evaluate_experiment.py`` (which reads it
back from a results folder's ``config.json``), so both read exactly the same cache entries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataio.adapters import CT_VERSIONS, dataset_info, discover_cases
from dataio.cache import DEFAULT_CACHE_ROOT, load_dataset, open_dataset, synthetic_ct_root, synthetic_root
from dataio.ct_adapters import CTOptions
from dataio.types import CachedCase, CaseFiles, DatasetInfo, LoadedDataset

# data fields that only the CT versions (ich, synthetic_ich) use, with their defaults
CT_DEFAULTS: dict[str, Any] = {"test_image_dir": None, "test_label_dir": None, "patient_regex": None, "manifest": None,
                               "mask_dir": None, "spacing": (1.0, 1.0, 1.0), "hu_window": (0.0, 120.0),
                               "target_spacing": None, "allow_pickle": False}
# of those, the ones describing the files of the real ``ich`` layouts (not the synthetic phantoms)
CT_LAYOUT_FIELDS: tuple[str, ...] = ("test_image_dir", "test_label_dir", "patient_regex", "manifest", "mask_dir",
                                     "spacing", "allow_pickle")
_TUPLE_FIELDS = ("synthetic_size", "spacing", "hu_window", "target_spacing")


@dataclass
class DataOptions(CTOptions):
    """Dataset choice: a layout under ``data_path``, or the synthetic phantoms (sizes in voxels).

    The CT fields (``ich``, ``synthetic_ich``; spacings in mm, windows in HU) come from
    :class:`dataio.ct_adapters.CTOptions`: separate test folders, patient regex, CSV manifest + mask folder,
    spacing of ``.npy`` / pickled files, HU window, resampling target and the pickle opt-in.
    """

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
        """Folder holding the original files (where the phantoms are written when synthetic; the manifest's
        folder for the ``ich`` manifest layout)."""
        if self.data_path:
            return Path(self.data_path).expanduser()
        if self.dataset_version == "ich" and self.manifest:
            return Path(self.manifest).expanduser().parent
        where = synthetic_ct_root if self.dataset_version == "synthetic_ich" else synthetic_root
        return where(self.cache_root, self.synthetic_cases, tuple(self.synthetic_size), self.synthetic_seed)

    def ct_options(self) -> CTOptions:
        """The CT layout and preprocessing options (ignored by the BraTS versions), tuples where lists were read."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(CTOptions)}
        return CTOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def dataset_info(self) -> DatasetInfo:
        """Channels and label kind of the chosen dataset."""
        return dataset_info(self.dataset_version)

    def _load_kwargs(self) -> dict[str, Any]:
        return dict(cache_root=self.cache_root, synthetic_cases=self.synthetic_cases,
                    synthetic_size=tuple(self.synthetic_size), synthetic_seed=self.synthetic_seed,
                    max_samples=self.max_samples, ct=self.ct_options())

    def load(self) -> LoadedDataset:
        """The dataset's description, its labelled cached cases and its fixed test cases (separate test folders)."""
        return open_dataset(Path(self.data_path) if self.data_path else None, self.dataset_version,
                            **self._load_kwargs())

    def load_cases(self, *, require_labels: bool = True, progress: bool = True) -> list[CachedCase]:
        """Cached cases of this dataset (generated and preprocessed on first use)."""
        return load_dataset(Path(self.data_path) if self.data_path else None, self.dataset_version,
                            require_labels=require_labels, progress=progress, **self._load_kwargs())

    def case_files(self, *, require_labels: bool = False) -> list[CaseFiles]:
        """Original files of every case (phantoms must exist already, e.g. after :meth:`load_cases`)."""
        root = None if (self.dataset_version == "ich" and self.manifest and not self.data_path) else self.dataset_root
        return discover_cases(root, self.dataset_version, require_labels=require_labels, ct=self.ct_options())

    def validate_data(self) -> None:
        """Raise ``ValueError`` naming the flag for data flags that are out of range or do not fit together."""
        version = self.dataset_version
        ct = version in CT_VERSIONS
        given = [k for k, default in CT_DEFAULTS.items() if _norm(getattr(self, k)) != _norm(default)]
        if not ct and given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join('--' + k for k in given)} {verb} to the CT versions (--dataset_version ich "
                             f"or synthetic_ich) only, not to --dataset_version {version}")
        layout = [k for k in given if k in CT_LAYOUT_FIELDS]
        if version == "synthetic_ich" and layout:
            raise ValueError(f"{', '.join('--' + k for k in layout)} describe the files of --dataset_version ich; "
                             "the synthetic_ich phantoms take only --hu_window and --target_spacing")
        if self.manifest and not self.mask_dir:
            raise ValueError(f"--manifest {self.manifest} needs --mask_dir DIR (the folder of the masks)")
        if self.mask_dir and not self.manifest:
            raise ValueError("--mask_dir is used with --manifest only (the folder layout reads DIR/labels/)")
        if self.manifest and self.data_path:
            raise ValueError(f"--manifest {self.manifest} and --data_path {self.data_path} name two layouts; give one")
        if bool(self.test_image_dir) != bool(self.test_label_dir):
            raise ValueError("--test_image_dir and --test_label_dir go together (the test cases need their labels)")
        if len(tuple(self.spacing)) != 3 or any(not s > 0 for s in self.spacing):
            raise ValueError(f"--spacing needs three values > 0 (mm), got {list(self.spacing)}")
        if self.target_spacing is not None and (len(tuple(self.target_spacing)) != 3
                                                or any(not s > 0 for s in self.target_spacing)):
            raise ValueError(f"--target_spacing needs three values > 0 (mm), got {list(self.target_spacing)}")
        if len(tuple(self.hu_window)) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"--hu_window needs LOW < HIGH (HU), got {list(self.hu_window)}")
        if self.patient_regex is not None:
            import re

            try:
                re.compile(self.patient_regex)
            except re.error as exc:
                raise ValueError(f"--patient_regex {self.patient_regex!r} is not a valid regular expression: {exc}") \
                    from None
        if self.data_path is None and version not in ("synthetic", "synthetic_ich") and not (
                version == "ich" and self.manifest):
            hint = " (or --manifest FILE.csv with --mask_dir DIR)" if version == "ich" else ""
            raise ValueError(f"--data_path is required for --dataset_version {version}{hint}")


def _norm(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


DATA_FIELDS = tuple(DataOptions.__dataclass_fields__)


def data_options_from_config(config: dict[str, Any]) -> DataOptions:
    """The data flags recorded in a sweep's ``config.json`` (records made before the CT flags: their defaults)."""
    values = {k: config[k] for k in DATA_FIELDS if k in config}
    for key in _TUPLE_FIELDS:
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return DataOptions(**values)
