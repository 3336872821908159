"""Synthetic chest CT phantoms with lung nodules (``--dataset_version synthetic_luna``), in the real LUNA16 layout.

Each case is a chest in air, in Hounsfield units (HU), stored as int16 ``.mhd`` + ``.raw`` (uncompressed):

==========  ============  =============================================================================
tissue      HU            shape
==========  ============  =============================================================================
air         about -1000   outside the body (interior clipped to [-1024, -960])
body        0 to 40       elliptic chest cross-section over every slice, smooth texture
bone        300 to 700    a vertebra behind the mediastinum (+y, posterior)
lung        -900 to -780  two ellipsoids with wobbly walls, min(2 mm, body half-width / 10) inside the body
vessel      -100 to 100   thin tubes (radius 0.6-1.4 mm) from each hilum into the lung
nodule      -100 to 100   round, lobulated or spiculated; ~35% touch the pleura (the lung wall)
==========  ============  =============================================================================

Nodule diameters are drawn log-uniformly from 3 mm to ``min(30, max(3, 1.5 x the lung's half-width))`` mm, so
tiny volumes get small nodules; scans with index % 4 == 3 have none (a quarter, negative scans), index % 4 == 2
hold 2-4, the others 1-3. Each scan also holds 0-2 tiny blobs (1.5-2.8 mm) listed in ``annotations_excluded.csv``
(about 40% with diameter -1, as in the real file) and absent from ``annotations.csv``. Rendering: partial-volume
blur, Gaussian noise (sigma 12 HU), voxels inside a tissue (1 voxel from its border) clipped to the table's
ranges, lung voxels (their border too) clipped to the lung's range, vessels stopped 0.8 diameters from a nodule's
centre, and every nodule's centre voxel in [-100, 100] HU: the chapter's mask grown at -700 HU is never empty, the
lung around a nodule stays below -700 HU and the box rarely runs along the pleura.

Geometry per case (drawn): spacing 0.6-0.8 mm in-plane and 1.25-2.5 mm between slices, a non-identity origin
and a direction matrix rotated by 3-10 degrees about z and 1-4 degrees about y (non-symmetric). Annotation
centres are written in world LPS+ mm through that geometry. Layout: ``root/subset{i % n}/<uid>.mhd + .raw``
with ``n = min(10, n_cases)`` subsets, ``annotations.csv``, ``annotations_excluded.csv`` and ``seriesuids.csv``
(no header); read back by the real ``luna16`` adapter. Default size 64 x 64 x 32 voxels (x, y, z).
Deterministic: case ``i`` uses ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .luna16 import ANNOTATIONS_NAME, EXCLUDED_NAME, SERIESUIDS_NAME, voxel_to_world
from .phantom_sets import PhantomLayout, ensure_phantom_set
from .synthetic import _smooth_noise, validate_synthetic_args

logger = logging.getLogger(__name__)

LUNA_FORMAT_VERSION = 1
SYNTHETIC_LUNA_SIZE: tuple[int, int, int] = (64, 64, 32)
LUNA_MANIFEST_NAME = "volbench_synthetic_luna.json"
LUNA_INCOMPLETE_MARKER = ".volbench_synthetic_luna_incomplete"
MAX_SUBSETS = 10
_SUBSET_RE = re.compile(r"^subset\d+$")
_CSV_NAMES = (ANNOTATIONS_NAME, EXCLUDED_NAME, SERIESUIDS_NAME)
_HEADER = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")

AIR, BODY, LUNG, BONE, VESSEL, NODULE = range(6)
HU_RANGE: dict[int, tuple[float, float]] = {AIR: (-1024.0, -960.0), BODY: (0.0, 40.0), LUNG: (-900.0, -780.0),
                                           BONE: (300.0, 700.0), VESSEL: (-100.0, 100.0), NODULE: (-100.0, 100.0)}
_LEVEL = {AIR: -1000.0, BODY: 20.0, LUNG: -850.0, BONE: 500.0, VESSEL: 30.0, NODULE: 20.0}
_TEXTURE = {AIR: 5.0, BODY: 8.0, LUNG: 15.0, BONE: 80.0, VESSEL: 15.0, NODULE: 15.0}
_NOISE_HU = 12.0
Placed = tuple[np.ndarray, float]  # a finding: continuous voxel index (x, y, z) and diameter in mm (-1: none given)


def case_id(index: int) -> str:
    """Series uid of phantom ``index`` (a ``2.25.`` UID, the root for locally made identifiers)."""
    return f"2.25.{1000000 + index}"


def n_subsets(n_cases: int) -> int:
    """Number of subset folders: one per case up to 10 (so at least 3 from 3 cases on)."""
    return max(1, min(MAX_SUBSETS, int(n_cases)))


@dataclass
class LunaPhantom:
    """One phantom: HU (x, y, z) int16, ITK geometry, and its findings as (continuous index, diameter mm)."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    nodules: list[Placed] = field(default_factory=list)
    excluded: list[Placed] = field(default_factory=list)


