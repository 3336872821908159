"""Dilated downsampling block (3D): strided conv, then dilated convs for a wide receptive field.

Conventions: tensors are (B, C, D, H, W); each conv is Conv3d (no bias) -> norm -> ReLU with
'same' padding ``dilation * (kernel - 1) / 2`` after the strided one.

Deviation from the original repository (MODEL_SPECS 1.5, 1.9): the dilated convs default to 3^3
kernels (padding 2 and 5), the kernel the repository moved to in its later commit ``eeeb5a3``;
the 5^3 version (padding 4 and 10) is available with ``kernel=5``.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .unet_blocks import conv_norm_act


class Down3DStrideDilated(nn.Sequential):
    """Conv 3^3 stride 2 (in -> out), then one ``kernel``^3 conv per rate in ``dilations`` (out -> out).

    Halves each spatial size. With the default rates (2, 5) the block's convs use dilation 1, 2, 5.
    """

    def __init__(self, in_ch: int, out_ch: int, *, kernel: int = 3, dilations: Sequence[int] = (2, 5),
                 norm: str = "bn") -> None:
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd for 'same' padding, got {kernel}")
        if any(d < 1 for d in dilations):
            raise ValueError(f"dilations must be >= 1, got {tuple(dilations)}")
        layers = [conv_norm_act(in_ch, out_ch, stride=2, norm=norm)]
        layers += [conv_norm_act(out_ch, out_ch, kernel=kernel, dilation=d, norm=norm) for d in dilations]
        super().__init__(*layers)
