"""Registry-wide tests: every registered model, at its tiny configuration, on CPU.

A new model entry is covered with no test edits: build, forward shape, no NaN, every parameter gets
a gradient, metadata parameter count equals the built model.
"""

from __future__ import annotations

import pytest
import torch

from models import MODALITY_ORDER, create_model, list_models, model_info, resolve_model_names
from models._registry import register_model
from dataio.types import MODALITY_ORDER as DATA_MODALITY_ORDER

ALL = list_models()
N_CLASSES = 4


def test_registry_holds_the_core_entries() -> None:
    expected = {f"unet3d_{s}" for s in ("xs", "s", "m", "l")} | {f"unet3d_stride_{s}" for s in ("xs", "s", "m", "l")}
    assert expected | {"unetr", "swin_unetr"} <= set(ALL)


def test_modality_order_agrees_between_models_and_data() -> None:
    assert MODALITY_ORDER == DATA_MODALITY_ORDER


def test_list_models_wildcards_are_sorted_and_filtered() -> None:
    names = list_models("unet3d_stride_*")
    assert names == sorted(names) and len(names) == 4
    assert "unet3d_stride_l" not in list_models("unet3d_stride_*", exclude="*_l")


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean.*unet3d_s"):
        create_model("unet3d_ss")
    with pytest.raises(ValueError, match="matches no registered model"):
        resolve_model_names(["nothing_like_this_*"])


def test_resolve_model_names_keeps_order_without_repeats() -> None:
    assert resolve_model_names(["unet3d_xs", "unet3d_*_xs", "unet3d_xs"]) == ["unet3d_xs", "unet3d_stride_xs"]


def test_duplicate_registration_is_refused() -> None:
    def unet3d_xs(**kwargs):  # same name as an existing entry
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already registered"):
        register_model(family="dup")(unet3d_xs)


def _build_tiny(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name, **info.tiny_kwargs)
    x = torch.randn(1, info.in_channels, *info.test_patch_size)
    return model, x


@pytest.mark.parametrize("name", [n for n in ALL if model_info(n).task == "segmentation"])
def test_train_step_and_inference_every_parameter_gets_a_gradient(name: str) -> None:
    info = model_info(name)
    model, x = _build_tiny(name)
    model.train()
    out = model(x)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    assert logits.shape == (1, N_CLASSES, *info.test_patch_size)
    assert torch.isfinite(logits).all()
    # a loss that depends on every output voxel and class (of every scale, for a deep-supervised model's list)
    scales = out if isinstance(out, list) else [logits]
    sum((o * torch.randn_like(o)).mean() for o in scales).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"{name}: parameters without a finite gradient: {missing[:5]}"
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters())
    model.eval()  # inference after the training step: eval-mode norms, no autograd
    with torch.no_grad():
        out = model(x)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    assert logits.shape == (1, N_CLASSES, *info.test_patch_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL)
def test_metadata_is_consistent(name: str) -> None:
    info = model_info(name)
    assert info.spatial_dims == len(info.default_patch_size) == len(info.test_patch_size)
    assert all(p % info.divisibility == 0 for p in info.default_patch_size)
    assert all(p % info.divisibility_for(True) == 0 for p in info.test_patch_size)  # the tiny build runs on it
    assert set(info.modalities) <= set(MODALITY_ORDER)
    assert info.paper


@pytest.mark.parametrize("name", [n for n in ALL if model_info(n).num_params is not None])
def test_metadata_parameter_count_matches_the_built_model(name: str) -> None:
    info = model_info(name)
    try:
        with torch.device("meta"):
            model = create_model(name)
    except (RuntimeError, NotImplementedError):  # builders that call .item() cannot run on meta
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == info.num_params
