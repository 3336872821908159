"""The 2.5D U-Net of the LUNA16 chapter (Stevens, Antiga & Viehmann, Deep Learning with PyTorch, ch. 13).

The chapter's ``UNetWrapper``: a BatchNorm2d over the input channels (the CT slice and 3 neighbours on each
side: 7 channels), then the book's copy of jvanvugt/pytorch-unet with ``depth=3, wf=4`` (16/32/64 filters,
``2**(wf + i)``), ``padding=True``, ``batch_norm=True``, ``up_mode='upconv'``: conv blocks of
(conv 3x3 -> ReLU -> BN) x 2, 2x2 average pooling between levels (the book's copy; jvanvugt's original
max-pools), up blocks of ConvTranspose2d(k2, s2) -> centre-cropped skip -> concat -> conv block, a 1x1 conv to
one channel ``z``; the chapter's probability is ``sigmoid(z)``. Weights follow the chapter's
``_init_weights``. Hand-written because MONAI's BasicUNet / UNet order and normalise their blocks differently
(conv -> norm -> act, instance norm by default, no input BatchNorm). State-dict keys match the chapter's
``UNetWrapper`` (``input_batchnorm.*``, ``unet.down_path.*``, ``unet.up_path.*``, ``unet.last.*``).

Output convention: volbench's segmentation path reads two-class logits and takes softmax / argmax, so the
network returns ``(B, 2, H, W) = cat([0, z])``: ``softmax(...)[:, 1] == sigmoid(z)``, the chapter's
probability, and argmax is foreground iff ``sigmoid(z) > 0.5`` (the chapter's threshold; a tie at ``z = 0``
is background). For ``out_channels = C > 2`` (the registry's multi-class contract, e.g. BraTS's 4 labels) the
last conv gives C - 1 channels and class 0 keeps the zero logit (a reference-class softmax); C = 2 is the
chapter's network exactly. Inputs must be divisible by ``2**(depth - 1)`` (4 for the default depth 3).
Registered with one named channel (``modalities=("flair",)``, ``any_channels``: on CT data it reads the CT
channel), so the default build has the chapter's 7 inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model

PAPER = ("Stevens, Antiga & Viehmann, Deep Learning with PyTorch, Manning 2020, ch. 13 (LUNA16 nodule "
         "segmentation: UNetWrapper over jvanvugt/pytorch-unet)")
CONTEXT_SLICES = 3  # the chapter's contextSlices_count: 7 input channels per CT channel
_INIT_TYPES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


class UNetConvBlock(nn.Module):
    """(conv 3x3, padding 1 -> ReLU -> [BatchNorm]) x 2, as the chapter's block (kept in ``.block``)."""

    def __init__(self, in_size: int, out_size: int, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin in (in_size, out_size):
            layers += [nn.Conv2d(cin, out_size, kernel_size=3, padding=1), nn.ReLU()]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_size))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNetUpBlock(nn.Module):
    """Upsample x2 (``upconv``: ConvTranspose2d k2 s2; ``upsample``: bilinear + 1x1 conv), centre-crop the skip
    to the upsampled size, concat [up, skip], conv block."""

    def __init__(self, in_size: int, out_size: int, up_mode: str, batch_norm: bool) -> None:
        super().__init__()
        if up_mode == "upconv":
            self.up: nn.Module = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2)
        elif up_mode == "upsample":
            self.up = nn.Sequential(nn.Upsample(mode="bilinear", scale_factor=2),
                                    nn.Conv2d(in_size, out_size, kernel_size=1))
        else:
            raise ValueError(f"up_mode must be 'upconv' or 'upsample', got {up_mode!r}")
        self.conv_block = UNetConvBlock(in_size, out_size, batch_norm)

    @staticmethod
    def center_crop(layer: torch.Tensor, size: torch.Size) -> torch.Tensor:
        dy, dx = (layer.shape[2] - size[0]) // 2, (layer.shape[3] - size[1]) // 2
        return layer[:, :, dy:dy + size[0], dx:dx + size[1]]

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        return self.conv_block(torch.cat([up, self.center_crop(bridge, up.shape[2:])], 1))


class UNet(nn.Module):
    """The book's jvanvugt U-Net with padded convolutions: ``depth`` levels of ``2**(wf + i)`` filters."""

    def __init__(self, in_channels: int, n_classes: int, depth: int, wf: int, batch_norm: bool,
                 up_mode: str) -> None:
        super().__init__()
        widths = [2 ** (wf + i) for i in range(depth)]
        self.down_path = nn.ModuleList(UNetConvBlock(cin, cout, batch_norm)
                                       for cin, cout in zip([in_channels, *widths[:-1]], widths))
        self.up_path = nn.ModuleList(UNetUpBlock(widths[i + 1], widths[i], up_mode, batch_norm)
                                     for i in reversed(range(depth - 1)))
        self.last = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bridges = []
        for i, down in enumerate(self.down_path):
            x = down(x)
            if i != len(self.down_path) - 1:
                bridges.append(x)
                x = F.avg_pool2d(x, 2)
        for up, bridge in zip(self.up_path, reversed(bridges)):
            x = up(x, bridge)
        return self.last(x)


