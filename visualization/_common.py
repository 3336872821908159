"""Shared helpers for the charts: read result CSVs, keep ok runs, find region columns, save figures.

Everything here works on pandas frames read from a results directory; nothing imports the runner,
the models or torch, and nothing global (pyplot state, rcParams) is touched.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from utils.atomic import atomic_path
from utils.schema import (ATTENTION_CSV, BRATS_CLASS_NAMES, BRATS_REGION_NAMES, COMPARISON_CSV, EPOCHS_CSV,  # noqa: F401
                          PER_CASE_CSV, RUN_KEYS, RUNS_CSV, is_per_click)

logger = logging.getLogger(__name__)

RESULTS_CSV = RUNS_CSV
MODALITY_CSV = ATTENTION_CSV

DPI = 120
BRATS_REGIONS = BRATS_REGION_NAMES
_CLASS_COLUMNS = ("mean", *BRATS_CLASS_NAMES)


def read_csv(results_dir: Path, name: str) -> pd.DataFrame | None:
    """Read ``results_dir/name``; return None (and log why) when it is missing, unreadable or empty."""
    path = Path(results_dir) / name
    if not path.is_file():
        logger.info("skipping chart: %s not found", path)
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as exc:
        logger.warning("skipping chart: cannot read %s (%s)", path, exc)
        return None
    if frame.empty or "model" not in frame.columns:
        logger.info("skipping chart: %s has no rows or no 'model' column", path)
        return None
    frame["model"] = frame["model"].astype(str)
    return frame


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose ``status`` is "ok" (case- and space-insensitive); all rows if there is no status."""
    if "status" not in frame.columns:
        return frame
    status = frame["status"].astype(str).str.strip().str.lower()
    return frame[status == "ok"]


def load_ok_results(results_dir: Path) -> pd.DataFrame | None:
    """The ok rows of ``integrated_experiment_results.csv``, or None (logged) when there are none."""
    frame = read_csv(results_dir, RESULTS_CSV)
    if frame is None:
        return None
    ok = ok_rows(frame)
    if ok.empty:
        logger.info("skipping chart: no ok rows in %s", Path(results_dir) / RESULTS_CSV)
        return None
    return ok


def _norm_key(value: object) -> str:
    """Normalise a seed/fold cell so that 1, 1.0 and "1" match and empty/NaN becomes ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value).strip()
    if text.lower() in ("", "nan", "none"):
        return ""
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def run_keys(frame: pd.DataFrame) -> pd.Series:
    """One string key per row identifying the run (model, seed, fold); missing columns count as ""."""
    parts = []
    for column in RUN_KEYS:
        if column in frame.columns:
            parts.append(frame[column].map(_norm_key))
        else:
            parts.append(pd.Series("", index=frame.index))
    key = parts[0].astype(str)
    for part in parts[1:]:
        key = key + "|" + part.astype(str)
    return key


def keep_ok_runs(results_dir: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of a per-epoch/per-case frame that belong to runs whose status is ok.

    The run status lives in ``integrated_experiment_results.csv``; when that file is missing the
    frame's own ``status`` column (if any) is used and otherwise every row is kept.
    """
    frame = ok_rows(frame)
    results = read_csv(results_dir, RESULTS_CSV)
    if results is None or "status" not in results.columns:
        logger.info("no run statuses available; keeping all rows")
        return frame
    ok_keys = set(run_keys(ok_rows(results)))
    return frame[run_keys(frame).isin(ok_keys)]


def detect_regions(
    columns: Iterable[str], regions: Sequence[str] | None = None, prefix: str = "dice_"
) -> list[str]:
    """Region names whose ``{prefix}{region}`` column exists.

    With ``regions`` given, keep those present (warning about the rest). Otherwise use wt/tc/et when
    any is present, else every ``{prefix}*`` column except the mean and the ncr/ed class columns.
    """
    cols = [str(c) for c in columns]
    present = set(cols)
    if regions is not None:
        found = [r for r in regions if f"{prefix}{r}" in present]
        missing = [r for r in regions if f"{prefix}{r}" not in present]
        if missing:
            logger.warning("region columns not found for %s: %s", prefix, missing)
        return found
    brats = [r for r in BRATS_REGIONS if f"{prefix}{r}" in present]
    if brats:
        return brats
    found = []
    for col in cols:
        if col.startswith(prefix):
            name = col[len(prefix):]
            if name and name not in _CLASS_COLUMNS and not name.endswith(("_mean", "_std")) and not is_per_click(col):
                found.append(name)
    return found


def numeric(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Copy of ``frame`` with the given existing columns coerced to float (bad cells become NaN)."""
    out = frame.copy()
    for col in columns:
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    return out


def dice_mean_column(frame: pd.DataFrame, regions: Sequence[str], prefix: str = "dice_") -> pd.Series:
    """``{prefix}mean`` when present and not all NaN, else the nanmean over the region columns."""
    column = f"{prefix}mean"
    if column in frame.columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().any():
            return values
    cols = [f"{prefix}{r}" for r in regions if f"{prefix}{r}" in frame.columns]
    if not cols:
        return pd.Series(np.nan, index=frame.index)
    return frame[cols].apply(pd.to_numeric, errors="coerce").mean(axis=1, skipna=True)


def per_model_stats(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and std (ddof=1, NaN for one run) over runs of each column, indexed by model (sorted)."""
    cols = [c for c in columns if c in frame.columns]
    data = numeric(frame[["model", *cols]], cols)
    grouped = data.groupby("model", sort=True)[cols]
    return grouped.mean(), grouped.std()


def model_colors(models: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A distinct colour per model: tab10 up to 10 models, tab20 up to 20, then a sampled turbo map."""
    n = len(models)
    if n <= 10:
        cmap = colormaps["tab10"]
        return {m: cmap(i) for i, m in enumerate(models)}
    if n <= 20:
        cmap = colormaps["tab20"]
        return {m: cmap(i) for i, m in enumerate(models)}
    cmap = colormaps["turbo"]
    return {m: cmap(i / max(n - 1, 1)) for i, m in enumerate(models)}


def rotate_labels(ax: object, n_labels: int) -> None:
    """Rotate x tick labels so 1..30 model names stay readable."""
    if n_labels > 15:
        ax.tick_params(axis="x", labelrotation=90)
    elif n_labels > 1:  # long registry names overlap even in pairs on half-width panels
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def no_data(ax: object, message: str) -> None:
    """Mark an axis as empty with a centred message."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG at ``DPI`` atomically and return ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI, bbox_inches="tight")
    logger.info("wrote %s", path)
    return path


def plotly_color(rgba: Sequence[float], alpha: float | None = None) -> str:
    """A matplotlib RGBA tuple (0-1 floats) as a CSS colour for plotly: ``rgb(r,g,b)`` or ``rgba(r,g,b,a)``."""
    r, g, b = (int(round(255 * c)) for c in rgba[:3])
    return f"rgb({r},{g},{b})" if alpha is None else f"rgba({r},{g},{b},{alpha:g})"
