"""Synthetic head CT phantoms with intracranial haemorrhages (``--dataset_version synthetic_ich``).

Each case is a head in air, in Hounsfield units (HU), stored as int16 NIfTI:

=============  ==============  ==========================================================================
tissue         HU              shape
=============  ==============  ==========================================================================
air            about -1000     outside the head (clipped to [-1024, -960])
skull          700 to 1300     ellipsoidal shell (outer 10% of the head radius), smooth density texture
parenchyma     20 to 45        grey-matter band ~38 HU around white matter ~28 HU, smooth texture
CSF            0 to 15         two lateral ventricles and a sulcal rim under the skull
haemorrhage    50 to 90        0-5 per scan: irregular intraparenchymal blobs and subdural crescents
=============  ==============  ==========================================================================

Haemorrhage radii are drawn log-uniformly from 1 to 15 mm (a few voxels to thousands); scans with
index % 4 == 3 have none (a quarter), index % 4 == 1 always hold a tiny one (<= 1.5 mm, a few voxels),
index % 4 == 2 hold 3-5. The rendering blurs tissue boundaries (partial volume, sigma 0.6 voxel in-plane,
0.35 across slices) and adds Gaussian noise (sigma 2 HU); voxels inside a tissue (1 voxel from its border)
are then clipped to the tissue's range, so the table holds away from borders.

Grid: axes (D, H, W) = (in-plane, in-plane, slices), spacing 0.9-1.0 mm in-plane and 4-5 mm between slices
(drawn per case), written into the affine (``diag(spacing)``, centred on the head). Default size
64 x 64 x 16 voxels (:data:`SYNTHETIC_CT_SIZE`). Layout ``root/images/ICHSYN_XXXXX.nii.gz`` +
``root/labels/ICHSYN_XXXXX.nii.gz`` (labels uint8 0/1), read back by the real ``ich`` adapter.
Deterministic: case ``i`` uses ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from .nifti_io import save_volume
from .phantom_sets import PhantomLayout, ensure_phantom_set
from .synthetic import _coords, _ellipsoid_distance, _smooth_noise, validate_synthetic_args

logger = logging.getLogger(__name__)

CT_FORMAT_VERSION = 1
SYNTHETIC_CT_SIZE: tuple[int, int, int] = (64, 64, 16)
CT_MANIFEST_NAME = "volbench_synthetic_ct.json"
CT_INCOMPLETE_MARKER = ".volbench_synthetic_ct_incomplete"
_CASE_RE = re.compile(r"^ICHSYN_\d+\.nii\.gz$")

AIR, SKULL, CSF, GM, WM, HAEM = range(6)
TISSUE_NAMES = {AIR: "air", SKULL: "skull", CSF: "csf", GM: "grey matter", WM: "white matter", HAEM: "haemorrhage"}
# HU range of each tissue away from its borders
HU_RANGE: dict[int, tuple[float, float]] = {AIR: (-1024.0, -960.0), SKULL: (700.0, 1300.0), CSF: (0.0, 15.0),
                                           GM: (20.0, 45.0), WM: (20.0, 45.0), HAEM: (50.0, 90.0)}
_NOISE_HU = 2.0


def _case_id(index: int) -> str:
    return f"ICHSYN_{index:05d}"


def _spacing(rng: np.random.Generator) -> tuple[float, float, float]:
    in_plane = round(float(rng.uniform(0.9, 1.0)), 3)
    return (in_plane, in_plane, round(float(rng.uniform(4.0, 5.0)), 3))


def _anatomy(rng: np.random.Generator, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map (uint8) and the head's normalised radius map ``r`` (< 1 inside the head)."""
    shape = u.shape[1:]
    radii = np.array([rng.uniform(0.84, 0.92), rng.uniform(0.80, 0.90), rng.uniform(0.92, 1.02)])
    r = _ellipsoid_distance(u, np.zeros(3), radii) + 0.015 * _smooth_noise(rng, shape, 3)
    gyri = 0.03 * _smooth_noise(rng, shape, 10)
    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[r < 1.0] = SKULL
    tissue[r < 0.90] = CSF
    tissue[r + gyri < 0.87] = GM
    tissue[r + gyri < 0.72] = WM
    spread = rng.uniform(0.10, 0.16)
    for side in (-1.0, 1.0):  # two lateral ventricles, mirrored across the second (left-right) axis
        centre = np.array([rng.uniform(-0.08, 0.08), side * spread, rng.uniform(-0.1, 0.15)])
        vradii = np.array([rng.uniform(0.22, 0.32), rng.uniform(0.06, 0.10), rng.uniform(0.25, 0.4)])
        tissue[_ellipsoid_distance(u, centre, vradii) < 1.0] = CSF
    return tissue, r


def _lesion_radii_mm(rng: np.random.Generator, index: int) -> list[float]:
    """Radius (mm) of each haemorrhage of case ``index`` (see the module docstring)."""
    kind = index % 4
    if kind == 3:
        return []
    n = {0: int(rng.integers(1, 3)), 1: int(rng.integers(2, 4)), 2: int(rng.integers(3, 6))}[kind]
    radii = [float(np.exp(rng.uniform(np.log(1.0), np.log(15.0)))) for _ in range(n)]
    if kind == 1:
        radii[0] = float(rng.uniform(0.8, 1.5))
    return radii