def _fan_out(weight: torch.Tensor) -> int:
    """torch's fan_out: ``weight.shape[0]`` times the receptive field (ConvTranspose: its in_channels)."""
    return weight.shape[0] * math.prod(weight.shape[2:])


class UNet2DLuna(nn.Module):
    """The chapter's ``UNetWrapper`` returning two-class logits ``cat([0, z])`` (see the module docstring).

    Args:
        in_channels: input channels (7: a CT slice and 3 neighbours on each side).
        out_channels: classes of the logits, >= 2 (2: the chapter's single sigmoid channel).
        depth: U-Net levels (``depth - 1`` poolings); wf: first level has ``2**wf`` filters.
        batch_norm: BatchNorm after each ReLU of the conv blocks; up_mode: ``upconv`` | ``upsample``.
    """

    def __init__(self, *, in_channels: int = 7, out_channels: int = 2, depth: int = 3, wf: int = 4,
                 batch_norm: bool = True, up_mode: str = "upconv") -> None:
        super().__init__()
        if out_channels < 2:
            raise ValueError(f"unet2d_luna: out_channels must be >= 2 (two-class logits cat([0, z]) whose softmax "
                             f"channel 1 is the chapter's sigmoid; use 2 for the chapter's one-channel output), "
                             f"got {out_channels}")
        if depth < 1:
            raise ValueError(f"unet2d_luna: depth must be >= 1, got {depth}")
        self.out_channels = out_channels
        self.divisor = 2 ** (depth - 1)
        self.input_batchnorm = nn.BatchNorm2d(in_channels)
        self.unet = UNet(in_channels, out_channels - 1, depth, wf, batch_norm, up_mode)
        self._init_weights()

    def _init_weights(self) -> None:
        """The chapter's init: Kaiming-normal (fan_out, ReLU) weights; biases ``normal_(mean=-b, std=b)``,
        ``b = 1 / sqrt(fan_out)`` (the book calls ``nn.init.normal_(m.bias, -bound, bound)``: a normal, not a
        uniform, draw). BatchNorm keeps torch's defaults."""
        for m in self.modules():
            if type(m) in _INIT_TYPES:
                nn.init.kaiming_normal_(m.weight.data, mode="fan_out", nonlinearity="relu", a=0)
                if m.bias is not None:
                    bound = 1 / math.sqrt(_fan_out(m.weight.data))
                    nn.init.normal_(m.bias, -bound, bound)

    def pre_sigmoid(self, x: torch.Tensor) -> torch.Tensor:
        """The chapter's U-Net output ``z`` (B, out_channels - 1, H, W), before its sigmoid."""
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if x.ndim != 4 or bad:
            raise ValueError(f"unet2d_luna: input must be (B, C, H, W) with H and W divisible by {self.divisor}, "
                             f"got shape {tuple(x.shape)}")
        return self.unet(self.input_batchnorm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, out_channels, H, W) = ``cat([0, z])``."""
        z = self.pre_sigmoid(x)
        return torch.cat([torch.zeros_like(z[:, :1]), z], dim=1)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """The chapter's output ``sigmoid(z)`` (B, 1, H, W); two-class builds only."""
        if self.out_channels != 2:
            raise ValueError(f"probability() is the chapter's one-channel sigmoid; this build has "
                             f"out_channels={self.out_channels}")
        return torch.sigmoid(self.pre_sigmoid(x))


# The chapter's recipe: Adam(params) with torch's defaults (lr 1e-3, no weight decay), no scheduler, no gradient
# clipping, batch size 16, its weighted Dice (``losses.luna``); training crops of 64 x 64 centred on a nodule
# voxel (positive samples only) and shifted up to 16 voxels (random 64 x 64 crops of 96 x 96 chunks).
TRAIN_DEFAULTS: dict[str, Any] = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="none",
                                      max_grad_norm=None, batch_size=16, loss="luna_dice")


@register_model(family="unet2d_luna", task="segmentation", paper=PAPER, spatial_dims=2, modalities=("flair",),
                any_channels=True, context_slices=CONTEXT_SLICES, divisibility=4, default_patch_size=(64, 64),
                test_patch_size=(32, 32), tiny_kwargs=dict(wf=2), num_params=118_305, foreground_fraction=1.0,
                centre_jitter=16, train_defaults=TRAIN_DEFAULTS)
def unet2d_luna(*, in_channels: int = 7, out_channels: int = 2, **kwargs: Any) -> nn.Module:
    """The chapter's 2.5D U-Net (depth 3, 16/32/64 filters); ``kwargs``: ``depth``, ``wf``, ``batch_norm``,
    ``up_mode``."""
    return UNet2DLuna(in_channels=in_channels, out_channels=out_channels, **kwargs)
