"""Released or earlier weights as a model's starting point: ``--pretrained_checkpoint`` entries, reading a
checkpoint safely, and loading it with every missing, unexpected or mis-shaped key named.

Entries: ``PATH`` (every model) or ``MODEL=PATH`` (that model only; it overrides a bare ``PATH`` for it).

Formats read (the first that applies):

- a volbench checkpoint (:func:`utils.checkpoint.save_checkpoint`): its ``state_dict``;
- a training dict with ``model_state_dict`` beside other keys (``epoch``, ``optimizer_state_dict``,
  ``args``, ...): SAM-Med3D's training and released checkpoints;
- a dict with ``state_dict``;
- a bare state dict (every value a tensor).

A ``module.`` prefix on every key (a DDP-wrapped model's state dict) is stripped. Files are read with
``torch.load(weights_only=True, map_location="cpu")`` allowing, besides tensors and plain data, only
``argparse.Namespace`` and NumPy scalars and numeric dtypes (:data:`SAFE_GLOBALS`); any other object is
refused unless ``allow_pickle`` (``--allow_pickle_checkpoint``). Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

log = logging.getLogger("volbench.pretrained")

FLAG = "--pretrained_checkpoint"
PICKLE_FLAG = "--allow_pickle_checkpoint"
_ENTRY = re.compile(r"^([A-Za-z0-9_]+)=(.+)$")  # registry names are [A-Za-z0-9_]+
_SHOWN = 10  # names listed in an error before "... (N in all)"

# numeric NumPy dtype classes (NumPy >= 1.25 pickles a dtype through its class); C-named aliases included
_DTYPE_NAMES = ("BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType",
                "UInt32DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType", "LongDoubleDType",
                "Complex64DType", "Complex128DType", "CLongDoubleDType", "ByteDType", "UByteDType", "ShortDType",
                "UShortDType", "IntDType", "UIntDType", "LongDType", "ULongDType", "LongLongDType", "ULongLongDType")


def _numpy_scalar() -> Any:
    """``numpy._core.multiarray.scalar`` (NumPy 2) or ``numpy.core.multiarray.scalar`` (NumPy 1)."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module).scalar
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy's multiarray.scalar was not found")  # pragma: no cover


def _safe_globals() -> list[Any]:
    """The globals allowed besides torch's defaults; NumPy's scalar under both its NumPy 1 and 2 names, so a
    file written under either NumPy loads under the other."""
    scalar = _numpy_scalar()
    try:
        dtypes: Any = importlib.import_module("numpy.dtypes")
    except ImportError:  # NumPy < 1.25 pickles every dtype as numpy.dtype
        dtypes = None
    classes = {getattr(dtypes, n) for n in _DTYPE_NAMES if hasattr(dtypes, n)}
    return [argparse.Namespace, np.dtype, (scalar, "numpy._core.multiarray.scalar"),
            (scalar, "numpy.core.multiarray.scalar"), *sorted(classes, key=lambda c: c.__name__)]


SAFE_GLOBALS: list[Any] = _safe_globals()


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did: ``loaded`` tensors copied into the model, the model's ``missing``
    keys (always empty: a missing weight is an error) and the file's ``unexpected`` keys (ignored)."""

    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


# ---------------------------------------------------------------- MODEL=PATH entries

def parse_pretrained(entries: str | Sequence[str] | None) -> dict[str | None, Path]:
    """``--pretrained_checkpoint`` entries -> ``{model name or None (every model): file}``.

    Raises:
        ValueError: an entry is empty, two entries name one model (or two bare paths), or a file is missing.
    """
    if entries is None:
        return {}
    mapping: dict[str | None, Path] = {}
    for entry in [entries] if isinstance(entries, str) else entries:
        if not entry.strip():
            raise ValueError(f"{FLAG}: an entry is empty; give PATH or MODEL=PATH")
        match = _ENTRY.match(entry)
        model, path = (match.group(1), Path(match.group(2))) if match else (None, Path(entry))
        if model in mapping:
            which = f"model {model!r}" if model else "every model (bare PATH)"
            raise ValueError(f"{FLAG}: two entries for {which}: {mapping[model]} and {path}; give one")
        if not path.is_file():
            raise ValueError(f"{FLAG} {entry}: file {path} does not exist")
        mapping[model] = path
    return mapping