def _geometry(rng: np.random.Generator, size: tuple[int, int, int]
              ) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    in_plane = round(float(rng.uniform(0.6, 0.8)), 4)
    spacing = (in_plane, in_plane, round(float(rng.uniform(1.25, 2.5)), 4))
    theta = np.deg2rad(rng.uniform(3.0, 10.0) * rng.choice([-1.0, 1.0]))
    phi = np.deg2rad(rng.uniform(1.0, 4.0) * rng.choice([-1.0, 1.0]))
    rz = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[np.cos(phi), 0.0, np.sin(phi)], [0.0, 1.0, 0.0], [-np.sin(phi), 0.0, np.cos(phi)]])
    origin = (round(-(size[0] - 1) / 2 * spacing[0] + float(rng.uniform(-20, 20)), 3),
              round(-(size[1] - 1) / 2 * spacing[1] + float(rng.uniform(-20, 20)), 3),
              round(float(rng.uniform(-350.0, -100.0)), 3))
    return spacing, origin, rz @ ry


def _mm_grid(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Millimetre coordinates of the voxel centres along each axis, centred on the volume (broadcastable)."""
    axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s) for n, s in zip(size, spacing)]
    return [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]


def _index_to_mm(index: np.ndarray, size: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    return (np.asarray(index, dtype=np.float64) - (np.asarray(size) - 1) / 2.0) * np.asarray(spacing)


def _anatomy(rng: np.random.Generator, size: tuple[int, int, int], spacing: tuple[float, float, float]
             ) -> tuple[np.ndarray, float]:
    """Tissue map (uint8) without nodules, and the lungs' half-width in mm."""
    mx, my, mz = _mm_grid(size, spacing)
    bx, by = 0.46 * size[0] * spacing[0], 0.40 * size[1] * spacing[1]
    ez = size[2] * spacing[2]
    body = (mx / bx) ** 2 + (my / by) ** 2 + 0.03 * _smooth_noise(rng, size, 3) < 1.0
    tissue = np.where(body, BODY, AIR).astype(np.uint8)
    wall = ndimage.distance_transform_edt(body, sampling=spacing) > min(2.0, 0.1 * bx)
    half_width = 0.30 * bx
    wobble = 0.06 * _smooth_noise(rng, size, 5)
    lung = np.zeros(size, dtype=bool)
    for side in (-1.0, 1.0):
        centre = (side * rng.uniform(0.46, 0.50) * bx, -0.05 * by, rng.uniform(-0.1, 0.1) * ez)  # a mediastinum
        radii = (half_width * rng.uniform(0.95, 1.05), 0.68 * by, rng.uniform(0.55, 0.65) * ez)
        d = np.sqrt(sum(((m - c) / r) ** 2 for m, c, r in zip((mx, my, mz), centre, radii)))
        lung |= d + wobble < 1.0
    tissue[_two_largest(ndimage.binary_opening(lung & wall))] = LUNG  # no slivers or islands of lung
    tissue[body & ((mx / (0.13 * bx)) ** 2 + ((my - 0.72 * by) / (0.14 * by)) ** 2 < 1.0)] = BONE
    return tissue, half_width


def _two_largest(mask: np.ndarray) -> np.ndarray:
    """The two largest connected parts of ``mask`` (the lungs)."""
    labels, n = ndimage.label(mask)
    if n <= 2:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes)[-2:] + 1
    return np.isin(labels, keep)