def _add_haemorrhages(rng: np.random.Generator, u: np.ndarray, r: np.ndarray, tissue: np.ndarray,
                      spacing: tuple[float, float, float], radii_mm: list[float]) -> list[np.ndarray]:
    """Paint the haemorrhages into ``tissue`` (in place); returns each lesion's mask (for its own HU level)."""
    shape = tissue.shape
    brain = np.isin(tissue, (CSF, GM, WM)) & (r < 0.88)
    deep = np.flatnonzero(np.isin(tissue, (GM, WM)) & (r < 0.78))
    idx = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    sp = np.asarray(spacing, dtype=np.float32)
    wobble = 0.15 * _smooth_noise(rng, shape, 8)  # one irregularity field, read at each lesion's own place
    masks = []
    for radius in radii_mm:
        if radius > 4.0 and rng.random() < 0.3:  # subdural-like crescent along the inner table of the skull
            direction = rng.standard_normal(3) * np.array([1.0, 1.0, 0.3])
            direction /= np.linalg.norm(direction)
            norm = np.sqrt((u ** 2).sum(axis=0)) + 1e-6
            cosine = sum(u[i] * direction[i] for i in range(3)) / norm
            width = np.clip(radius / 60.0, 0.03, 0.08)
            lesion = brain & (r > 0.88 - width) & (cosine > np.cos(np.deg2rad(rng.uniform(20, 40))))
        else:
            centre = np.array(np.unravel_index(int(rng.choice(deep)), shape), dtype=np.float32)
            axes = radius * rng.uniform(0.7, 1.3, size=3) / sp  # voxel radii: round in mm, flat across slices
            d = np.sqrt(sum(((idx[i] - centre[i]) / axes[i]) ** 2 for i in range(3)))
            if radius > 2.0:
                d = d + wobble
            lesion = (d < 1.0) & brain
            lesion[tuple(int(c) for c in centre)] = True  # at least the centre voxel, however small
        if lesion.any():
            tissue[lesion] = HAEM
            masks.append(lesion)
    return masks


def _render(rng: np.random.Generator, tissue: np.ndarray, lesions: list[np.ndarray]) -> np.ndarray:
    """HU image: per-tissue level x smooth texture, partial-volume blur, noise, interior clipped to range."""
    shape = tissue.shape
    texture = _smooth_noise(rng, shape, 10)
    fine = _smooth_noise(rng, shape, 20)
    level = {AIR: -1000.0, SKULL: 1000.0, CSF: 7.0, GM: 38.0, WM: 28.0, HAEM: 70.0}
    amplitude = {AIR: 5.0, SKULL: 120.0, CSF: 2.5, GM: 2.5, WM: 2.5, HAEM: 5.0}
    clean = np.zeros(shape, dtype=np.float32)
    for k in level:
        inside = tissue == k
        lo, hi = HU_RANGE[k]
        clean[inside] = np.clip(level[k] + amplitude[k] * (0.7 * texture[inside] + 0.3 * fine[inside]), lo, hi)
    for mask in lesions:  # each bleed its own density (fresh blood 60-80 HU)
        inside = mask & (tissue == HAEM)
        clean[inside] = np.clip(clean[inside] + rng.uniform(-10.0, 10.0), *HU_RANGE[HAEM])
    image = ndimage.gaussian_filter(clean, sigma=(0.6, 0.6, 0.35))
    image += _NOISE_HU * rng.standard_normal(shape, dtype=np.float32)
    for k, (lo, hi) in HU_RANGE.items():
        interior = ndimage.binary_erosion(tissue == k)
        image[interior] = np.clip(image[interior], lo, hi)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def make_ct_phantom(size: tuple[int, int, int], rng: np.random.Generator, index: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One phantom: (int16 HU image, uint8 label {0, 1}, uint8 tissue map, spacing in mm)."""
    spacing = _spacing(rng)
    u = _coords(tuple(size))  # type: ignore[arg-type]
    tissue, r = _anatomy(rng, u)
    lesions = _add_haemorrhages(rng, u, r, tissue, spacing, _lesion_radii_mm(rng, index))
    image = _render(rng, tissue, lesions)
    return image, (tissue == HAEM).astype(np.uint8), tissue, spacing


def phantom_affine(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """``diag(spacing)`` with the origin such that the volume's centre sits at (0, 0, 0) mm."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(size, spacing)]
    return affine


def _case_files(root: Path, index: int) -> list[Path]:
    return [root / sub / f"{_case_id(index)}.nii.gz" for sub in ("images", "labels")]


def _existing_entries(root: Path) -> list[Path]:
    return [p for sub in ("images", "labels") if (root / sub).is_dir() for p in (root / sub).iterdir()]


LAYOUT = PhantomLayout(kind="synthetic CT phantoms", manifest_name=CT_MANIFEST_NAME,
                       incomplete_marker=CT_INCOMPLETE_MARKER, case_files=_case_files,
                       existing_entries=_existing_entries,
                       removable=lambda path: path.is_file() and bool(_CASE_RE.match(path.name)))


def ensure_synthetic_ct(root: Path, n_cases: int = 12, size: tuple[int, int, int] = SYNTHETIC_CT_SIZE,
                        seed: int = 0) -> Path:
    """Write ``n_cases`` CT phantoms under ``root/images`` + ``root/labels`` unless an identical set is there.

    A manifest (n_cases, size, seed, format version) written after every case file marks a complete set; a
    matching set is left untouched, a partial or different one is regenerated.

    Returns:
        ``root``, the ``--data_path`` of the ``ich`` folder layout.
    """
    size = validate_synthetic_args(n_cases, size, seed)
    manifest = {"format_version": CT_FORMAT_VERSION, "n_cases": int(n_cases), "size": list(size), "seed": int(seed)}

    def write_case(folder: Path, index: int) -> None:
        image, label, _, spacing = make_ct_phantom(size, np.random.default_rng([int(seed), index]), index)
        affine = phantom_affine(size, spacing)
        save_volume(folder / "images" / f"{_case_id(index)}.nii.gz", image, affine)
        save_volume(folder / "labels" / f"{_case_id(index)}.nii.gz", label, affine)

    return ensure_phantom_set(root, LAYOUT, manifest, write_case)