def check_pretrained_models(mapping: dict[str | None, Path], models: Iterable[str]) -> None:
    """Refuse a ``MODEL=PATH`` entry whose model is not among the sweep's resolved ``models``."""
    resolved = list(models)
    unknown = sorted(m for m in mapping if m is not None and m not in resolved)
    if unknown:
        raise ValueError(f"{FLAG}: {', '.join(repr(m) for m in unknown)} not in --models (resolved: "
                         f"{', '.join(resolved)})")


def pretrained_for(model: str, mapping: dict[str | None, Path]) -> Path | None:
    """The file ``model`` starts from: its own ``MODEL=PATH`` entry, else the bare ``PATH``, else None."""
    return mapping.get(model, mapping.get(None))


# ---------------------------------------------------------------- reading a file

def _refused_type(exc: Exception) -> str | None:
    """The global torch's weights-only unpickler refused, read from its message; None for other failures."""
    for pattern in (r"GLOBAL ([\w.]+) was not an allowed global", r"but got <class '([\w.]+)'>"):
        match = re.search(pattern, str(exc))
        if match:
            return match.group(1)
    return None


def _reason(exc: Exception) -> str:
    """One line of a load failure: torch's ``WeightsUnpickler error: ...`` line if present, else the message."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return match.group(1).strip() if match else " ".join(text.split()) or type(exc).__name__


def read_checkpoint(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Any:
    """The unpickled content of ``path`` on the CPU (weights-only unless ``allow_pickle``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the refused type and ``--allow_pickle_checkpoint``, or why it is unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{FLAG} {path} does not exist")
    if allow_pickle:
        log.warning("%s: loading %s with full unpickling (weights_only=False), which runs any code stored in "
                    "the file; only for files you trust", PICKLE_FLAG, path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for a refused global; other types for corrupt files
        refused = _refused_type(exc)
        if refused is None:
            raise ValueError(f"{FLAG} {path} cannot be read: {_reason(exc)}") from exc
        raise ValueError(f"{FLAG} {path} holds a {refused} object, which safe loading (weights_only=True) "
                         f"refuses; if you trust the file, add {PICKLE_FLAG} (full unpickling runs code stored "
                         "in it)") from exc


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def extract_state_dict(payload: Any, path: str | os.PathLike[str] = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The state dict inside a read checkpoint (formats in the module docstring), ``module.`` prefix stripped."""
    state = None
    if isinstance(payload, dict):
        for key in ("model_state_dict", "state_dict"):
            if _is_state_dict(payload.get(key)):
                state = payload[key]
                break
        if state is None and _is_state_dict(payload):
            state = payload
    if state is None:
        keys = sorted(map(str, payload))[:_SHOWN] if isinstance(payload, dict) else []
        raise ValueError(f"{FLAG} {path} holds no state dict (a {type(payload).__name__}"
                         f"{' with keys ' + ', '.join(keys) if keys else ''}); expected model_state_dict, "
                         "state_dict or a dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


# ---------------------------------------------------------------- loading into a model

def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown if len(keys) <= _SHOWN else f"{shown}, ... ({len(keys)} in all)"


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], *, allow_pickle: bool = False) -> LoadReport:
    """Copy the weights in ``path`` into ``model`` (in place) and report what was loaded.

    Every persistent parameter and buffer of ``model`` must be in the file with the same shape; non-persistent
    buffers are not weights and are never asked for. Keys of the file the model lacks are logged as a warning
    and ignored. Only after those checks is ``load_state_dict(strict=False)`` called; nothing re-initialises
    the weights afterwards. Nothing is downloaded.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsafe content (see :func:`read_checkpoint`), no state dict, missing keys (up to 10 names and
            the count) or shape mismatches (each key with the model's and the file's shape).
    """
    state = extract_state_dict(read_checkpoint(path, allow_pickle=allow_pickle), path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"{FLAG} {path} lacks {len(missing)} weight(s) of the model: {_names(missing)}")
    mismatched = [f"{k}: model {tuple(v.shape)}, file {tuple(state[k].shape)}"
                  for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if mismatched:
        raise ValueError(f"{FLAG} {path}: {len(mismatched)} shape mismatch(es): {_names(mismatched)}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        log.warning("%s %s: %d key(s) the model lacks, ignored: %s", FLAG, path, len(unexpected), _names(unexpected))
    model.load_state_dict({k: state[k] for k in expected}, strict=False)
    return LoadReport(loaded=len(expected), missing=(), unexpected=tuple(unexpected))
