"""Click simulation (engine/tasks/clicks.py) on hand-made masks: where each rule clicks, with which sign, and
that the random rule is reproducible per (seed, case, target) across processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.tasks import clicks as clicks_module
from engine.tasks.clicks import CLICK_MODES, Click, click_rng, next_click


def _box(shape: tuple[int, int, int], *slices: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[slices] = True
    return mask


def _first(mode: str, target: np.ndarray, seed: int = 0) -> Click | None:
    return next_click(target, None, mode=mode, rng=click_rng(seed, "case", "lesion"))


def test_modes() -> None:
    assert CLICK_MODES == ("random", "center")


@pytest.mark.parametrize("mode", CLICK_MODES)
def test_the_first_click_is_a_positive_click_in_the_target(mode: str) -> None:
    target = _box((10, 12, 14), slice(2, 5), slice(3, 9), slice(4, 6))
    for seed in range(20):
        click = _first(mode, target, seed)
        assert click is not None and click.positive and target[click.position], (seed, click)
        assert all(isinstance(i, int) for i in click.position)


@pytest.mark.parametrize("mode", CLICK_MODES)
def test_no_click_when_nothing_is_wrong(mode: str) -> None:
    target = _box((6, 6, 6), slice(1, 4), slice(1, 4), slice(1, 4))
    rng = np.random.default_rng(0)
    assert next_click(target, target.copy(), mode=mode, rng=rng) is None
    empty = np.zeros_like(target)
    assert next_click(empty, None, mode=mode, rng=rng) is None
    assert next_click(empty, empty, mode=mode, rng=rng) is None
    click = next_click(empty, target, mode=mode, rng=rng)  # an empty target and a false positive: remove it
    assert click is not None and not click.positive and target[click.position]


def test_center_clicks_the_deepest_voxel_of_the_largest_error() -> None:
    target = _box((16, 16, 16), slice(2, 10), slice(2, 10), slice(2, 10))
    previous = target.copy()
    previous[2:6, 2:6, 2:6] = False  # FN: a 4^3 corner (64 voxels)
    previous[12:14, 12:14, 12:14] = True  # FP: 2^3 (8 voxels)
    # 4 voxels per axis: depths 1, 2, 2, 1 voxels -> the deepest (2, 2, 2 from every side) lowest in C order
    assert next_click(target, previous, mode="center") == Click((3, 3, 3), True)
    previous = target.copy()
    previous[12:15, 11:16, 11:16] = True  # FP: 3x5x5 (75 voxels)
    previous[2:4, 2:4, 2:4] = False  # FN: 2^3
    # depth 2 voxels (axis 0 has 3 voxels) at (13, 12..14, 12..14): the lowest in C order
    assert next_click(target, previous, mode="center") == Click((13, 12, 12), False)
    assert next_click(target, previous, mode="center") == next_click(target, previous, mode="center")


def test_center_ties_fn_before_fp_then_the_first_component() -> None:
    target = _box((12, 12, 12), slice(0, 2), slice(0, 2), slice(0, 2))
    previous = _box((12, 12, 12), slice(8, 10), slice(8, 10), slice(8, 10))  # FN and FP both 2^3
    assert next_click(target, previous, mode="center") == Click((0, 0, 0), True)
    two = target | _box((12, 12, 12), slice(5, 7), slice(5, 7), slice(5, 7))  # two FN cubes of 8 voxels
    assert next_click(two, None, mode="center") == Click((0, 0, 0), True)  # first in C order; 2^3 all tie
    corner = target | _box((12, 12, 12), slice(2, 4), slice(2, 4), slice(2, 4))  # 2^3 cubes meeting at a corner
    bar = _box((12, 12, 12), slice(8, 10), slice(8, 10), slice(8, 11))  # 12 voxels
    # 26-connected, the two cubes are one component of 16 voxels (6-connected: two of 8, and the bar would win)
    assert next_click(corner | bar, None, mode="center") == Click((0, 0, 0), True)


def test_center_honours_spacing_and_the_volume_border() -> None:
    """One 26-connected component: a flat slab A (3x9x9 voxels, touching the volume's first face) and a cube B
    (5^3) meeting A at one corner. Isotropic: B's centre (depth 3 voxels) beats A's (depth 2: the border is
    boundary). Spacing (1, 0.25, 0.25) mm: B's centre is 3 x 0.25 = 0.75 mm deep, A's min(2 x 1, 5 x 0.25)
    = 1.25 mm at its centre (1, 4, 4)."""
    target = _box((12, 20, 20), slice(0, 3), slice(0, 9), slice(0, 9))
    target[3:8, 9:14, 9:14] = True
    assert next_click(target, None, mode="center") == Click((5, 11, 11), True)
    assert next_click(target, None, mode="center", spacing=(1.0, 0.25, 0.25)) == Click((1, 4, 4), True)
    assert next_click(np.ones((7, 7, 7), bool), None, mode="center") == Click((3, 3, 3), True)


def test_random_clicks_the_error_region_with_the_right_sign() -> None:
    target = _box((20, 20, 20), slice(2, 12), slice(2, 12), slice(2, 12))
    previous = _box((20, 20, 20), slice(6, 18), slice(6, 18), slice(6, 18))
    fn, fp = target & ~previous, previous & ~target
    rng = click_rng(3, "case_007", "lesion")
    signs = set()
    for _ in range(200):
        click = next_click(target, previous, mode="random", rng=rng)
        assert click is not None and (fn | fp)[click.position]
        assert click.positive == bool(fn[click.position])
        signs.add(click.positive)
    assert signs == {True, False}


def test_random_is_reproducible_per_seed() -> None:
    target = _box((24, 24, 24), slice(2, 22), slice(2, 22), slice(2, 22))  # 8000 voxels to draw from

    def draws(seed: int) -> list[Click | None]:
        rng = click_rng(seed, "case_001", "lesion")
        return [next_click(target, None, mode="random", rng=rng) for _ in range(5)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def _expected_first_draw(seed: int, case_id: str, target: str) -> int:
    digest = hashlib.blake2b(f"{case_id}\0{target}".encode("utf-8"), digest_size=8).digest()
    return int(np.random.default_rng([seed, int.from_bytes(digest, "little")]).integers(2**62))


def test_click_rng_is_stable_across_processes() -> None:
    expected = _expected_first_draw(24, "BraTS2021_00000", "lesion")
    assert int(click_rng(24, "BraTS2021_00000", "lesion").integers(2**62)) == expected
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('clicks', sys.argv[1])\n"
            "m = sys.modules['clicks'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(int(m.click_rng(24, 'BraTS2021_00000', 'lesion').integers(2**62)))\n")
    for hash_seed in ("1", "2"):  # Python's str hash differs between these processes; the draw must not
        out = subprocess.run([sys.executable, "-c", code, clicks_module.__file__], capture_output=True, text=True,
                             check=True, env=dict(os.environ, PYTHONHASHSEED=hash_seed))
        assert int(out.stdout) == expected


def test_click_rng_differs_by_case_and_target() -> None:
    first = {int(click_rng(24, case, name).integers(2**62)) for case in ("a", "b") for name in ("lesion", "tumour")}
    assert len(first) == 4
    with pytest.raises(ValueError, match="seed must be >= 0"):
        click_rng(-1, "a", "lesion")


def test_bad_inputs_are_named() -> None:
    target = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="mode 'box'"):
        next_click(target, None, mode="box")
    with pytest.raises(ValueError, match="needs rng"):
        next_click(target, None, mode="random")
    with pytest.raises(ValueError, match="previous has shape"):
        next_click(target, np.zeros((4, 4, 5), bool), mode="center")
    with pytest.raises(ValueError, match="3D"):
        next_click(np.zeros((4, 4), bool), None, mode="center")
    with pytest.raises(ValueError, match="spacing"):
        next_click(target, None, mode="center", spacing=(1.0, 0.0, 1.0))
