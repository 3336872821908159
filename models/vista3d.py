"""VISTA3D (He et al.) from MONAI, as a :class:`PromptableNet`; the default build is MONAI's ``vista3d132``.

``vista3d132(encoder_embed_dim=48, in_channels=1)``: a ``SegResNetDS2`` image encoder (48 initial filters,
``blocks_down=(1, 2, 2, 4, 4)``, instance norm, one level of output; it carries two decoder branches, one for the
point head and one for the class head), a ``PointMappingSAM`` point head and a ``ClassMappingClassify`` class head
(512 class embeddings, classes above 132 zero-shot). The parts are held as ``image_encoder``, ``class_head`` and
``point_head``, so the state-dict keys are VISTA3D's. MONAI's ``VISTA3D.forward`` (one image per call, sliding
window bookkeeping, ``torch.cuda.empty_cache``) is not used; the heads are called directly:

- prompt-free: VISTA3D's automatic segmentation with one class prompt per mask, ``class_vector = [[class_index],
  ..., [class_index + R - 1]]`` (default 1; R = ``out_channels - 1``: 1 on the binary track, 3 on BraTS for WT,
  TC, ET): the class head's (B, R, D, H, W) logits from the auto branch (VISTA3D's class embeddings are
  general-purpose learnt queries; brain-tumour regions are not among its released classes, fine-tuning learns
  them);
- with points: VISTA3D's point-only segmentation (``class_vector`` None): the point head on the point branch,
  one image at a time (its transformer repeats the image features per prompt), with every click so far.
  VISTA3D has no mask prompt (its ``prev_mask`` is the previous result for merging, not a network input):
  ``accepts_mask_prompt`` is False and ``decode`` ignores ``mask_prompt``. VISTA3D's labels 2 / 3 (negative /
  positive for its "special" tumour classes) are passed through as given.

Point convention: ``PointMappingSAM`` adds 0.5 (voxel centre) and divides coordinate ``k`` by the size of the
feature map's axis ``k``, which is the input's full size; its dense positional grid numbers the axes the same
way. So coordinates are voxel indices along the input tensor's spatial axes 0, 1, 2, as volbench's: the mapping
is the identity, ``(i0, i1, i2)`` -> ``(i0, i1, i2)``.

Inputs: any size divisible by ``2 ** (len(blocks_down) - 1)`` (16 for the default). VISTA3D's own CT
preprocessing scales HU -963.8 .. 1053.7 to 0 .. 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn
from monai.networks.nets import SegResNetDS2
from monai.networks.nets.vista3d import ClassMappingClassify, PointMappingSAM

from ._registry import register_model
from .promptable import CheckpointedSequential, PromptableNet, PromptOutput, check_masks, check_point_prompts

PAPER = ("He et al., VISTA3D: A Unified Segmentation Foundation Model For 3D Medical Imaging, CVPR 2025 "
         "(arXiv:2406.05285); MONAI vista3d132")


class Vista3DEmbedding(NamedTuple):
    """SegResNetDS2's two full-resolution feature maps (B, C, D, H, W): ``point`` for the point head, ``auto`` for
    the class head (None when not computed)."""

    point: torch.Tensor | None
    auto: torch.Tensor | None


class Vista3DNet(PromptableNet):
    """VISTA3D's image encoder and heads as a :class:`PromptableNet` (see the module docstring).

    Args:
        image_encoder: MONAI ``SegResNetDS2`` (its ``forward(x, with_point, with_label)``).
        class_head: ``ClassMappingClassify``; point_head: ``PointMappingSAM``.
        class_index: the class prompt of the first prompt-free mask (mask r: ``class_index + r``).
        n_masks: prompt-free masks.
    """

    encoder_prefixes = ("image_encoder.",)
    accepts_mask_prompt = False
    supports_gradient_checkpointing = True

    def __init__(self, image_encoder: SegResNetDS2, class_head: nn.Module, point_head: nn.Module,
                 class_index: int = 1, n_masks: int = 1) -> None:
        super().__init__()
        self.n_masks = int(n_masks)
        self.image_encoder = image_encoder
        self.class_head = class_head
        self.point_head = point_head
        self.class_index = class_index
        self.divisor = 2 ** (len(image_encoder.blocks_down) - 1)
        for layers in (image_encoder.encoder.layers, image_encoder.up_layers, image_encoder.up_layers_auto):
            for level in layers:
                level["blocks"] = CheckpointedSequential(*level["blocks"])  # same children, same keys

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Checkpoint the residual blocks of each encoder and decoder level (``use_reentrant=False``)."""
        for module in self.image_encoder.modules():
            if isinstance(module, CheckpointedSequential):
                module.checkpointing = bool(on)

    def _features(self, image: torch.Tensor, with_point: bool, with_label: bool) -> Vista3DEmbedding:
        bad = [s for s in image.shape[2:] if s % self.divisor]
        if image.ndim != 5 or image.shape[1] != self.image_encoder.in_channels or bad:
            raise ValueError(f"vista3d: input must be (B, {self.image_encoder.in_channels}, D, H, W) with every "
                             f"spatial size divisible by {self.divisor}, got {tuple(image.shape)}")
        point, auto = self.image_encoder(image, with_point=with_point, with_label=with_label)
        return Vista3DEmbedding(point if with_point else None, auto if with_label else None)

    def encode(self, image: torch.Tensor) -> Vista3DEmbedding:
        """Both feature maps of ``image`` (B, 1, D, H, W), for the prompt-free and the point decoding."""
        return self._features(image, with_point=True, with_label=True)

    def _class_logits(self, auto: torch.Tensor) -> torch.Tensor:
        class_vector = torch.arange(self.n_masks, device=auto.device)[:, None] + self.class_index
        masks, _ = self.class_head(auto, class_vector)  # (n_masks classes, B, D, H, W)
        return masks.transpose(0, 1)

    def decode(self, embedding: Vista3DEmbedding, points: torch.Tensor | None, labels: torch.Tensor | None,
               mask_prompt: torch.Tensor | None = None) -> PromptOutput:
        """Logits (B, n_masks, D, H, W) of the class head without points, else (B, 1, D, H, W) of the point head;
        ``mask_prompt`` ignored."""
        features = embedding.auto if points is None else embedding.point
        if features is None:
            raise ValueError(f"vista3d: the embedding has no {'auto' if points is None else 'point'} branch features")
        check_point_prompts(points, labels, features.shape[0], "vista3d")
        if points is None or labels is None:
            return PromptOutput(logits=self._class_logits(features))
        logits = [self.point_head(features[i:i + 1], points[i:i + 1].float(), labels[i:i + 1], class_vector=None)
                  for i in range(features.shape[0])]
        return PromptOutput(logits=torch.cat(logits, dim=0))

    def prompt_free(self, x: torch.Tensor) -> PromptOutput:
        """The class-prompt prediction, computing only the auto branch of the encoder."""
        return self.decode(self._features(x, with_point=False, with_label=True), None, None, None)


