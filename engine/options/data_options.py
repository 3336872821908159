"""The data flags of a sweep as one record, and loading the cached cases they describe.

Shared by the sweep (``ExperimentConfig`` extends it) and ``evaluate_experiment.py`` (which reads it
back from a results folder's ``config.json``), so both read exactly the same cache entries.
The LUNA16 flags (``--annotations``, ``--nodule_hu_threshold``, ``--use_subset_folds``) and those of the datasets
described by a file (``--nnunet_splits``, ``--datalist``) are declared here (:func:`add_luna_arguments`,
:func:`add_described_arguments`); the other data flags in :mod:`engine.options.config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataio.adapters import (CT_VERSIONS, DESCRIBED_VERSIONS, LUNA_VERSIONS, dataset_info, default_hu_window,
                             discover_cases)
from dataio.cache import (DEFAULT_CACHE_ROOT, load_dataset, open_dataset, synthetic_ct_root, synthetic_luna_root,
                          synthetic_root)
from dataio.ct_adapters import CTOptions
from dataio.datalist import read_datalist
from dataio.described import DescribedDataset, open_described
from dataio.nnunet_raw import read_nnunet_raw
from dataio.types import CachedCase, CaseFiles, DatasetInfo, LoadedDataset

# data fields that only the CT versions (ich, synthetic_ich; hu_window also luna16, synthetic_luna) use, with their
# defaults; hu_window None = the dataset's own window (dataio.adapters.default_hu_window)
CT_DEFAULTS: dict[str, Any] = {"test_image_dir": None, "test_label_dir": None, "patient_regex": None, "manifest": None,
                               "mask_dir": None, "spacing": (1.0, 1.0, 1.0), "hu_window": None,
                               "target_spacing": None, "allow_pickle": False}
# of those, the ones describing the files of the real ``ich`` layouts (not the synthetic phantoms)
CT_LAYOUT_FIELDS: tuple[str, ...] = ("test_image_dir", "test_label_dir", "patient_regex", "manifest", "mask_dir",
                                     "spacing", "allow_pickle")
# data fields that only the LUNA16 versions (luna16, synthetic_luna) use, with their defaults
LUNA_DEFAULTS: dict[str, Any] = {"annotations": None, "nodule_hu_threshold": -700.0, "use_subset_folds": False}
# data fields of the datasets described by a file, each with the one version it applies to
DESCRIBED_FLAGS: dict[str, str] = {"nnunet_splits": "nnunet", "datalist": "datalist"}
LEGACY_HU_WINDOW = (0.0, 120.0)  # recorded by every sweep before --hu_window defaulted to the dataset's own
_TUPLE_FIELDS = ("synthetic_size", "spacing", "hu_window", "target_spacing")
_PHANTOM_ROOTS = {"synthetic_ich": synthetic_ct_root, "synthetic_luna": synthetic_luna_root}


@dataclass
class DataOptions(CTOptions):
    """Dataset choice: a layout under ``data_path``, or the synthetic phantoms (sizes in voxels).

    The CT fields (spacings in mm, windows in HU) come from :class:`dataio.ct_adapters.CTOptions`: for ``ich`` /
    ``synthetic_ich`` separate test folders, patient regex, CSV manifest + mask folder, spacing of ``.npy`` /
    pickled files, resampling target and the pickle opt-in; for ``luna16`` / ``synthetic_luna`` the annotation
    file, the nodule HU threshold and the subset folds; the HU window for all four.

    ``nnunet_splits``: nnU-Net's ``splits_final.json`` as the folds of ``nnunet`` (:mod:`dataio.nnunet_raw`);
    ``datalist``: the MONAI datalist file of ``datalist`` (:mod:`dataio.datalist`; default ``datalist.json`` in
    ``data_path``).
    """

    data_path: str | None = None
    dataset_version: str = "synthetic"
    synthetic_cases: int = 12
    synthetic_size: tuple[int, int, int] = (64, 64, 64)
    synthetic_seed: int = 0
    cache_dir: str | None = None
    max_samples: int | None = None
    nnunet_splits: str | None = None
    datalist: str | None = None

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
        where = _PHANTOM_ROOTS.get(self.dataset_version, synthetic_root)
        return where(self.cache_root, self.synthetic_cases, tuple(self.synthetic_size), self.synthetic_seed)

    def ct_options(self) -> CTOptions:
        """The CT layout and preprocessing options (ignored by the BraTS versions), tuples where lists were read."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(CTOptions)}
        return CTOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def dataset_info(self) -> DatasetInfo:
        """Channels and label kind of the chosen dataset (``nnunet`` / ``datalist``: from the description file;
        labels that only the label files name are known after :meth:`load`)."""
        if self.dataset_version in DESCRIBED_VERSIONS:
            return self.described().info()
        return dataset_info(self.dataset_version)

    def described(self) -> DescribedDataset:
        """The description and case files of an ``nnunet`` or ``datalist`` dataset (nothing is preprocessed)."""
        root = Path(self.data_path or ".").expanduser()
        if self.dataset_version == "nnunet":
            return read_nnunet_raw(root, Path(self.nnunet_splits).expanduser() if self.nnunet_splits else None)
        return read_datalist(root, self.datalist)

    def _load_kwargs(self) -> dict[str, Any]:
        return dict(cache_root=self.cache_root, synthetic_cases=self.synthetic_cases,
                    synthetic_size=tuple(self.synthetic_size), synthetic_seed=self.synthetic_seed,
                    max_samples=self.max_samples, ct=self.ct_options())

    def load(self) -> LoadedDataset:
        """The dataset's description, its labelled cached cases and its fixed test cases (separate test folders)."""
        if self.dataset_version in DESCRIBED_VERSIONS:
            return open_described(self.described(), cache_root=self.cache_root, max_samples=self.max_samples)
        return open_dataset(Path(self.data_path) if self.data_path else None, self.dataset_version,
                            **self._load_kwargs())

    def load_cases(self, *, require_labels: bool = True, progress: bool = True) -> list[CachedCase]:
        """Cached cases of this dataset (generated and preprocessed on first use)."""
        if self.dataset_version in DESCRIBED_VERSIONS:  # every listed case is labelled
            return open_described(self.described(), cache_root=self.cache_root, max_samples=self.max_samples,
                                  progress=progress).cases
        return load_dataset(Path(self.data_path) if self.data_path else None, self.dataset_version,
                            require_labels=require_labels, progress=progress, **self._load_kwargs())

    def case_files(self, *, require_labels: bool = False) -> list[CaseFiles]:
        """Original files of every case (phantoms must exist already, e.g. after :meth:`load_cases`)."""
        if self.dataset_version in DESCRIBED_VERSIONS:
            return list(self.described().cases)
        root = None if (self.dataset_version == "ich" and self.manifest and not self.data_path) else self.dataset_root
        return discover_cases(root, self.dataset_version, require_labels=require_labels, ct=self.ct_options())

    def validate_data(self) -> None:
        """Raise ``ValueError`` naming the flag for data flags that are out of range or do not fit together."""
        self._check_flag_versions()
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
        if self.hu_window is not None and (len(tuple(self.hu_window)) != 2
                                           or not self.hu_window[0] < self.hu_window[1]):
            raise ValueError(f"--hu_window needs LOW < HIGH (HU), got {list(self.hu_window)}")
        if self.nodule_hu_threshold is None or not math.isfinite(float(self.nodule_hu_threshold)):
            raise ValueError(f"--nodule_hu_threshold must be a finite HU value, got {self.nodule_hu_threshold}")
        if self.patient_regex is not None:
            import re

            try:
                re.compile(self.patient_regex)
            except re.error as exc:
                raise ValueError(f"--patient_regex {self.patient_regex!r} is not a valid regular expression: {exc}") \
                    from None
        version = self.dataset_version
        if self.data_path is None and version not in ("synthetic", "synthetic_ich", "synthetic_luna") and not (
                version == "ich" and self.manifest):
            hint = " (or --manifest FILE.csv with --mask_dir DIR)" if version == "ich" else ""
            raise ValueError(f"--data_path is required for --dataset_version {version}{hint}")

    def _given(self, defaults: dict[str, Any]) -> list[str]:
        return [k for k, default in defaults.items() if _norm(getattr(self, k)) != _norm(default)]

    def _check_described_flags(self) -> None:
        """``--nnunet_splits`` with ``nnunet`` only and not with ``--splits_file``; ``--datalist`` with ``datalist``."""
        for name, version in DESCRIBED_FLAGS.items():
            if getattr(self, name) is not None and self.dataset_version != version:
                raise ValueError(f"--{name} applies to --dataset_version {version} only, not to --dataset_version "
                                 f"{self.dataset_version}")
        if self.nnunet_splits and getattr(self, "splits_file", None):
            raise ValueError(f"--nnunet_splits {self.nnunet_splits} and --splits_file {getattr(self, 'splits_file')} "
                             "both give the split; give one")

    def _check_flag_versions(self) -> None:
        """Each CT / LUNA16 flag only with the versions it applies to (``ValueError`` naming the flags)."""
        self._check_described_flags()
        version = self.dataset_version
        ct, luna = version in CT_VERSIONS, version in LUNA_VERSIONS
        given, given_luna = self._given(CT_DEFAULTS), self._given(LUNA_DEFAULTS)
        if not ct and not luna and given:
            where = "ich, synthetic_ich, luna16 or synthetic_luna" if given == ["hu_window"] else "ich or synthetic_ich"
            raise ValueError(f"{_flags(given)} {_verb(given)} to the CT versions (--dataset_version {where}) only, "
                             f"not to --dataset_version {version}")
        if not luna and given_luna:
            raise ValueError(f"{_flags(given_luna)} {_verb(given_luna)} to the LUNA16 versions (--dataset_version "
                             f"luna16 or synthetic_luna) only, not to --dataset_version {version}")
        ich_only = [k for k in given if k != "hu_window"]
        if luna and ich_only:
            raise ValueError(f"{_flags(ich_only)} {_verb(ich_only)} to --dataset_version ich or synthetic_ich only; "
                             f"--dataset_version {version} takes --hu_window, --annotations, --nodule_hu_threshold and "
                             "--use_subset_folds")
        layout = [k for k in given if k in CT_LAYOUT_FIELDS]
        if version == "synthetic_ich" and layout:
            raise ValueError(f"{_flags(layout)} describe the files of --dataset_version ich; "
                             "the synthetic_ich phantoms take only --hu_window and --target_spacing")
        if version == "synthetic_luna" and self.annotations is not None:
            raise ValueError(f"--annotations {self.annotations} names a file of --dataset_version luna16; the "
                             "synthetic_luna phantoms write and read their own annotations.csv")


