"""Downsampling planned from the voxel spacing (models.anisotropy) and mobile_unetr_3d built for it."""

from __future__ import annotations

import pytest
import torch

from models import create_model, model_info
from models.anisotropy import halvings_for_spacing, step_strides
from models.detection.detseg3d import grid_for_spacing, level_strides

HEAD_CT = (0.95, 0.95, 4.5)  # mm: log2(4.5 / 0.95) = 2.24, so the slice axis skips two halvings


def test_halvings_follow_the_spacing_ratio() -> None:
    assert halvings_for_spacing(None, 3) == (3, 3, 3)
    assert halvings_for_spacing((1.0, 1.0, 1.0), 6) == (6, 6, 6)
    assert halvings_for_spacing(HEAD_CT, 3) == (3, 3, 1)
    assert halvings_for_spacing(HEAD_CT, 6) == (6, 6, 4)
    assert halvings_for_spacing((2.0, 0.5, 0.5), 3) == (1, 3, 3)  # any axis may be the coarse one
    assert halvings_for_spacing((0.5, 0.5, 40.0), 3) == (3, 3, 0)  # never below 0
    with pytest.raises(ValueError, match="three positive sizes"):
        halvings_for_spacing((1.0, 0.0, 1.0), 3)


def test_the_coarse_axis_is_halved_at_the_last_steps() -> None:
    assert step_strides((3, 3, 1), 3) == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]
    assert step_strides((2, 2, 2), 2) == [(2, 2, 2), (2, 2, 2)]
    assert step_strides((0, 1, 2), 2) == [(1, 1, 2), (1, 2, 2)]
    with pytest.raises(ValueError, match="halvings"):
        step_strides((4, 3, 3), 3)


def test_detseg3d_grid_is_the_shared_plan() -> None:
    assert grid_for_spacing(HEAD_CT) == (8, 8, 2)
    assert level_strides((8, 8, 2)) == step_strides((3, 3, 1), 3)


def _tiny_mobile(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    info = model_info("mobile_unetr_3d")
    return create_model("mobile_unetr_3d", in_channels=1, out_channels=2, **dict(info.tiny_kwargs, **kwargs)).eval()


def test_mobile_unetr_3d_planned_for_head_ct_keeps_the_slices() -> None:
    """Tiny build (/4) on 0.95 x 0.95 x 4.5 mm voxels: /4 in-plane, every slice kept, full-size logits; on 1 x 1 x 2 mm
    /4 and /2, and an odd slice count is refused naming the per-axis divisibility."""
    model = _tiny_mobile(spacing=HEAD_CT)
    assert model.axis_stride == (4, 4, 1) and model.stride == 4
    assert model.upsampling == [(2, 2, 1), (2, 2, 1)]
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 16, 5)).shape == (1, 2, 16, 16, 5)
    half = _tiny_mobile(spacing=(1.0, 1.0, 2.0))
    assert half.axis_stride == (4, 4, 2) and half.upsampling == [(2, 2, 2), (2, 2, 1)]
    with torch.no_grad(), pytest.raises(ValueError, match=r"divisible by \(4, 4, 2\)"):
        half(torch.randn(1, 1, 16, 16, 5))
    default = create_model("mobile_unetr_3d", in_channels=1, out_channels=2, spacing=HEAD_CT)
    assert default.axis_stride == (64, 64, 16)


def test_mobile_unetr_3d_isotropic_spacing_is_the_original_network() -> None:
    """Isotropic voxels (or no spacing) give the same network: same weights, same output."""
    plain, planned = _tiny_mobile(), _tiny_mobile(spacing=(1.0, 1.0, 1.0))
    assert plain.axis_stride == planned.axis_stride == (4, 4, 4)
    planned.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), planned(x), rtol=0, atol=0)