def build_vista3d(*, in_channels: int = 1, encoder_embed_dim: int = 48, blocks_down: tuple[int, ...] = (1, 2, 2, 4, 4),
                  n_classes: int = 512, last_supported: int = 132, class_index: int = 1,
                  n_masks: int = 1) -> Vista3DNet:
    """VISTA3D with MONAI's parts; the defaults are ``vista3d132(encoder_embed_dim=48, in_channels=1)``."""
    encoder = SegResNetDS2(in_channels=in_channels, blocks_down=tuple(blocks_down), norm="instance",
                           out_channels=encoder_embed_dim, init_filters=encoder_embed_dim, dsdepth=1)
    point_head = PointMappingSAM(feature_size=encoder_embed_dim, n_classes=n_classes, last_supported=last_supported)
    class_head = ClassMappingClassify(n_classes=n_classes, feature_size=encoder_embed_dim, use_mlp=True)
    return Vista3DNet(encoder, class_head, point_head, class_index=class_index, n_masks=n_masks)


@register_model(family="vista3d", task="promptable", spatial_dims=3, modalities=("flair",), any_channels=True,
                divisibility=16, default_patch_size=(128, 128, 128), test_patch_size=(32, 32, 32), paper=PAPER,
                num_params=217_964_982, tiny_kwargs=dict(encoder_embed_dim=16, blocks_down=(1, 1, 1)))
def vista3d(*, in_channels: int = 1, out_channels: int = 2, img_size: Any = None, **kwargs: Any) -> nn.Module:
    """VISTA3D (``vista3d132``); ``img_size`` is accepted and ignored; ``kwargs``: :func:`build_vista3d`'s.

    Raises:
        ValueError: ``in_channels`` is not 1 (VISTA3D reads one CT channel) or ``out_channels`` is not 2 to 4
            (``cat([0, z_1 .. z_R])``, one class prompt per mask, R <= 3).
    """
    if in_channels != 1:
        raise ValueError(f"vista3d: in_channels must be 1 (VISTA3D reads one CT channel), got {in_channels}")
    n_masks = check_masks(out_channels, 3, "vista3d", "one class prompt each")
    return build_vista3d(in_channels=in_channels, **dict(kwargs, n_masks=n_masks))
