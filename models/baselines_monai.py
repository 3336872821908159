"""MONAI CNN baselines: ``SegResNet`` (MONAI's BraTS tutorial settings), ``MedNeXt`` S/B/M/L, ``BasicUNet``.

Built with MONAI's own classes and factories at their published settings; ``kwargs`` of each builder override them
(the tests' tiny configurations use that). They train with the sweep's recipe (no ``train_defaults``).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from monai.networks.nets import BasicUNet, MedNeXt, SegResNet
from monai.networks.nets.mednext import create_mednext  # not re-exported by monai.networks.nets (1.6.1)

from ._registry import register_model

DEFAULT_PATCH = (128, 128, 128)
SEGRESNET_PAPER = ("Myronenko, 3D MRI brain tumor segmentation using autoencoder regularization, BrainLes 2018 "
                   "(MONAI SegResNet, BraTS tutorial settings)")
MEDNEXT_PAPER = ("Roy et al., MedNeXt: Transformer-driven Scaling of ConvNets for Medical Image Segmentation, "
                 "MICCAI 2023 (MONAI create_mednext)")
BASICUNET_PAPER = "Falk et al., U-Net: deep learning for cell counting, detection, and morphometry, Nat Methods 2019 " \
                  "(MONAI BasicUNet)"
# create_mednext's settings shared by every variant, for the test-size configurations it cannot build (it takes
# no width or depth arguments): the full variants come from create_mednext itself.
_MEDNEXT_SHARED: dict[str, Any] = dict(use_residual_connection=True, norm_type="group", global_resp_norm=False)
# the tests' tiny MedNeXt: 2 levels instead of 4, so that 16^3 inputs keep a 4^3 bottleneck for its group norm
_MEDNEXT_TINY: dict[str, Any] = dict(init_filters=4, blocks_down=(1, 1), blocks_bottleneck=1, blocks_up=(1, 1))


@register_model(family="segresnet", divisibility=8, default_patch_size=DEFAULT_PATCH, paper=SEGRESNET_PAPER,
                num_params=4_702_244, tiny_kwargs=dict(init_filters=8, blocks_down=(1, 1, 1, 1)),
                test_patch_size=(32, 32, 32))
def segresnet(*, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """MONAI ``SegResNet`` as in MONAI's BraTS tutorial: 16 initial filters, blocks down (1, 2, 2, 4), blocks up
    (1, 1, 1), dropout 0.2 (group norm 8, ReLU, non-trainable (trilinear) upsampling: MONAI's defaults)."""
    args = dict(init_filters=16, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2)
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **dict(args, **kwargs))


def _mednext(variant: str, in_channels: int, out_channels: int, kernel_size: int, **kwargs: Any) -> nn.Module:
    """``create_mednext(variant)``; with ``kwargs`` (a test-size configuration), MONAI's ``MedNeXt`` class built
    with those arguments over create_mednext's shared settings (32 filters and MedNeXt's own defaults otherwise)."""
    if kwargs:
        return MedNeXt(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                       **dict(_MEDNEXT_SHARED, **kwargs))
    return create_mednext(variant, spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                          kernel_size=kernel_size)


_MEDNEXT_META: dict[str, Any] = dict(family="mednext", divisibility=16, default_patch_size=DEFAULT_PATCH,
                                     paper=MEDNEXT_PAPER, tiny_kwargs=_MEDNEXT_TINY, test_patch_size=(16, 16, 16))


@register_model(**_MEDNEXT_META, num_params=5_551_076)
def mednext_s(*, in_channels: int, out_channels: int, kernel_size: int = 3, **kwargs: Any) -> nn.Module:
    """MedNeXt-S (expansion 2, 2 blocks per stage), kernel 3."""
    return _mednext("S", in_channels, out_channels, kernel_size, **kwargs)


@register_model(**_MEDNEXT_META, num_params=10_511_012)
def mednext_b(*, in_channels: int, out_channels: int, kernel_size: int = 3, **kwargs: Any) -> nn.Module:
    """MedNeXt-B (expansion 2-4, 2 blocks per stage), kernel 3."""
    return _mednext("B", in_channels, out_channels, kernel_size, **kwargs)


@register_model(**_MEDNEXT_META, num_params=17_533_668)
def mednext_m(*, in_channels: int, out_channels: int, kernel_size: int = 3, **kwargs: Any) -> nn.Module:
    """MedNeXt-M (expansion 2-4, 3-4 blocks per stage), kernel 3."""
    return _mednext("M", in_channels, out_channels, kernel_size, **kwargs)


@register_model(**_MEDNEXT_META, num_params=61_726_916)
def mednext_l(*, in_channels: int, out_channels: int, kernel_size: int = 3, **kwargs: Any) -> nn.Module:
    """MedNeXt-L (expansion 3-8, 3-8 blocks per stage), kernel 3."""
    return _mednext("L", in_channels, out_channels, kernel_size, **kwargs)


@register_model(**_MEDNEXT_META, num_params=62_940_548)
def mednext_l_k5(*, in_channels: int, out_channels: int, kernel_size: int = 5, **kwargs: Any) -> nn.Module:
    """MedNeXt-L with 5-voxel kernels (the paper's best configuration; trained from scratch here, without the
    paper's UpKern initialisation from a kernel-3 model)."""
    return _mednext("L", in_channels, out_channels, kernel_size, **kwargs)


@register_model(family="basicunet", divisibility=16, default_patch_size=DEFAULT_PATCH, paper=BASICUNET_PAPER,
                num_params=5_752_068, tiny_kwargs=dict(features=(4, 4, 8, 16, 32, 4)), test_patch_size=(32, 32, 32))
def basicunet(*, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """MONAI ``BasicUNet`` with its defaults: features (32, 32, 64, 128, 256, 32), instance norm, leaky ReLU 0.1,
    max-pool downsampling, transposed-conv upsampling."""
    return BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kwargs)
