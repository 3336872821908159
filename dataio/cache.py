"""On-disk cache of preprocessed cases, and ``load_dataset``: the data entry point of the runner.

Layout: ``cache_root/<key>/<case_id>/{image.npy, label.npy, meta.json}`` where ``key`` hashes the
dataset identity, the preprocessing parameters and ``CACHE_VERSION``. The parameters choose the
preprocessing: BraTS MRI ``{"clip_percentiles"}`` (:func:`dataio.preprocess.preprocess_case`), CT
``{"kind": "ct", "hu_window", "target_spacing", "crop"[, "npy_spacing"]}``
(:func:`dataio.ct_preprocess.preprocess_ct_case`), or LUNA16 ``{"kind": "luna", "hu_window",
"nodule_hu_threshold", "crop"}`` (:func:`dataio.luna_preprocess.preprocess_luna_case`), so changing the HU window,
the spacing or the nodule threshold rebuilds.
A model that declares its own preprocessing (``ModelInfo.preprocessing``, :mod:`dataio.model_preprocess`) gets
entries of its own under the key of the dataset's parameters plus ``{"model": {...}}``
(:func:`model_inputs`, built from the dataset's entry of the case); models without a declaration share the dataset's
entries.
An entry is written into a temporary folder (``meta.json`` last) that is then renamed into place, so a
killed process never leaves an entry that is later trusted. An entry is reused only if its ``meta.json``
is valid and every source file still has the recorded size and mtime (and, for annotated cases, the case's
findings are those recorded); otherwise it is rebuilt. ``meta.json`` keeps the case's findings (LUNA16), read
back as ``CachedCase.findings``; entries written before findings were recorded read back ``None``, which is
right for them (only the LUNA16 versions, whose entries have their own ``"kind": "luna"`` keys, list findings).
Bad input is reported all at once: every case is discovered and read, the good ones are cached, and one
:class:`~dataio.input_errors.InputErrors` lists every missing, unreadable, non-finite or inconsistent file. A reused
entry whose ``.npy`` does not open with the recorded shape (truncated, garbled header) is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from utils.atomic import atomic_write_json
from utils.progress import progress as progress_bar

from .adapters import CT_VERSIONS, DATASET_VERSIONS, LUNA_VERSIONS, dataset_info, default_hu_window, discover_cases
from .channels_preprocess import CHANNELS_PREPROCESS_PARAMS, preprocess_channels_case
from .ct_adapters import CTOptions, headerless
from .ct_preprocess import CT_PREPROCESS_PARAMS, preprocess_ct_case
from .input_errors import BAD_INPUT_ERRORS, InputErrors, deferred_input_errors, problems_of, raise_if_any
from .luna_preprocess import LUNA_PREPROCESS_PARAMS, preprocess_luna_case
from .model_preprocess import apply_model_preprocessing, check_model_params
from .preprocess import preprocess_case
from .synthetic import FORMAT_VERSION, ensure_synthetic_brats, validate_synthetic_args
from .synthetic_ct import CT_FORMAT_VERSION, SYNTHETIC_CT_SIZE, ensure_synthetic_ct
from .synthetic_luna import LUNA_FORMAT_VERSION, SYNTHETIC_LUNA_SIZE, ensure_synthetic_luna
from .types import MODALITY_ORDER, CachedCase, CaseFiles, CropBox, Finding, LoadedDataset

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_CACHE_ROOT = Path(os.environ.get("VOLBENCH_CACHE", "~/.cache/volbench")).expanduser()
PREPROCESS_PARAMS = ("clip_percentiles",)
MODEL_KEY = "model"  # params key of a model's own preprocessing (dataio.model_preprocess)
_KNOWN_PARAMS = {"ct": CT_PREPROCESS_PARAMS, "luna": LUNA_PREPROCESS_PARAMS, "channels": CHANNELS_PREPROCESS_PARAMS}
_PREPROCESSORS = {"ct": preprocess_ct_case, "luna": preprocess_luna_case, "channels": preprocess_channels_case}
_TMP_PREFIX = ".tmp-"
_FOREIGN_TMP_MAX_AGE_S = 6 * 3600  # temp folders of other hosts are only removed when this old


def _source_stats(case: CaseFiles) -> list[dict[str, Any]]:
    """Path, size and mtime (ns) of every file the case is built from; then, for a case with findings, the
    findings themselves (centre, diameter, excluded), so that an edited annotation row rebuilds only its case."""
    files = list(case.images.values()) + [p for p in (case.image_4d, case.label) if p is not None]
    stats: list[dict[str, Any]] = []
    for path in [*files, *case.extra_files]:
        st = Path(path).stat()
        stats.append({"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    if case.findings is not None:
        stats.append({"findings": [[*map(float, f.centre_ras_mm), float(f.diameter_mm), bool(f.excluded)]
                                   for f in case.findings]})
    return stats


def findings_to_json(findings: tuple[Finding, ...] | None) -> list[dict[str, Any]] | None:
    """Findings as JSON-able dicts (``None`` stays ``None``)."""
    if findings is None:
        return None
    return [{"centre_ras_mm": [float(v) for v in f.centre_ras_mm], "diameter_mm": float(f.diameter_mm),
             "excluded": bool(f.excluded), "origin": f.origin} for f in findings]


def findings_from_json(items: list[dict[str, Any]] | None) -> tuple[Finding, ...] | None:
    """Inverse of :func:`findings_to_json`."""
    if items is None:
        return None
    return tuple(Finding(centre_ras_mm=tuple(float(v) for v in f["centre_ras_mm"]),  # type: ignore[arg-type]
                         diameter_mm=float(f["diameter_mm"]), excluded=bool(f.get("excluded", False)),
                         origin=str(f.get("origin", ""))) for f in items)


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def _tmp_is_stale(folder: Path) -> bool:
    """A temp folder is stale when its writer (``.tmp-<case>.<host>.<pid>.<token>``) no longer runs."""
    parts = folder.name.rsplit(".", 3)
    if len(parts) == 4 and parts[1] == _host() and parts[2].isdigit():
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - folder.stat().st_mtime > _FOREIGN_TMP_MAX_AGE_S


def _ensure_fd_limit(n_maps: int, margin: int = 256) -> None:
    """Raise the soft open-file limit (up to the hard one) so that ``n_maps`` more memory maps fit.

    Python's ``mmap`` keeps a duplicated file descriptor per map, so a full BraTS release (1251 cases,
    two maps each) exceeds the common soft limit of 1024 and would fail with "Too many open files".
    """
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to do
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    needed = in_use + n_maps + margin
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        logger.info("raised the open-file limit from %d to %d for %d memory-mapped arrays", soft, target, n_maps)
    except (ValueError, OSError) as exc:
        target = soft
        logger.debug("could not raise the open-file limit: %s", exc)
    if target < needed:
        logger.warning("%d cached arrays are memory-mapped (one file descriptor each) but the open-file limit is "
                       "%d: raise it (ulimit -n %d) or use --max_samples", n_maps, target, needed)


class PreprocessedCache:
    """Preprocessed cases on disk, keyed by dataset identity + preprocessing parameters.

    ``stats`` counts, for the last :meth:`get_or_create` call, entries ``built`` and ``reused``.
    """

    def __init__(self, cache_root: Path = DEFAULT_CACHE_ROOT) -> None:
        self.cache_root = Path(cache_root).expanduser()
        self.stats: dict[str, int] = {"built": 0, "reused": 0}

    @staticmethod
    def key_for(dataset_id: str, params: dict) -> str:
        """Hex hash of the dataset identity, the preprocessing parameters and ``CACHE_VERSION``."""
        blob = json.dumps({"dataset": dataset_id, "params": params, "cache_version": CACHE_VERSION},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]

    def get_or_create(self, cases: list[CaseFiles], dataset_id: str, params: dict, *,
                      progress: bool = True) -> list[CachedCase]:
        """Cached cases in the order of ``cases``, preprocessing (with ``params``) those not cached yet."""
        known = _KNOWN_PARAMS.get(params.get("kind"), PREPROCESS_PARAMS)  # type: ignore[arg-type]
        unknown = sorted(set(params) - set(known) - {MODEL_KEY})
        check_model_params(params.get(MODEL_KEY) or {})
        if unknown:
            raise ValueError(f"unknown preprocessing parameters {unknown}; known: {known}")
        key_dir = self.cache_root / self.key_for(dataset_id, params)
        key_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp(key_dir)
        atomic_write_json(key_dir / "key.json", {"dataset_id": dataset_id, "params": params,
                                                 "cache_version": CACHE_VERSION})
        sources = {c.case_id: _source_stats(c) for c in cases}
        todo = [c for c in cases if not self._is_valid(key_dir / c.case_id, c, sources[c.case_id])]
        self.stats = {"built": len(todo), "reused": len(cases) - len(todo)}
        if todo:
            logger.info("preprocessing %d of %d cases into %s", len(todo), len(cases), key_dir)
        problems: list[str] = []  # every bad case is read and reported, not only the first
        failed = 0
        for case in progress_bar(todo, desc="preprocessing", unit="case", disable=not progress):
            try:
                cached = self._preprocess(case, params)
            except BAD_INPUT_ERRORS as exc:
                problems.extend(problems_of(exc))
                failed += 1
                continue
            self._build(key_dir, case, cached, params, sources[case.case_id])
        if failed:
            logger.error("%d of %d cases could not be preprocessed (the others are cached)", failed, len(todo))
        raise_if_any(problems, len(todo))
        _ensure_fd_limit(2 * len(cases))  # each memory map holds a file descriptor (image + label per case)
        return [self._read(key_dir / c.case_id) for c in cases]

    def _remove_stale_tmp(self, key_dir: Path) -> None:
        for folder in key_dir.iterdir():
            if folder.is_dir() and folder.name.startswith(_TMP_PREFIX) and _tmp_is_stale(folder):
                logger.info("removing unfinished cache entry %s", folder)
                shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _is_valid(entry: Path, case: CaseFiles, sources: list[dict[str, Any]]) -> bool:
        try:
            meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (meta.get("cache_version") == CACHE_VERSION and meta.get("sources") == sources
                and meta.get("case_id") == case.case_id and meta.get("patient_id") == case.patient_id
                and meta.get("has_lesion") == case.has_lesion
                and (entry / "image.npy").is_file()
                and (entry / "label.npy").is_file() == case.has_label
                and _arrays_intact(entry, meta))

    @staticmethod
    def _preprocess(case: CaseFiles, params: dict) -> CachedCase:
        """Read and preprocess ``case`` with ``params`` (raises the bad-input errors of its files)."""
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k not in ("kind", MODEL_KEY)}
        cached = _PREPROCESSORS.get(params.get("kind"), preprocess_case)(case, **kwargs)  # type: ignore[arg-type]
        if params.get(MODEL_KEY):  # a model's own preprocessing on top of the dataset's
            cached = apply_model_preprocessing(cached, params[MODEL_KEY])
        if not np.isfinite(cached.image).all():  # every reader checks its files; this guards the arithmetic
            raise ValueError(f"case {case.case_id}: preprocessing gave NaN or infinite values "
                             f"(files {sorted(map(str, case.images.values()))})")
        if cached.label is not None and cached.foreground_voxels is None:
            cached.foreground_voxels = int(np.count_nonzero(cached.label))
        return cached

    def _build(self, key_dir: Path, case: CaseFiles, cached: CachedCase, params: dict,
               sources: list[dict[str, Any]]) -> None:
        """Write preprocessed ``cached`` into a temp folder (meta.json last) and rename it into place."""
        tmp = key_dir / f"{_TMP_PREFIX}{case.case_id}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            np.save(tmp / "image.npy", np.ascontiguousarray(cached.image, dtype=np.float32))
            if cached.label is not None:
                np.save(tmp / "label.npy", np.ascontiguousarray(cached.label, dtype=np.uint8))
            meta = _meta(cached, params, sources)
            if case.has_lesion is not None:
                meta["has_lesion"] = case.has_lesion
            atomic_write_json(tmp / "meta.json", meta)
            if not self._is_valid(key_dir / case.case_id, case, sources):  # another process may have won
                try:
                    self._replace(tmp, key_dir / case.case_id)
                except OSError:  # e.g. ENOTEMPTY: a concurrent writer put its entry in place just now
                    if not self._is_valid(key_dir / case.case_id, case, sources):
                        raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _replace(tmp: Path, entry: Path) -> None:
        """Move ``tmp`` onto ``entry``; an old (invalid) entry is first renamed aside and deleted."""
        if entry.exists():
            trash = entry.with_name(f"{_TMP_PREFIX}old-{entry.name}.{_host()}.{os.getpid()}."
                                    f"{uuid.uuid4().hex[:8]}")
            os.replace(entry, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, entry)

    @staticmethod
    def _read(entry: Path) -> CachedCase:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        label_path = entry / "label.npy"
        return CachedCase(
            case_id=meta["case_id"], patient_id=meta["patient_id"],
            image=np.load(entry / "image.npy", mmap_mode="r"),
            label=np.load(label_path, mmap_mode="r") if meta["has_label"] else None,
            spacing=tuple(meta["spacing"]), affine=np.asarray(meta["affine"], dtype=np.float64),
            original_shape=tuple(meta["original_shape"]),
            crop=CropBox(start=tuple(meta["crop"]["start"]), stop=tuple(meta["crop"]["stop"])),
            convention=meta["convention"],
            channel_names=tuple(meta.get("channel_names", MODALITY_ORDER)),  # entries before channel names: BraTS
            foreground_voxels=meta.get("foreground_voxels"),  # None in entries written before it was recorded
            findings=findings_from_json(meta.get("findings")))  # None: no findings listed, or an older entry


def _arrays_intact(entry: Path, meta: dict[str, Any]) -> bool:
    """Whether the entry's ``.npy`` files open with the shapes ``meta.json`` records (a truncated or garbled
    array whose metadata is intact is caught here and rebuilt with a warning). Reads the headers only and maps the
    data (the file must be long enough), so voxel values flipped in place are not detected."""
    image_shape = meta.get("image_shape")
    expected = {"image.npy": tuple(image_shape) if image_shape else None}
    if meta.get("has_label"):
        expected["label.npy"] = expected["image.npy"][1:] if image_shape else None
    for name, shape in expected.items():
        try:
            array = np.load(entry / name, mmap_mode="r")
            found = tuple(array.shape)
            del array
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("cache entry %s: %s is unreadable (%s: %s); rebuilding it", entry, name,
                           type(exc).__name__, exc)
            return False
        if shape is not None and found != shape:
            logger.warning("cache entry %s: %s has shape %s but meta.json records %s; rebuilding it", entry, name,
                           found, shape)
            return False
    return True


def _meta(cached: CachedCase, params: dict, sources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cache_version": CACHE_VERSION, "case_id": cached.case_id, "patient_id": cached.patient_id,
        "spacing": list(cached.spacing), "affine": np.asarray(cached.affine).tolist(),
        "original_shape": list(cached.original_shape),
        "crop": {"start": list(cached.crop.start), "stop": list(cached.crop.stop)},
        "convention": cached.convention, "has_label": cached.label is not None,
        "channel_names": list(cached.channel_names), "foreground_voxels": cached.foreground_voxels,
        "image_shape": list(cached.image.shape), "params": params, "sources": sources,
        "findings": findings_to_json(cached.findings),
    }


def _synthetic_id(n_cases: int, size: tuple[int, int, int], seed: int) -> str:
    return f"n{n_cases}_s{size[0]}x{size[1]}x{size[2]}_seed{seed}"


def synthetic_root(cache_root: Path, n_cases: int, size: tuple[int, int, int], seed: int) -> Path:
    """Folder under the cache where the phantoms of these parameters live (without ``--data_path``)."""
    return Path(cache_root).expanduser() / "synthetic" / _synthetic_id(n_cases, tuple(size), seed)


def synthetic_ct_root(cache_root: Path, n_cases: int, size: tuple[int, int, int], seed: int) -> Path:
    """Folder under the cache where the CT phantoms of these parameters live (apart from the BraTS ones)."""
    return Path(cache_root).expanduser() / "synthetic_ct" / _synthetic_id(n_cases, tuple(size), seed)


def synthetic_luna_root(cache_root: Path, n_cases: int, size: tuple[int, int, int], seed: int) -> Path:
    """Folder under the cache where the LUNA16-layout phantoms of these parameters live."""
    return Path(cache_root).expanduser() / "synthetic_luna" / _synthetic_id(n_cases, tuple(size), seed)


def default_synthetic_size(dataset_version: str) -> tuple[int, int, int]:
    """Phantom size when ``--synthetic_size`` is not given: 64 x 64 x 16 for head CT, 64 x 64 x 32 for LUNA16,
    64 x 64 x 64 for BraTS."""
    if dataset_version in LUNA_VERSIONS:
        return SYNTHETIC_LUNA_SIZE
    return SYNTHETIC_CT_SIZE if dataset_version in CT_VERSIONS else (64, 64, 64)


# synthetic version -> (root under the cache, writer, lock-file suffix, format version)
_PHANTOM_SETS = {"synthetic": (synthetic_root, ensure_synthetic_brats, "", FORMAT_VERSION),
                 "synthetic_ich": (synthetic_ct_root, ensure_synthetic_ct, ".ct", CT_FORMAT_VERSION),
                 "synthetic_luna": (synthetic_luna_root, ensure_synthetic_luna, ".luna", LUNA_FORMAT_VERSION)}


def _phantoms(data_path: Path | None, dataset_version: str, cache_root: Path, n_cases: int,
              size: tuple[int, int, int], seed: int) -> tuple[Path, str]:
    """Write (once, under a file lock) the phantoms of a synthetic version; returns their folder and dataset id."""
    where, ensure, suffix, version = _PHANTOM_SETS[dataset_version]
    name = _synthetic_id(n_cases, size, seed)
    root = Path(data_path).expanduser() if data_path is not None else where(cache_root, n_cases, size, seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}{suffix}.lock")):  # one writer of a phantom folder at a time
        ensure(root, n_cases, size, seed)
    # the folder is part of the identity too, so two phantom folders do not evict each other's entries
    return root, f"{dataset_version}:{name}:format{version}:{root.resolve()}"


def _luna_params(ct: CTOptions, dataset_version: str) -> dict[str, Any]:
    return {"kind": "luna", "hu_window": list(default_hu_window(dataset_version, ct.hu_window)),
            "nodule_hu_threshold": float(ct.nodule_hu_threshold), "crop": "body"}


def _ct_params(ct: CTOptions, cases: list[CaseFiles], dataset_version: str) -> dict[str, Any]:
    params: dict[str, Any] = {"kind": "ct", "hu_window": list(default_hu_window(dataset_version, ct.hu_window)),
                              "target_spacing": None if ct.target_spacing is None
                              else [float(v) for v in ct.target_spacing], "crop": "head"}
    if headerless(cases):  # --spacing only matters (and only keys the cache) for .npy / pickled files
        params["npy_spacing"] = [float(v) for v in ct.spacing]
    return params


def open_dataset(data_path: Path | None, dataset_version: str, *, cache_root: Path = DEFAULT_CACHE_ROOT,
                 synthetic_cases: int = 12, synthetic_size: tuple[int, int, int] | None = None,
                 synthetic_seed: int = 0, max_samples: int | None = None, require_labels: bool = True,
                 clip_percentiles: tuple[float, float] = (0.5, 99.5), ct: CTOptions | None = None,
                 progress: bool = True) -> LoadedDataset:
    """Discover, preprocess (cached) and return a dataset: its info, its cases sorted by case id, and the
    ids of the cases of separate test folders (``ct.test_image_dir``).

    With ``dataset_version="synthetic"`` (BraTS MRI), ``"synthetic_ich"`` (head CT) or ``"synthetic_luna"`` (chest
    CT, LUNA16 layout) phantoms are generated first: under ``data_path`` when given, else under
    ``cache_root/synthetic/n{N}_s{D}x{H}x{W}_seed{S}/`` (``synthetic_ct/...``, ``synthetic_luna/...``).
    ``synthetic_size`` ``None``: :func:`default_synthetic_size`. ``max_samples`` keeps the first N sorted cases
    (before preprocessing). ``clip_percentiles`` shape the BraTS preprocessing, ``ct`` (HU window, target spacing,
    layouts; LUNA16's annotation file and nodule threshold) the CT ones; ``ct.hu_window`` ``None`` takes the
    version's own window (:func:`dataio.adapters.default_hu_window`). For the LUNA16 versions the returned
    ``subsets`` maps each case id to its subset number.

    Raises:
        ValueError: unknown version, missing ``--data_path`` for a real dataset, ``--max_samples`` < 1,
            and every error of the adapters and preprocessing.
    """
    if dataset_version not in DATASET_VERSIONS:
        raise ValueError(f"unknown --dataset_version {dataset_version!r}; known: {', '.join(DATASET_VERSIONS)}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max_samples must be >= 1 (or omitted for all cases), got {max_samples}")
    cache_root = Path(cache_root).expanduser()
    ct = ct or CTOptions()
    if dataset_version in _PHANTOM_SETS:
        size = validate_synthetic_args(synthetic_cases, synthetic_size or default_synthetic_size(dataset_version),
                                       synthetic_seed)
        data_path, dataset_id = _phantoms(data_path, dataset_version, cache_root, synthetic_cases, size,
                                          synthetic_seed)
    elif dataset_version == "ich" and ct.manifest:
        dataset_id = f"manifest:{Path(ct.manifest).expanduser().resolve()}:{dataset_version}"
    elif data_path is None:
        raise ValueError(f"--data_path is required for --dataset_version {dataset_version} "
                         f"(only the phantom versions {', '.join(_PHANTOM_SETS)} work without data)")
    else:
        dataset_id = f"{Path(data_path).expanduser().resolve()}:{dataset_version}"
        if dataset_version == "luna16" and ct.annotations:  # its own entries: switching files does not evict them
            dataset_id += f":annotations={ct.annotations}"
    with deferred_input_errors() as deferred:  # cases with missing files are reported with the unreadable ones
        cases = discover_cases(None if data_path is None else Path(data_path), dataset_version,
                               require_labels=require_labels, ct=ct)
    if dataset_version in CT_VERSIONS:
        params = _ct_params(ct, cases, dataset_version)
    elif dataset_version in LUNA_VERSIONS:
        params = _luna_params(ct, dataset_version)
    else:
        params = {"clip_percentiles": [float(p) for p in clip_percentiles]}
    if max_samples is not None:
        cases = cases[:max_samples]
    cache = PreprocessedCache(cache_root)
    try:
        loaded = cache.get_or_create(cases, dataset_id, params, progress=progress)
    except InputErrors as exc:
        deferred.problems.extend(exc.problems)
    raise_if_any(deferred.problems, len(cases) + deferred.failed_items)
    logger.info("%d %s cases ready (%d preprocessed, %d from cache %s)", len(loaded), dataset_version,
                cache.stats["built"], cache.stats["reused"], cache_root)
    return LoadedDataset(info=dataset_info(dataset_version), cases=loaded,
                         test_ids=tuple(c.case_id for c in cases if c.fixed_split == "test"),
                         subsets={c.case_id: c.subset for c in cases if c.subset is not None})


def load_dataset(data_path: Path | None, dataset_version: str, *, cache_root: Path = DEFAULT_CACHE_ROOT,
                 synthetic_cases: int = 12, synthetic_size: tuple[int, int, int] | None = None,
                 synthetic_seed: int = 0, max_samples: int | None = None, require_labels: bool = True,
                 clip_percentiles: tuple[float, float] = (0.5, 99.5), ct: CTOptions | None = None,
                 progress: bool = True) -> list[CachedCase]:
    """The cached cases of :func:`open_dataset` (same arguments), sorted by case id."""
    return open_dataset(data_path, dataset_version, cache_root=cache_root, synthetic_cases=synthetic_cases,
                        synthetic_size=synthetic_size, synthetic_seed=synthetic_seed, max_samples=max_samples,
                        require_labels=require_labels, clip_percentiles=clip_percentiles, ct=ct,
                        progress=progress).cases