def _flags(names: list[str]) -> str:
    return ", ".join("--" + k for k in names)


def _verb(names: list[str]) -> str:
    return "applies" if len(names) == 1 else "apply"


def add_luna_arguments(group: argparse._ArgumentGroup, *, recorded: bool = False) -> None:
    """Add the LUNA16 flags (``--annotations``, ``--nodule_hu_threshold``, ``--use_subset_folds``) to ``group``.

    ``recorded=True`` (the evaluation CLI): every default is None, meaning "the value recorded in the sweep's
    config.json", and the help says so.
    """
    then = "the recorded value, else " if recorded else ""
    group.add_argument("--annotations", default=None, metavar="FILE",
                       help="luna16: annotation CSV with columns seriesuid,coordX,coordY,coordZ,diameter_mm (world "
                            "LPS mm; extra columns such as the book chapter's annotations_with_malignancy.csv are "
                            "ignored); a relative FILE not found from the working folder is read from the data folder "
                            f"(default: {then}annotations.csv in the data folder)")
    group.add_argument("--nodule_hu_threshold", type=float, default=None if recorded else -700.0, metavar="HU",
                       help="luna16, synthetic_luna: each nodule's box grows from the annotation's centre voxel, per "
                            "axis, while the voxels on both sides lie above HU (the LUNA book chapter's rule); the "
                            f"label keeps the box's voxels above HU (default: {then}-700.0)")
    group.add_argument("--use_subset_folds", action="store_true", default=None if recorded else False,
                       help="luna16, synthetic_luna: cross-validation folds from the release's subsets instead of a "
                            "seeded draw: the highest subset present is the test set, each other subset validates "
                            f"one fold (default: {then}off, the seeded patient split)")