def _add_vessels(rng: np.random.Generator, tissue: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Thin tubes from each lung's medial side (hilum) to random lung points, painted inside the lungs."""
    size: tuple[int, int, int] = tissue.shape  # type: ignore[assignment]
    grid = _mm_grid(size, spacing)
    lung = tissue == LUNG
    for side in (-1.0, 1.0):
        points = np.argwhere(lung & ((grid[0] * side) > 0))
        if len(points) == 0:
            continue
        start = _index_to_mm(points[np.argmin(np.abs(points[:, 0] - (size[0] - 1) / 2.0))], size, spacing)
        for _ in range(int(rng.integers(3, 7))):
            end = _index_to_mm(points[int(rng.integers(len(points)))], size, spacing)
            seg = end - start
            length2 = float(seg @ seg) or 1.0
            t = np.clip(sum((g - a) * b for g, a, b in zip(grid, start, seg)) / length2, 0.0, 1.0)
            dist2 = sum((g - (a + t * b)) ** 2 for g, a, b in zip(grid, start, seg))
            tissue[(dist2 < rng.uniform(0.6, 1.4) ** 2) & lung] = VESSEL


def _pick_centre(rng: np.random.Generator, lung_depth: np.ndarray, low: float, high: float,
                 taken: list[Placed], radius: float, spacing: tuple[float, float, float]
                 ) -> np.ndarray:
    """A lung voxel whose depth below the pleura (mm) lies in [low, high), away from earlier findings and the
    volume's faces; relaxed step by step when none fits."""
    inner = np.zeros(lung_depth.shape, dtype=bool)
    inner[2:-2, 2:-2, 1:-1] = True
    for lo, hi in ((low, high), (0.0, np.inf)):
        points = np.argwhere((lung_depth > lo) & (lung_depth < hi) & inner)
        far = np.ones(len(points), dtype=bool)
        for centre, other in taken:  # 1 mm apart at least (an excluded finding's diameter may be -1)
            gap = radius + max(other, 2.0) / 2.0 + 1.0
            far &= np.linalg.norm((points - centre) * np.asarray(spacing), axis=1) > gap
        pool = points[far] if far.any() else points
        if len(pool):
            return np.asarray(pool[int(rng.integers(len(pool)))], dtype=np.float64)
    return np.asarray(np.unravel_index(int(np.argmax(lung_depth)), lung_depth.shape), dtype=np.float64)


def _nodule_diameters(rng: np.random.Generator, index: int, half_width: float) -> list[float]:
    kind = index % 4
    if kind == 3:
        return []
    n = int(rng.integers(2, 5)) if kind == 2 else int(rng.integers(1, 4))
    top = float(np.clip(1.5 * half_width, 3.0, 30.0))
    return [float(np.exp(rng.uniform(np.log(3.0), np.log(top)))) if top > 3.0 else 3.0 for _ in range(n)]


def _paint_blob(rng: np.random.Generator, tissue: np.ndarray, centre: np.ndarray, diameter: float,
                spacing: tuple[float, float, float], shape_kind: str) -> None:
    """Paint an ellipsoid-like blob (``round``, ``lobulated`` or ``spiculated``) of class NODULE into the body."""
    size = tissue.shape
    grid = _mm_grid(size, spacing)  # type: ignore[arg-type]
    c_mm = _index_to_mm(centre, size, spacing)  # type: ignore[arg-type]
    axes = diameter / 2.0 * rng.uniform(0.8, 1.2, size=3)
    d = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, c_mm, axes)))
    if shape_kind == "lobulated":
        d = d + 0.15 * _smooth_noise(rng, size, 6)  # type: ignore[arg-type]
    elif shape_kind == "spiculated":
        d = d + 0.25 * _smooth_noise(rng, size, 14)  # type: ignore[arg-type]
    tissue[(d < 1.0) & (tissue != AIR)] = NODULE
    tissue[tuple(np.round(centre).astype(int))] = NODULE


