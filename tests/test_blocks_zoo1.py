"""Model zoo part 1: RepLK / Ghost / ShuffleNetV2 / ConvNeXt / dilated blocks and the dual-branch families."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import models
import models.dualbranch_14  # noqa: F401  (registration on import)
import models.dualbranch_basic  # noqa: F401
import models.dualbranch_mvit  # noqa: F401
import models.dualbranch_replk  # noqa: F401
from models import create_model, list_models, model_info
from models.blocks.convnext import ConvNeXtBlock3D, ConvNeXtDown3D, ConvNeXtStem3D
from models.blocks.dilated import Down3DStrideDilated
from models.blocks.dualbranch_common import DualBranchLayout
from models.blocks.ghost import GhostBottleneck3D, GhostModule3D
from models.blocks.replk import (ConvFFN3D, RepLKBlock3D, RepLKStage3D, ReparamLargeKernelConv3D, Transition3D,
                                 reparameterize_model)
from models.blocks.shufflenet import ShuffleNetV2Down3D, ShuffleNetV2Stem3D, ShuffleUnit3D, channel_shuffle

SIZES = ("xs", "s", "m", "l")
BACKBONES = ("mobilenetv2_expand2", "ghostnet", "dilated", "convnext", "shufflenetv2", "shufflenetv2_dilated",
             "shufflenetv2_lk")
FAMILIES = [f"dualbranch_{v}_unet" for v in ("01", "02", "03", "04", "05", "06", "07", "13")] + [
    f"dualbranch_14_{b}" for b in BACKBONES]
SMALLEST = [f"{f}_xs" for f in FAMILIES]


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)


# ---------------------------------------------------------------- RepLK re-parameterisation
def test_replk_conv_reparameterisation_matches_eval_output() -> None:
    torch.manual_seed(0)
    conv = ReparamLargeKernelConv3D(3, kernel=13, small_kernel=3)
    _randomise_bn(conv)
    conv.eval()
    x = torch.randn(2, 3, 14, 15, 16)
    with torch.no_grad():
        before = conv(x)
        conv.reparameterize()
        after = conv(x)
    assert conv.is_reparameterized
    names = {n for n, _ in conv.named_children()}
    assert names == {"reparam"}, names
    assert conv.reparam.kernel_size == (13, 13, 13) and conv.reparam.bias is not None
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_replk_block_and_model_reparameterisation() -> None:
    torch.manual_seed(1)
    block = nn.Sequential(RepLKBlock3D(4, kernel=7, small_kernel=3), ConvFFN3D(4, ratio=2))
    _randomise_bn(block, seed=1)
    block.eval()
    x = torch.randn(1, 4, 9, 9, 9)
    with torch.no_grad():
        before = block(x)
        reparameterize_model(block)
        after = block(x)
    assert all(m.is_reparameterized for m in block.modules() if isinstance(m, ReparamLargeKernelConv3D))
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_reparameterize_model_on_dualbranch_04() -> None:
    torch.manual_seed(2)
    model = create_model("dualbranch_04_unet_xs", **model_info("dualbranch_04_unet_xs").tiny_kwargs)
    _randomise_bn(model, seed=2)
    model.eval()
    x = torch.randn(1, 2, 32, 32, 32)

    def run() -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        hooks = [getattr(model, n).register_forward_hook(lambda m, a, o: feats.append(o))
                 for n in ("flair_stage2", "flair_stage3")]
        with torch.no_grad():
            feats.append(model(x))
        for h in hooks:
            h.remove()
        return feats

    before = run()
    n_lk = sum(isinstance(m, ReparamLargeKernelConv3D) for m in model.modules())
    reparameterize_model(model)
    after = run()
    assert n_lk == 2  # FLAIR stages 2 and 3
    assert not any(isinstance(m, nn.BatchNorm3d) for name, m in model.named_modules() if "large_kernel" in name)
    for a, b in zip(after, before):  # FLAIR stage-2 and stage-3 features, then the logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_replk_rejects_even_kernels() -> None:
    with pytest.raises(ValueError, match="odd"):
        ReparamLargeKernelConv3D(4, kernel=12)
    with pytest.raises(ValueError, match="small_kernel"):
        ReparamLargeKernelConv3D(4, kernel=5, small_kernel=7)


# ---------------------------------------------------------------- block shapes
BLOCKS = {
    "transition": (lambda: Transition3D(4, 6), 2),
    "replk_block": (lambda: RepLKBlock3D(4, kernel=5), 1),
    "conv_ffn": (lambda: ConvFFN3D(4, ratio=2), 1),
    "replk_stage": (lambda: RepLKStage3D(4, 6, kernel=5), 2),
    "ghost_s1": (lambda: GhostBottleneck3D(4, 6, stride=1), 1),
    "ghost_s2": (lambda: GhostBottleneck3D(4, 6, stride=2), 2),
    "shuffle_s1": (lambda: ShuffleUnit3D(4, 4, stride=1), 1),
    "shuffle_s2": (lambda: ShuffleUnit3D(4, 6, stride=2), 2),
    "shuffle_dilated_s1": (lambda: ShuffleUnit3D(4, 4, kernel=5, dilations=(1, 2, 5)), 1),
    "shuffle_lk_s2": (lambda: ShuffleUnit3D(4, 6, stride=2, down_kernel=7), 2),
    "shuffle_stem": (lambda: ShuffleNetV2Stem3D(4, 6), 1),
    "shuffle_down": (lambda: ShuffleNetV2Down3D(4, 6, kernel=7, down_kernel=7), 2),
    "convnext_block": (lambda: ConvNeXtBlock3D(4), 1),
    "convnext_stem": (lambda: ConvNeXtStem3D(4, 6), 1),
    "convnext_down": (lambda: ConvNeXtDown3D(4, 6), 2),
    "dilated_k3": (lambda: Down3DStrideDilated(4, 6), 2),
    "dilated_k5": (lambda: Down3DStrideDilated(4, 6, kernel=5), 2),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_output_shape(name: str) -> None:
    make, stride = BLOCKS[name]
    block = make()
    x = torch.randn(2, 4, 8, 10, 12)
    y = block(x)
    shape_preserving = name in ("replk_block", "conv_ffn", "shuffle_s1", "shuffle_dilated_s1", "convnext_block")
    out_ch = 4 if shape_preserving else 6
    assert y.shape == (2, out_ch, 8 // stride, 10 // stride, 12 // stride)
    assert torch.isfinite(y).all()


def test_dilated_block_uses_rates_1_2_5() -> None:
    convs = [m for m in Down3DStrideDilated(2, 4).modules() if isinstance(m, nn.Conv3d)]
    assert [c.dilation[0] for c in convs] == [1, 2, 5]
    assert [c.stride[0] for c in convs] == [2, 1, 1]


# ---------------------------------------------------------------- channel shuffle
@pytest.mark.parametrize("channels,groups", [(6, 2), (6, 3), (8, 2), (12, 4)])
def test_channel_shuffle_permutation(channels: int, groups: int) -> None:
    x = torch.arange(channels, dtype=torch.float32).reshape(1, channels, 1, 1, 1).expand(2, channels, 2, 3, 1)
    y = channel_shuffle(x, groups)
    per_group = channels // groups
    # output channel i * groups + j holds input channel j * (C / groups) + i
    expected = [j * per_group + i for i in range(per_group) for j in range(groups)]
    assert y[0, :, 0, 0, 0].tolist() == expected
    assert torch.equal(y[1], y[0])
    # shuffling with C/g groups undoes shuffling with g groups
    assert torch.equal(channel_shuffle(y, per_group), x)


def test_channel_shuffle_g2_interleaves_halves() -> None:
    x = torch.tensor([10.0, 11.0, 12.0, 20.0, 21.0, 22.0]).reshape(1, 6, 1, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [10.0, 20.0, 11.0, 21.0, 12.0, 22.0]
    with pytest.raises(ValueError, match="divisible"):
        channel_shuffle(x, 4)


def test_shuffle_unit_stride1_keeps_first_half_as_identity() -> None:
    unit = ShuffleUnit3D(4, 4, stride=1).eval()
    x = torch.randn(1, 4, 4, 4, 4)
    y = unit(x)
    # after the g=2 shuffle, the identity half sits at the even output channels
    torch.testing.assert_close(y[:, 0::2], x[:, :2])
    with pytest.raises(ValueError, match="in_ch == out_ch"):
        ShuffleUnit3D(4, 6, stride=1)
    with pytest.raises(ValueError, match="even"):
        ShuffleUnit3D(4, 5, stride=2)


# ---------------------------------------------------------------- ghost
@pytest.mark.parametrize("out_ch,ratio", [(6, 2), (7, 2), (5, 3), (9, 3)])
def test_ghost_module_output_channels(out_ch: int, ratio: int) -> None:
    module = GhostModule3D(3, out_ch, ratio=ratio)
    intrinsic = math.ceil(out_ch / ratio)
    assert module.primary[0].out_channels == intrinsic
    assert module.cheap[0].groups == intrinsic  # cheap op is depthwise on the intrinsic maps
    y = module(torch.randn(1, 3, 4, 4, 4))
    assert y.shape == (1, out_ch, 4, 4, 4)


def test_ghost_module_first_channels_are_primary_output() -> None:
    module = GhostModule3D(3, 6, ratio=2).eval()
    x = torch.randn(1, 3, 4, 4, 4)
    y = module(x)
    primary = module.primary(x)
    torch.testing.assert_close(y[:, :3], primary)
    torch.testing.assert_close(y[:, 3:], module.cheap(primary))


def test_ghost_bottleneck_residual_only_when_shape_kept() -> None:
    x = torch.randn(1, 4, 4, 4, 4)
    same = GhostBottleneck3D(4, 4, stride=1).eval()
    for bn in (same.ghost2.primary[1], same.ghost2.cheap[1]):
        nn.init.zeros_(bn.weight)
        nn.init.zeros_(bn.bias)
    torch.testing.assert_close(same(x), x)  # branch output zero -> identity
    assert not GhostBottleneck3D(4, 6, stride=1).residual
    assert not GhostBottleneck3D(4, 4, stride=2).residual


# ---------------------------------------------------------------- families
def test_registered_names_and_metadata() -> None:
    expected = {f"dualbranch_{v}_unet_{s}" for v in ("01", "02", "03", "04", "05", "06", "07", "13") for s in SIZES}
    expected |= {f"dualbranch_14_{b}_{s}" for b in BACKBONES for s in SIZES}
    assert set(list_models("dualbranch_*")) >= expected
    for name in expected:
        info = model_info(name)
        assert info.modalities == ("t1ce", "flair")
        assert info.in_channels == 2
        assert info.divisibility == 16
        assert info.default_patch_size == (128, 128, 128)
        assert "dual-branch U-Net" in info.paper
        assert isinstance(info.num_params, int) and info.num_params > 0


@pytest.mark.parametrize("name", SMALLEST)
def test_family_forward_backward_tiny(name: str) -> None:
    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name, **info.tiny_kwargs)
    assert sum(p.numel() for p in model.parameters()) < 200_000
    x = torch.randn(1, 2, *info.test_patch_size)
    y = model(x)
    assert y.shape == (1, 4, *info.test_patch_size)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", SMALLEST)
def test_flair_branch_receives_channel_1_and_stages_are_named(name: str) -> None:
    model = create_model(name, **model_info(name).tiny_kwargs).eval()
    seen: dict[str, torch.Tensor] = {}
    order: list[str] = []
    hooks = [model.stem_flair.register_forward_pre_hook(lambda m, a: seen.__setitem__("flair", a[0])),
             model.stem_t1ce.register_forward_pre_hook(lambda m, a: seen.__setitem__("t1ce", a[0]))]
    for child_name, child in model.named_children():
        hooks.append(child.register_forward_hook(lambda m, a, o, n=child_name: order.append(n)))
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert torch.equal(seen["flair"], x[:, 1:2])
    assert torch.equal(seen["t1ce"], x[:, 0:1])
    # stage names: call order == registration order == pam_stages
    assert order == model.pam_stages == [n for n, _ in model.named_children()]
    assert order[:4] == ["stem_t1ce", "stem_flair", "t1ce_stage2", "flair_stage2"]
    assert order[-5:] == ["dec4", "dec3", "dec2", "dec1", "out_conv"]
    assert "fused_stage5" in order


def _meta_params(name: str) -> int:
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_params_grow_about_4x_per_size_and_match_metadata(family: str) -> None:
    xs, s = _meta_params(f"{family}_xs"), _meta_params(f"{family}_s")
    assert 3.5 < s / xs < 4.2, (xs, s)
    assert model_info(f"{family}_xs").num_params == xs
    assert model_info(f"{family}_s").num_params == s


@pytest.mark.parametrize("name", SMALLEST)
@pytest.mark.parametrize("in_channels", [1, 4])
def test_wrong_in_channels_raises(name: str, in_channels: int) -> None:
    with pytest.raises(ValueError, match=rf"{name}.*t1ce.*flair"):
        create_model(name, in_channels=in_channels)


def test_layout_widths_double_and_validate() -> None:
    small, big = DualBranchLayout.fused_after_stage4(8), DualBranchLayout.fused_after_stage4(16)
    assert small.branch == (8, 16, 32, 64) and small.fused == (256,)
    assert big.skips == tuple(2 * c for c in small.skips)
    s3 = DualBranchLayout.fused_after_stage3(16)
    assert s3.branch == (16, 32, 64) and s3.fused == (256, 512)
    with pytest.raises(ValueError, match="decoder"):
        DualBranchLayout(branch=(4, 8), fused=(16, 32), decoder=(8,))