def add_described_arguments(group: argparse._ArgumentGroup, *, recorded: bool = False) -> None:
    """Add the flags of the datasets described by a file (``--nnunet_splits``, ``--datalist``) to ``group``.

    ``recorded=True`` (the evaluation CLI): the defaults mean "the value recorded in the sweep's config.json".
    """
    then = "the recorded value, else " if recorded else ""
    group.add_argument("--nnunet_splits", default=None, metavar="FILE",
                       help="nnunet: nnU-Net's splits_final.json (a list of {\"train\": [...], \"val\": [...]}, kept "
                            "in nnU-Net's preprocessed folder) as the cross-validation folds, taken as given; the test "
                            "set is then imagesTs/ with labelsTs/ beside it, which must exist (default: "
                            f"{then}none: the split is drawn, imagesTs/ + labelsTs/ as the test set when present)")
    group.add_argument("--datalist", default=None, metavar="FILE",
                       help="datalist: the MONAI datalist JSON (Auto3DSeg style: 'training' entries with image, "
                            "label and optional 'fold' keys, which are then the folds; 'testing' entries with labels "
                            "as the test set; paths relative to --data_path); a relative FILE not found from the "
                            f"working folder is read from --data_path (default: {then}datalist.json in --data_path)")


def effective_hu_window(dataset_version: str, hu_window: Any) -> tuple[float, float] | None:
    """The HU window a run applies: ``hu_window`` or the version's own for the CT versions, ``None`` for the others
    (a recorded [0, 120] included). Compare this, not the recorded value, across records made before and after
    ``--hu_window`` defaulted to the dataset's own window (resume, comparisons)."""
    if dataset_version in CT_VERSIONS or dataset_version in LUNA_VERSIONS:
        return default_hu_window(dataset_version, None if hu_window is None else tuple(hu_window))
    return None


def _norm(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


DATA_FIELDS = tuple(DataOptions.__dataclass_fields__)


def data_options_from_config(config: dict[str, Any]) -> DataOptions:
    """The data flags recorded in a sweep's ``config.json`` (records made before the CT or LUNA16 flags: their
    defaults). Records made when ``--hu_window`` defaulted to [0, 120] for every version keep that window for the CT
    versions (their cache entries are the same) and drop it for the others, where it never applied."""
    values = {k: config[k] for k in DATA_FIELDS if k in config}
    for key in _TUPLE_FIELDS:
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    version = values.get("dataset_version", "synthetic")
    if version not in CT_VERSIONS and version not in LUNA_VERSIONS and _norm(values.get("hu_window")) == \
            _norm(LEGACY_HU_WINDOW):
        values["hu_window"] = None
    return DataOptions(**values)