def _clear_vessels(tissue: np.ndarray, centre: np.ndarray, radius_mm: float,
                   spacing: tuple[float, float, float]) -> None:
    """Vessels stop short of a nodule: vessel voxels within ``radius_mm`` of ``centre`` become lung again."""
    lo = np.maximum(0, np.floor(centre - radius_mm / np.asarray(spacing))).astype(int)
    hi = np.minimum(tissue.shape, np.ceil(centre + radius_mm / np.asarray(spacing)) + 1).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)], indexing="ij")
    near = sum(g ** 2 for g in grid) < radius_mm ** 2
    region = tissue[box]
    region[near & (region == VESSEL)] = LUNG


def _add_findings(rng: np.random.Generator, tissue: np.ndarray, index: int, half_width: float,
                  spacing: tuple[float, float, float]) -> tuple[list[Placed], list[Placed]]:
    """Nodules and excluded blobs: painted into ``tissue``; returned as (continuous index, diameter mm) lists."""
    depth = ndimage.distance_transform_edt(np.isin(tissue, (LUNG, VESSEL)), sampling=spacing)
    nodules: list[Placed] = []
    for diameter in _nodule_diameters(rng, index, half_width):
        radius = diameter / 2.0
        pleural = rng.random() < 0.35
        low, high = (0.25 * radius, 0.75 * radius) if pleural else (1.1 * radius, np.inf)
        voxel = _pick_centre(rng, depth, low, high, nodules, radius, spacing)
        _clear_vessels(tissue, voxel, 1.6 * radius, spacing)
        _paint_blob(rng, tissue, voxel, diameter, spacing, str(rng.choice(["round", "lobulated", "spiculated"])))
        nodules.append((voxel + rng.uniform(-0.2, 0.2, size=3), round(diameter, 2)))
    excluded: list[Placed] = []
    for _ in range(int(rng.integers(0, 3))):
        diameter = float(rng.uniform(1.5, 2.8))
        voxel = _pick_centre(rng, depth, diameter, np.inf, nodules + excluded, diameter / 2.0, spacing)
        _paint_blob(rng, tissue, voxel, diameter, spacing, "round")
        excluded.append((voxel, round(diameter, 2) if rng.random() > 0.4 else -1.0))
    return nodules, excluded


def _render(rng: np.random.Generator, tissue: np.ndarray, centres: list[np.ndarray]) -> np.ndarray:
    """HU image: per-tissue level x smooth texture, partial-volume blur, noise, interiors clipped to range."""
    texture = _smooth_noise(rng, tissue.shape, 10)
    clean = np.zeros(tissue.shape, dtype=np.float32)
    for k, level in _LEVEL.items():
        inside = tissue == k
        offset = rng.uniform(-60.0, 60.0) if k == NODULE else 0.0
        clean[inside] = np.clip(level + offset + _TEXTURE[k] * texture[inside], *HU_RANGE[k])
    image = ndimage.gaussian_filter(clean, sigma=(0.5, 0.5, 0.3))
    image += _NOISE_HU * rng.standard_normal(tissue.shape, dtype=np.float32)
    for k, (lo, hi) in HU_RANGE.items():
        interior = ndimage.binary_erosion(tissue == k)
        image[interior] = np.clip(image[interior], lo, hi)
    lung = tissue == LUNG  # its border too: the partial volume goes to the other side, lung stays below -700 HU
    image[lung] = np.clip(image[lung], *HU_RANGE[LUNG])
    for centre in centres:  # the chapter's mask needs the annotated voxel above -700 HU
        voxel = tuple(np.round(centre).astype(int))
        image[voxel] = np.clip(image[voxel], *HU_RANGE[NODULE])
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def make_luna_phantom(size: tuple[int, int, int], rng: np.random.Generator, index: int = 0) -> LunaPhantom:
    """One phantom (module docstring): HU volume (x, y, z), geometry, nodules and excluded findings."""
    size = tuple(int(s) for s in size)  # type: ignore[assignment]
    spacing, origin, direction = _geometry(rng, size)
    tissue, half_width = _anatomy(rng, size, spacing)
    _add_vessels(rng, tissue, spacing)
    nodules, excluded = _add_findings(rng, tissue, index, half_width, spacing)
    hu = _render(rng, tissue, [c for c, _ in nodules])
    return LunaPhantom(hu=hu, spacing=spacing, origin=origin, direction=direction, nodules=nodules,
                       excluded=excluded)


