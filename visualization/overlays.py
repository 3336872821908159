"""Multi-model slice overlay of one case, drawn from NIfTI files (images, ground truth, predictions).

Layout: one row per model; columns = each modality, the ground truth over the last modality, and the
model's prediction over the last modality, all on the axial slice (last array axis) of largest tumour
area (ground truth; the union of predictions when there is no ground truth). Label files are read in
their own convention (e.g. BraTS 2018-2021 with ET = 4) and coloured by internal class: NCR/NET red,
ED green, ET yellow; the legend names the file label of each colour. Reads files only (no torch).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

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


def draw_case_overlay(case_id: str, images: Mapping[str, Path], predictions: Mapping[str, Path], out_path: Path, *,
                      label: Path | None = None, convention: str = "brats2021", axis: int = 2) -> Path:
    """Draw the overlay grid of one case (see the module docstring) and save it as PNG.

    Args:
        images: modality name -> NIfTI file (columns in this order; the last one is the overlay background).
        predictions: row name (model/run) -> prediction NIfTI file, same grid as the images.
        label: ground-truth NIfTI file, or None (then the ground-truth column is left blank).

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
    cmap = _label_cmap()
    columns = [*volumes, "ground truth", "prediction"]
    fig = Figure(figsize=(2.2 * len(columns), 2.3 * len(preds) + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(preds), len(columns), squeeze=False))
    for row, (name, pred) in enumerate(preds.items()):
        for col, column in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(backgrounds.get(column, base), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            overlay = {"ground truth": truth, "prediction": pred}.get(column)
            if overlay is not None:
                ax.imshow(take(overlay), cmap=cmap, vmin=0, vmax=len(LABEL_COLOURS), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(column, fontsize="small")
        axes[row, 0].set_ylabel(name, fontsize="small")
    fig.legend(handles=legend_handles(convention), loc="outside lower center", ncol=len(LABEL_COLOURS),
               fontsize="small")
    fig.suptitle(f"{case_id}: slice {index} along axis {axis} (largest tumour area)", fontsize="medium")
    return save_figure(fig, Path(out_path))
