"""Zoo part 2: MobileNetV2 / channel / modality attention / MobileViT blocks and their model families."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import models  # noqa: F401  (the registry, before the families below)
import models.dualbranch_mobile  # noqa: F401  (registers dualbranch_mobilenetv2_dilated_*)
import models.mobile_unetr  # noqa: F401  (registers mobile_unetr, mobile_unetr_3d)
import models.modality_comparison  # noqa: F401  (registers *_2modal_*, *_4modal_*)
from models import create_model, list_models, model_info
from models.blocks.channel_attention import ChannelAttention3D, ModalityAttention3D
from models.blocks.mobilenetv2 import InvertedResidual3D
from models.blocks.mobilevit import (Down3DStrideMViT, MobileViTBlock2D, MobileViTBlock3D, fold_patches,
                                     unfold_patches)

torch.manual_seed(0)

FAMILY_REPRESENTATIVES = [
    "dualbranch_mobilenetv2_dilated_s", "dualbranch_mobilenetv2_dilated_fixed_s", "unet3d_2modal_s",
    "unet3d_4modal_s", "dualbranch_2modal_unet_s", "quadbranch_4modal_unet_s",
    "quadbranch_4modal_attention_unet_s", "mobile_unetr_3d", "mobile_unetr",
]
MY_MODELS = (list_models("dualbranch_mobilenetv2_dilated_*") + list_models("mobile_unetr*")
             + list_models(["*_2modal_*", "*_4modal_*"]))


# ---------------------------------------------------------------- InvertedResidual3D
@pytest.mark.parametrize("in_ch,out_ch,stride", [(4, 4, 1), (4, 8, 1), (4, 8, 2), (8, 8, 2)])
def test_inverted_residual_shape_and_residual_rule(in_ch: int, out_ch: int, stride: int) -> None:
    block = InvertedResidual3D(in_ch, out_ch, stride=stride, expand_ratio=2.0, channel_attention_ratio=2)
    x = torch.randn(2, in_ch, 6, 6, 6)
    assert block(x).shape == (2, out_ch, 6 // stride, 6 // stride, 6 // stride)
    # Zero the final (projection) norm: the block's branch outputs 0, so the output is x iff residual.
    final_norm = block.block[-1]
    nn.init.zeros_(final_norm.weight)
    nn.init.zeros_(final_norm.bias)
    block.eval()
    with torch.no_grad():
        y = block(x)
    if stride == 1 and in_ch == out_ch:
        assert torch.allclose(y, x)
    else:
        assert torch.count_nonzero(y) == 0


def test_inverted_residual_hidden_width_and_dilations() -> None:
    block = InvertedResidual3D(4, 6, expand_ratio=3.0, dilations=(1, 2, 5), act="hardswish")
    convs = [m for m in block.modules() if isinstance(m, nn.Conv3d)]
    expand, *depthwise, project = convs
    assert expand.kernel_size == (1, 1, 1) and expand.out_channels == 12  # max(6, round(4 * 3))
    assert [c.dilation[0] for c in depthwise] == [1, 2, 5]
    assert all(c.groups == 12 for c in depthwise)
    assert project.out_channels == 6
    assert block(torch.randn(1, 4, 7, 7, 7)).shape == (1, 6, 7, 7, 7)
    # hidden == in: no expansion conv
    no_expand = InvertedResidual3D(8, 4, expand_ratio=1.0)
    assert sum(isinstance(m, nn.Conv3d) for m in no_expand.modules()) == 2


def test_inverted_residual_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="activation"):
        InvertedResidual3D(4, 4, act="tanh")
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual3D(4, 4, stride=3)


# ---------------------------------------------------------------- attention blocks
def test_channel_attention_scales_each_channel_by_a_gate() -> None:
    ca = ChannelAttention3D(8, 4)
    x = torch.rand(2, 8, 3, 4, 5) + 0.5
    ratio = ca(x) / x
    per_channel = ratio.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel))  # constant over space
    assert bool(((per_channel > 0) & (per_channel < 1)).all())


def test_modality_attention_weights_and_scaling() -> None:
    att = ModalityAttention3D(4, 3)
    feats = [torch.randn(2, 3, 4, 4, 4) for _ in range(4)]
    scaled, w = att(feats)
    assert w.shape == (2, 4)
    assert bool(((w > 0) & (w < 1)).all())
    for i, (f, s) in enumerate(zip(feats, scaled)):
        assert torch.allclose(s, f * w[:, i].view(2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="expects 4 feature maps"):
        att(feats[:3])


# ---------------------------------------------------------------- MobileViT
@pytest.mark.parametrize("sizes", [(9, 9, 9), (4, 5, 6), (7, 10)])
def test_unfold_fold_roundtrip(sizes: tuple[int, ...]) -> None:
    x = torch.randn(2, 3, *sizes)
    tokens, padded = unfold_patches(x, 2)
    assert tokens.shape == (2 * 2 ** len(sizes), math.prod(math.ceil(s / 2) for s in sizes), 3)
    assert torch.equal(fold_patches(tokens, 2, padded, sizes, 2), x)


def test_unfold_groups_same_offset_voxels_into_one_sequence() -> None:
    x = torch.arange(4 * 4 * 4, dtype=torch.float32).view(1, 1, 4, 4, 4)
    tokens, _ = unfold_patches(x, 2)
    # sequence 0 holds the (0,0,0) offset of every 2^3 patch: voxels with all-even coordinates
    expected = x[0, 0, ::2, ::2, ::2].flatten()
    assert torch.equal(tokens[0, :, 0], expected)
    # the last sequence holds offset (1,1,1)
    assert torch.equal(tokens[7, :, 0], x[0, 0, 1::2, 1::2, 1::2].flatten())


def test_mobilevit_block_shape_and_sequence_length() -> None:
    block = MobileViTBlock3D(8, dim=12, heads=4, depth=2, patch_size=2)
    seen: list[tuple[int, ...]] = []
    block.transformer[0].register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    x = torch.randn(1, 8, 9, 9, 9)
    y = block(x)
    assert y.shape == x.shape
    assert seen == [(8, 5 ** 3, 12)]  # (B * p^3, ceil(9/2)^3, dim): N / p^3 after padding, not N
    y.sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_mobilevit_2d_and_down_block() -> None:
    assert MobileViTBlock2D(8, heads=2)(torch.randn(1, 8, 9, 10)).shape == (1, 8, 9, 10)
    assert Down3DStrideMViT(4, 8, heads=4)(torch.randn(1, 4, 8, 6, 10)).shape == (1, 8, 4, 3, 5)
    with pytest.raises(ValueError, match="divisible by heads"):
        MobileViTBlock3D(10, heads=4)


# ---------------------------------------------------------------- families
@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_family_tiny_forward_backward(name: str) -> None:
    info = model_info(name)
    model = create_model(name, **info.tiny_kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params <= 400_000, f"tiny build of {name} has {n_params} parameters"
    x = torch.randn(1, info.in_channels, *info.test_patch_size)
    y = model(x)
    assert y.shape == (1, 4, *info.test_patch_size)
    assert torch.isfinite(y).all()
    y.float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: parameters without a finite gradient: {missing[:5]}"


@pytest.mark.parametrize("name", MY_MODELS)
def test_recorded_num_params_and_pam_stages(name: str) -> None:
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == info.num_params
    names = dict(model.named_modules())
    assert all(stage in names for stage in getattr(model, "pam_stages", []))


def test_quadbranch_attention_returns_stage_weights() -> None:
    info = model_info("quadbranch_4modal_attention_unet_s")
    assert info.returns_attention and info.modalities == ("t1", "t1ce", "t2", "flair")
    model = create_model("quadbranch_4modal_attention_unet_s", **info.tiny_kwargs)
    logits, weights = model(torch.randn(2, 4, 16, 16, 16), return_attention=True)
    assert logits.shape == (2, 4, 16, 16, 16)
    assert set(weights) == {"stage2", "stage3"}
    for w in weights.values():
        assert w.shape == (2, 4) and bool(((w > 0) & (w < 1)).all())
    plain = create_model("quadbranch_4modal_unet_s", base=1)
    with pytest.raises(ValueError, match="return_attention"):
        plain(torch.randn(1, 4, 16, 16, 16), return_attention=True)


@pytest.mark.parametrize("name,branch,channel", [
    ("dualbranch_mobilenetv2_dilated_xs", "flair", 1), ("dualbranch_mobilenetv2_dilated_xs", "t1ce", 0),
    ("quadbranch_4modal_unet_s", "flair", 3), ("quadbranch_4modal_unet_s", "t1", 0),
])
def test_each_modality_reaches_its_own_branch(name: str, branch: str, channel: int) -> None:
    info = model_info(name)
    model = create_model(name, **info.tiny_kwargs).eval()
    seen: list[torch.Tensor] = []
    model.branches[branch].stem.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.randn(1, info.in_channels, 16, 16, 16)
    with torch.no_grad():
        model(x)
    assert torch.equal(seen[0], x[:, channel:channel + 1])


def test_mobile_unetr_checks_divisibility_and_2d_metadata() -> None:
    info = model_info("mobile_unetr")
    assert info.spatial_dims == 2 and info.modalities == ("t1ce", "flair")
    model = create_model("mobile_unetr", **info.tiny_kwargs)
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 2, 48, 40))
    assert model_info("mobile_unetr_3d").divisibility == 64
