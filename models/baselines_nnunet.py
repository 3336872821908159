"""nnU-Net baselines: the residual-encoder U-Net (``dynamic-network-architectures``) and MONAI's ``DynUNet``.

Both are planned as nnU-Net plans a 3D full-resolution U-Net for the patch size and spacing
(:func:`models.nnunet_plan.plan_unet`): stages, kernels and strides; widths 32 doubling up to 320. The registry
passes the patch as ``img_size`` (``needs_fixed_input``: the topology depends on it; the built network takes any
input that is a multiple of the plan's divisors). ``spacing`` (mm, per array axis): a sweep passes the dataset's
median spacing, as nnU-Net plans from its training set's (``ModelInfo.spacing_kwarg``; ``--model_kwargs`` may set
another); built directly without it, isotropic 1 mm, volbench's BraTS resolution.

Deep supervision: in training mode the network returns a list of logits, full resolution first, one per decoder
stage, which the segmentation task weighs with nnU-Net's loss (:mod:`losses.deep_supervision`); in eval mode it
returns the full-resolution logits alone. ``resenc_unet`` has it on by default (nnU-Net's default), ``dynunet``
when built with ``deep_supervision=True``.

Recipe (``train_defaults``, for the trainer flags left unset): nnU-Net's SGD with Nesterov momentum 0.99, lr 1e-2,
weight decay 3e-5, poly decay (1 - epoch/epochs)**0.9; the loss stays the sweep's (every model of a sweep
trains with the same loss).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from monai.networks.nets import DynUNet

from ._registry import register_model
from .nnunet_plan import (NNUNET_BASE_FEATURES, RESENC_BLOCKS_PER_STAGE, UNetPlan, check_divisible, features_per_stage,
                          plan_unet)

DEFAULT_PATCH = (128, 128, 128)
NNUNET_RECIPE: dict[str, Any] = dict(optimizer="sgd", momentum=0.99, lr=1e-2, weight_decay=3e-5, scheduler="poly")
RESENC_PAPER = ("Isensee et al., nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image "
                "Segmentation, MICCAI 2024 (ResEnc U-Net, dynamic-network-architectures)")
# Tiny builds (``--tiny``, tests) keep nnU-Net's 32 features at full resolution and cap every deeper stage at 32:
# the recipe's SGD (lr 1e-2, momentum 0.99) is tuned for nnU-Net's widths, and builds 4 features wide at full
# resolution collapsed to all-background with it on the CT phantoms (benchmarks/RESULTS.md, issue 25). 32 also keeps
# CPU batch-1 convolutions on oneDNN (N*C*D*H > 20480 at 32^3), faster than 16 features there.
TINY_FEATURES = NNUNET_BASE_FEATURES
DYNUNET_PAPER = ("Isensee et al., nnU-Net: a self-configuring method for deep learning-based biomedical image "
                 "segmentation, Nature Methods 2021 (MONAI DynUNet)")


class ResEncUNet(ResidualEncoderUNet):
    """``ResidualEncoderUNet`` whose deep supervision follows the mode: the decoder returns every scale in
    training mode and only the full-resolution logits in eval mode (the library's flag holds in both modes).

    ``deep_supervision``: whether training mode returns the scales at all.
    """

    def __init__(self, *args: Any, deep_supervision: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, deep_supervision=deep_supervision, **kwargs)
        self.train_deep_supervision = bool(deep_supervision)

    def train(self, mode: bool = True) -> "ResEncUNet":
        super().train(mode)
        self.decoder.deep_supervision = bool(mode) and self.train_deep_supervision
        return self


class DynUNetScales(DynUNet):
    """MONAI ``DynUNet`` whose deep-supervision output in training is the list of each head's logits at its own
    resolution (full resolution first), as nnU-Net supervises them, instead of MONAI's stack of heads upsampled
    to full size; eval mode returns the full-resolution logits as ``DynUNet`` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not (self.training and self.deep_supervision):
            return super().forward(x)
        out = self.output_block(self.skip_layers(x))  # the skip layers fill self.heads (DynUNet's own mechanism)
        return [out, *self.heads]


def _planned(img_size: Sequence[int], spacing: Sequence[float] | None, model: str) -> UNetPlan:
    """nnU-Net's plan of ``img_size`` at ``spacing``; ``ValueError`` when the plan does not divide the patch."""
    plan = plan_unet(img_size, spacing)
    check_divisible(img_size, plan, model)
    return plan


@register_model(
    family="resenc_unet", divisibility=32, default_patch_size=DEFAULT_PATCH, needs_fixed_input=True,
    paper=RESENC_PAPER, num_params=102_353_972, train_defaults=NNUNET_RECIPE, test_patch_size=(32, 32, 32),
    tiny_kwargs=dict(img_size=(32, 32, 32), base_features=TINY_FEATURES, max_features=TINY_FEATURES,
                     n_blocks_per_stage=(1,) * 8),
    spacing_kwarg="spacing",
)
def resenc_unet(*, in_channels: int, out_channels: int, img_size: Sequence[int] = DEFAULT_PATCH,
                spacing: Sequence[float] | None = None, deep_supervision: bool = True, base_features: int = 32,
                max_features: int = 320, n_blocks_per_stage: Sequence[int] = RESENC_BLOCKS_PER_STAGE,
                **kwargs: Any) -> nn.Module:
    """nnU-Net's ResEnc U-Net (``nnUNetResEncUNetPlans``) planned for ``img_size`` (voxels) at ``spacing`` (mm).

    Residual encoder blocks per stage ``n_blocks_per_stage`` (1, 3, 4, 6, 6, 6, ...: the first ``n_stages`` are
    used), one convolution per decoder stage, conv bias, instance norm (eps 1e-5, affine), leaky ReLU 0.01, He
    initialisation with the last norm of each residual block zeroed (``ResidualEncoderUNet.initialize``, applied as
    nnU-Net applies it). ``kwargs`` go to ``ResidualEncoderUNet``.
    """
    plan = _planned(img_size, spacing, "resenc_unet")
    n = plan.n_stages
    if len(n_blocks_per_stage) < n:
        raise ValueError(f"resenc_unet: n_blocks_per_stage needs {n} entries for this plan, got {n_blocks_per_stage}")
    arch: dict[str, Any] = dict(
        n_stages=n, features_per_stage=features_per_stage(n, base_features, max_features), conv_op=nn.Conv3d,
        kernel_sizes=[list(k) for k in plan.kernel_sizes], strides=[list(s) for s in plan.strides],
        n_blocks_per_stage=list(n_blocks_per_stage[:n]), n_conv_per_stage_decoder=[1] * (n - 1), conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
        dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    model = ResEncUNet(in_channels, num_classes=out_channels, deep_supervision=deep_supervision,
                       **dict(arch, **kwargs))
    model.apply(model.initialize)
    return model


@register_model(
    family="dynunet", divisibility=32, default_patch_size=DEFAULT_PATCH, needs_fixed_input=True,
    paper=DYNUNET_PAPER, num_params=31_192_068, train_defaults=NNUNET_RECIPE, test_patch_size=(32, 32, 32),
    tiny_kwargs=dict(img_size=(32, 32, 32), filters=(TINY_FEATURES,) * 8), spacing_kwarg="spacing",
)
def dynunet(*, in_channels: int, out_channels: int, img_size: Sequence[int] = DEFAULT_PATCH,
            spacing: Sequence[float] | None = None, deep_supervision: bool = False,
            deep_supr_num: int | None = None, **kwargs: Any) -> nn.Module:
    """MONAI ``DynUNet`` (nnU-Net's plain U-Net: two conv-norm-act per stage, instance norm, leaky ReLU 0.01,
    MONAI's widths 32 doubling up to 320) with nnU-Net's kernels and strides for ``img_size`` at ``spacing``.

    ``deep_supervision``: training returns every decoder scale but the bottleneck (``deep_supr_num`` None: all
    ``n_stages - 2`` heads MONAI allows, i.e. the ``n_stages - 1`` outputs nnU-Net supervises). ``kwargs`` go to
    ``DynUNet`` (``filters``, ``res_block``, ...).
    """
    plan = _planned(img_size, spacing, "dynunet")
    heads = max(1, plan.n_stages - 2) if deep_supr_num is None else deep_supr_num
    return DynUNetScales(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                         kernel_size=[list(k) for k in plan.kernel_sizes], strides=[list(s) for s in plan.strides],
                         upsample_kernel_size=[list(s) for s in plan.strides[1:]], deep_supervision=deep_supervision,
                         deep_supr_num=heads, **kwargs)
