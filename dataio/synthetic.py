"""Synthetic brain-tumour MRI phantoms in the BraTS 2021 layout (for runs without real data, and tests).

Each case is a head-shaped ellipsoid: thin scalp rim, dark skull layer, brain with white matter, a
grey-matter cortex band, CSF (ventricles and a sulcal rim), smooth tissue texture, a multiplicative
bias field per sequence and Rician noise; 0 outside the head. 1-3 irregular tumours each hold a necrotic
core (label 1), an enhancing rim (label 4) and surrounding oedema (label 2), as in BraTS 2018-2021.
Every 4th case (index % 4 == 3) holds one small lesion (a few hundred voxels at 64^3).

Relative intensities (white matter ~1 on T1) follow real MRI: T1 WM > GM > CSF; T2 CSF bright; FLAIR
CSF dark and WM < GM; ET bright on T1ce; oedema bright on FLAIR/T2; necrosis dark on T1ce, bright on T2.
Files are int16 (intensity x 1000, >= 1 inside the head) with a 1 mm diagonal affine.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from .phantom_sets import PhantomLayout, ensure_phantom_set
from .nifti_io import save_volume
from .types import MODALITY_ORDER

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INNER_FOLDER = "BraTS2021_Training_Data"
MANIFEST_NAME = "volbench_synthetic.json"
INCOMPLETE_MARKER = ".volbench_synthetic_incomplete"
_CASE_RE = re.compile(r"^BraTS2021_(\d+)$")

# tissue classes of the phantom (index into the intensity table)
BG, SCALP, SKULL, CSF, GM, WM, NCR, ED, ET = range(9)
_INTENSITY: dict[str, tuple[float, ...]] = {
    #         bg   scalp skull csf   gm    wm    ncr   ed    et
    "t1":    (0.0, 0.90, 0.10, 0.30, 0.75, 1.00, 0.65, 0.85, 0.85),
    "t1ce":  (0.0, 0.90, 0.10, 0.30, 0.78, 1.00, 0.35, 0.88, 1.70),
    "t2":    (0.0, 0.60, 0.08, 1.50, 0.65, 0.45, 1.35, 1.10, 0.90),
    "flair": (0.0, 0.70, 0.08, 0.15, 0.75, 0.60, 0.70, 1.40, 1.10),
}
_LABEL_OF_CLASS = {NCR: 1, ED: 2, ET: 4}


def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix aligning voxel centres (clamped at the borders)."""
    x_out = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    return np.stack([np.interp(x_out, np.arange(n_in), np.eye(n_in)[j]) for j in range(n_in)], axis=1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Zero-mean, unit-std smooth field with about ``cells`` blobs per axis (low-res noise, blurred, upsampled).

    Upsampled with separable interpolation matrices (einsum): ~10x faster than ``ndimage.zoom`` here.
    """
    low_shape = tuple(max(4, round(cells * s / max(shape))) for s in shape)
    low = ndimage.gaussian_filter(rng.standard_normal(low_shape), sigma=1.0, mode="wrap").astype(np.float32)
    m0, m1, m2 = (_upsample_matrix(s, ls).astype(np.float32) for s, ls in zip(shape, low_shape))
    field = np.einsum("ai,bj,ck,ijk->abc", m0, m1, m2, low, optimize=True)
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _coords(shape: tuple[int, int, int]) -> np.ndarray:
    """(3, D, H, W) coordinates normalised to [-1, 1] along each axis (voxel centres)."""
    axes = [((np.arange(s, dtype=np.float32) + 0.5) / s) * 2 - 1 for s in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _ellipsoid_distance(u: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid distance: < 1 inside the ellipsoid."""
    return np.sqrt(sum(((u[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))


def _anatomy(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    """Tissue class map (uint8): scalp rim, skull, sulcal CSF, cortex (GM), WM, ventricles."""
    shape = u.shape[1:]
    head_r = rng.uniform(0.84, 0.94, size=3)
    r = _ellipsoid_distance(u, np.zeros(3), head_r) + 0.02 * _smooth_noise(rng, shape, 3)
    gyri = 0.035 * _smooth_noise(rng, shape, 10)
    tissue = np.full(shape, BG, dtype=np.uint8)
    tissue[r < 1.0] = SCALP
    tissue[r < 0.94] = SKULL
    tissue[r < 0.88] = CSF
    tissue[r + gyri < 0.85] = GM
    tissue[r + gyri < 0.70] = WM
    spread = rng.uniform(0.10, 0.15)
    for side in (-1.0, 1.0):  # two lateral ventricles, mirrored across the second axis
        centre = np.array([rng.uniform(-0.05, 0.05), side * spread, rng.uniform(0.0, 0.1)])
        radii = np.array([rng.uniform(0.22, 0.30), rng.uniform(0.06, 0.09), rng.uniform(0.10, 0.15)])
        tissue[_ellipsoid_distance(u, centre, radii) < 1.0] = CSF
    return tissue


def _add_tumours(rng: np.random.Generator, u: np.ndarray, tissue: np.ndarray, small: bool) -> None:
    """Paint 1-3 irregular tumours (NCR core, ET rim, ED halo) into ``tissue`` in place, inside the brain."""
    shape = tissue.shape
    brain = np.isin(tissue, (CSF, GM, WM))
    parenchyma = np.isin(tissue, (GM, WM))
    n_tumours = 1 if small else int(rng.integers(1, 4))
    for _ in range(n_tumours):
        radius = rng.uniform(0.07, 0.09) if small else rng.uniform(0.10, 0.19)
        radii = radius * rng.uniform(0.75, 1.25, size=3)
        centre = rng.uniform(-0.45, 0.45, size=3)
        d = _ellipsoid_distance(u, centre, radii) + 0.15 * _smooth_noise(rng, shape, 8)
        oedema_extent = rng.uniform(1.6, 1.8) if small else rng.uniform(1.4, 2.1)
        d_oedema = d + 0.25 * _smooth_noise(rng, shape, 6)
        tissue[(d_oedema < oedema_extent) & parenchyma & (tissue != NCR) & (tissue != ET)] = ED
        tissue[(d < 1.0) & brain & (tissue != NCR)] = ET
        tissue[(d < rng.uniform(0.5, 0.65)) & brain] = NCR


def _render(rng: np.random.Generator, tissue: np.ndarray, texture: np.ndarray) -> dict[str, np.ndarray]:
    """Images per modality: class intensities x texture, partial-volume blur, bias field, Rician noise."""
    head = tissue != BG
    images = {}
    for modality in MODALITY_ORDER:
        clean = np.asarray(_INTENSITY[modality], dtype=np.float32)[tissue] * (1.0 + 0.04 * texture)
        clean = ndimage.gaussian_filter(clean, sigma=0.6)
        bias = np.exp(0.12 * _smooth_noise(rng, tissue.shape, 2))
        sigma = 0.03
        noisy = np.hypot(clean * bias + sigma * rng.standard_normal(tissue.shape, dtype=np.float32),
                         sigma * rng.standard_normal(tissue.shape, dtype=np.float32))
        scaled = np.where(head, np.maximum(np.rint(noisy * 1000.0), 1.0), 0.0)
        images[modality] = scaled.astype(np.int16)
    return images


def make_phantom(size: tuple[int, int, int], rng: np.random.Generator, *, small: bool = False
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One phantom case: (modality -> int16 image, uint8 label in BraTS 2018-2021 values {0, 1, 2, 4})."""
    u = _coords(size)
    tissue = _anatomy(rng, u)
    _add_tumours(rng, u, tissue, small)
    images = _render(rng, tissue, _smooth_noise(rng, size, 12))
    label = np.zeros(size, dtype=np.uint8)
    for cls, value in _LABEL_OF_CLASS.items():
        label[tissue == cls] = value
    return images, label


def _case_id(index: int) -> str:
    return f"BraTS2021_{index:05d}"


def _write_case(folder: Path, case_id: str, images: dict[str, np.ndarray], label: np.ndarray) -> None:
    affine = np.eye(4)
    for modality, array in images.items():
        save_volume(folder / f"{case_id}_{modality}.nii.gz", array, affine)
    save_volume(folder / f"{case_id}_seg.nii.gz", label, affine)


def validate_synthetic_args(n_cases: int, size: tuple[int, ...], seed: int) -> tuple[int, int, int]:
    """Check the phantom arguments (named by their CLI flags); returns ``size`` as a tuple of ints."""
    if int(n_cases) != n_cases or n_cases < 1:
        raise ValueError(f"--synthetic_cases must be an integer >= 1, got {n_cases!r}")
    size = tuple(int(s) for s in np.atleast_1d(size))
    if len(size) != 3 or any(s < 16 for s in size):
        raise ValueError(f"--synthetic_size must be three sizes each >= 16 voxels, got {size}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"--synthetic_seed must be an integer >= 0, got {seed!r}")
    return size  # type: ignore[return-value]


def _case_files(root: Path, index: int) -> list[Path]:
    folder = root / INNER_FOLDER / _case_id(index)
    return [folder / f"{_case_id(index)}_{s}.nii.gz" for s in (*MODALITY_ORDER, "seg")]


def _existing_entries(root: Path) -> list[Path]:
    inner = root / INNER_FOLDER
    return [p for p in inner.iterdir() if p.is_dir() and _CASE_RE.match(p.name)] if inner.is_dir() else []


LAYOUT = PhantomLayout(kind="synthetic phantoms", manifest_name=MANIFEST_NAME, incomplete_marker=INCOMPLETE_MARKER,
                       case_files=_case_files, existing_entries=_existing_entries)


def ensure_synthetic_brats(root: Path, n_cases: int = 12, size: tuple[int, int, int] = (64, 64, 64),
                           seed: int = 0) -> Path:
    """Write ``n_cases`` phantoms under ``root/BraTS2021_Training_Data`` unless an identical set is there.

    Deterministic: case ``i`` uses ``np.random.default_rng([seed, i])``. A manifest (n_cases, size, seed,
    format version), written atomically after every case file, marks a complete set; a matching set is
    left untouched, a partial or different one is regenerated.

    Returns:
        ``root``, to pass to ``discover_cases(root, "synthetic")``.
    """
    size = validate_synthetic_args(n_cases, size, seed)
    manifest = {"format_version": FORMAT_VERSION, "n_cases": int(n_cases), "size": list(size), "seed": int(seed)}

    def write_case(folder: Path, index: int) -> None:
        rng = np.random.default_rng([int(seed), index])
        images, label = make_phantom(size, rng, small=index % 4 == 3)
        _write_case(folder / INNER_FOLDER / _case_id(index), _case_id(index), images, label)

    return ensure_phantom_set(root, LAYOUT, manifest, write_case)
