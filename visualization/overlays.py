"""Multi-model slice overlay of one case, drawn from NIfTI files (images, ground truth, predictions).

Layout: the top row shows each modality once and the ground truth over the last modality; below it, one
panel per model/run with its prediction over the last modality, titled with the run and its per-case
Dice (wrapped into rows as wide as the top row). All panels show the axial slice (last array axis) of
largest tumour area (ground truth; the union of predictions when there is no ground truth). Label files
are read in their own convention (e.g. BraTS 2018-2021 with ET = 4) and coloured by internal class:
NCR/NET red, ED green, ET yellow; the legend names the file label of each colour. Reads files only (no torch).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dataio.conventions import from_internal, to_internal
from dataio.nifti_io import load_label, load_volume
from visualization._common import save_figure

logger = logging.getLogger(__name__)

# internal label -> (name, RGB)
LABEL_COLOURS: dict[int, tuple[str, tuple[float, float, float]]] = {
    1: ("NCR/NET", (0.90, 0.10, 0.10)),
    2: ("ED", (0.10, 0.80, 0.20)),
    3: ("ET", (1.00, 0.85, 0.00)),
}
ALPHA = 0.5


def dice_text(row: Mapping[str, Any] | None) -> str:
    """``"Dice WT 0.912  TC 0.801  ET n/a"`` from a per-case row (regions in column order; n/a = NaN): the text under
    a run's panel."""
    if not row:
        return "no label"
    classes = ("mean", "ncr", "ed")
    parts = [f"{k[5:].upper()} {'n/a' if _nan(v) else f'{float(v):.3f}'}" for k, v in row.items()
             if k.startswith("dice_") and k[5:] not in classes]
    return "Dice " + "  ".join(parts) if parts else "no Dice"


def _nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def largest_area_slice(mask: np.ndarray, axis: int = 2) -> int:
    """Index along ``axis`` of the slice with the most foreground voxels (the middle one when empty)."""
    areas = np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
    return int(np.argmax(areas)) if areas.any() else mask.shape[axis] // 2


def _display(slice_2d: np.ndarray) -> np.ndarray:
    """Radiological-style view of a (i, j) slice: j up, i across."""
    return np.rot90(slice_2d)


def _normalised(image: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] with the 1st/99th percentiles of the non-zero voxels."""
    values = image[image != 0]
    if values.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    lo, hi = np.percentile(values, (1, 99))
    return np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1).astype(np.float32)


def _label_cmap() -> ListedColormap:
    colours = [(0, 0, 0, 0)] + [(*LABEL_COLOURS[k][1], ALPHA) for k in sorted(LABEL_COLOURS)]
    return ListedColormap(colours)


def _read_labels(path: Path, convention: str, shape: tuple[int, ...]) -> np.ndarray:
    array, _, _ = load_label(path)
    if array.shape != shape:
        raise ValueError(f"label file {path} has shape {array.shape}; the images have {shape}")
    return to_internal(array, convention, source=str(path))


def legend_handles(convention: str) -> list[Patch]:
    """One patch per class, named with its file label in ``convention`` (e.g. ``ET (4)``)."""
    internal = np.array(sorted(LABEL_COLOURS), dtype=np.uint8)
    file_labels = from_internal(internal, convention)
    return [Patch(color=LABEL_COLOURS[int(k)][1], label=f"{LABEL_COLOURS[int(k)][0]} ({int(v)})")
            for k, v in zip(internal, file_labels)]


def overlay_figure(case_id: str, images: Mapping[str, Path], predictions: Mapping[str, Path], *,
                   label: Path | None = None, convention: str = "brats2021", axis: int = 2,
                   scores: Mapping[str, str] | None = None) -> Figure:
    """The overlay grid of one case (see the module docstring) as a figure.

    Args:
        images: modality name -> NIfTI file (top row, in this order; the last one is the overlay background).
        predictions: panel name (model/run) -> prediction NIfTI file, same grid as the images.
        label: ground-truth NIfTI file, or None (then the ground-truth panel says so).
        scores: panel name -> text under its name, e.g. the run's per-case Dice of this case.

    Raises:
        ValueError: no images or predictions, or a file whose shape differs from the first image's.
    """
    if not images or not predictions:
        raise ValueError(f"case {case_id}: an overlay needs at least one image and one prediction")
    volumes = {m: load_volume(p)[0] for m, p in images.items()}
    shape = next(iter(volumes.values())).shape
    for m, v in volumes.items():
        if v.shape != shape:
            raise ValueError(f"case {case_id}: image {images[m]} has shape {v.shape}; expected {shape}")
    preds = {name: _read_labels(Path(p), convention, shape) for name, p in predictions.items()}
    truth = _read_labels(Path(label), convention, shape) if label is not None else None
    focus = truth if truth is not None else np.any(np.stack(list(preds.values())) > 0, axis=0)
    index = largest_area_slice(focus > 0, axis)
    take = lambda a: _display(np.take(a, index, axis=axis))  # noqa: E731
    backgrounds = {m: take(_normalised(v)) for m, v in volumes.items()}
    base = backgrounds[list(volumes)[-1]]
    ncols = len(volumes) + 1
    rows = 1 + math.ceil(len(preds) / ncols)
    fig = Figure(figsize=(2.2 * ncols, 2.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, ncols, squeeze=False)
    panels = [(m, backgrounds[m], None) for m in volumes]
    panels.append(("ground truth" if truth is not None else "no ground truth", base, truth))
    panels += [(f"{name}\n{(scores or {}).get(name, '')}".strip(), base, pred) for name, pred in preds.items()]
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, background, overlay) in zip(axes.flat, panels):
        ax.imshow(background, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if overlay is not None:
            ax.imshow(take(overlay), cmap=_label_cmap(), vmin=0, vmax=len(LABEL_COLOURS), interpolation="nearest")
        ax.set_title(title, fontsize="small")
    fig.legend(handles=legend_handles(convention), loc="outside lower center", ncol=len(LABEL_COLOURS),
               fontsize="small")
    fig.suptitle(f"{case_id}: slice {index} along axis {axis} (largest tumour area); top: inputs and ground "
                 f"truth, below: each run's prediction over {list(volumes)[-1]}", fontsize="medium")
    return fig


def draw_case_overlay(case_id: str, images: Mapping[str, Path], predictions: Mapping[str, Path], out_path: Path, *,
                      label: Path | None = None, convention: str = "brats2021", axis: int = 2,
                      scores: Mapping[str, str] | None = None) -> Path:
    """Draw :func:`overlay_figure` of one case and save it as PNG at ``out_path``."""
    fig = overlay_figure(case_id, images, predictions, label=label, convention=convention, axis=axis, scores=scores)
    return save_figure(fig, Path(out_path))