def write_mhd(path: Path, hu: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float],
              direction: np.ndarray) -> None:
    """Write an (x, y, z) int16 volume as ``.mhd`` + uncompressed ``.raw`` with its ITK geometry."""
    import SimpleITK as sitk  # here: importing SimpleITK takes ~0.2 s, which only LUNA16 runs need

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(hu).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(v) for v in np.asarray(direction, dtype=np.float64).ravel()])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=False)


def _rows(uid: str, phantom: LunaPhantom, findings: list[Placed]) -> list[list[str]]:
    rows = []
    for centre, diameter in findings:
        world = voxel_to_world(centre, phantom.origin, phantom.spacing, phantom.direction)
        rows.append([uid, *(f"{v:.6f}" for v in world), f"{diameter:g}"])
    return rows


def _write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] | None) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _layout(n_cases: int) -> PhantomLayout:
    subsets = n_subsets(n_cases)

    def case_files(root: Path, index: int) -> list[Path]:
        folder = root / f"subset{index % subsets}"
        return [folder / f"{case_id(index)}.mhd", folder / f"{case_id(index)}.raw", *(root / n for n in _CSV_NAMES)]

    def existing_entries(root: Path) -> list[Path]:
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if (p.is_dir() and _SUBSET_RE.match(p.name)) or p.name in _CSV_NAMES)

    return PhantomLayout(kind="synthetic LUNA16 phantoms", manifest_name=LUNA_MANIFEST_NAME,
                         incomplete_marker=LUNA_INCOMPLETE_MARKER, case_files=case_files,
                         existing_entries=existing_entries)


def ensure_synthetic_luna(root: Path, n_cases: int = 12, size: tuple[int, int, int] = SYNTHETIC_LUNA_SIZE,
                          seed: int = 0) -> Path:
    """Write ``n_cases`` phantoms in the LUNA16 layout under ``root`` unless an identical set is there.

    A manifest (n_cases, size, seed, format version) written after every file marks a complete set; a matching set
    is left untouched, a partial or different one is regenerated (files volbench did not write are refused).

    Returns:
        ``root``, the ``--data_path`` of the ``luna16`` layout.
    """
    size = validate_synthetic_args(n_cases, size, seed)
    manifest = {"format_version": LUNA_FORMAT_VERSION, "n_cases": int(n_cases), "size": list(size), "seed": int(seed)}
    subsets = n_subsets(n_cases)
    annotations: list[list[str]] = []
    excluded: list[list[str]] = []

    def write_case(folder: Path, index: int) -> None:
        phantom = make_luna_phantom(size, np.random.default_rng([int(seed), index]), index)
        uid = case_id(index)
        write_mhd(folder / f"subset{index % subsets}" / f"{uid}.mhd", phantom.hu, phantom.spacing, phantom.origin,
                  phantom.direction)
        annotations.extend(_rows(uid, phantom, phantom.nodules))
        excluded.extend(_rows(uid, phantom, phantom.excluded))
        if index == n_cases - 1:  # cases come in order 0 .. n-1: the tables go last, before the manifest
            _write_csv(folder / ANNOTATIONS_NAME, annotations, _HEADER)
            _write_csv(folder / EXCLUDED_NAME, excluded, _HEADER)
            _write_csv(folder / SERIESUIDS_NAME, [[case_id(i)] for i in range(n_cases)], None)

    return ensure_phantom_set(root, _layout(n_cases), manifest, write_case)
