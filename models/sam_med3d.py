"""SAM-Med3D (Wang et al. 2023), the released ``vit_b_ori`` architecture, built from ``medim`` 0.1.2's classes.

The architecture that SAM-Med3D's released (turbo) weights load into:

- image encoder ``ImageEncoderViT3D``: one channel, a 128^3 cube, patch 16 (8^3 tokens), embed 768, depth 12,
  12 heads, MLP ratio 4, qkv bias, absolute + relative positions, global attention at blocks 2, 5, 8, 11 and
  window 14 elsewhere, LayerNorm eps 1e-6, neck 768 -> 384 channels;
- prompt encoder ``PromptEncoder3D``: embed 384, negative / positive / not-a-point embeddings (no usable box
  prompt), mask prompt at a quarter of the window (32^3) through 16 hidden channels;
- mask decoder ``MaskDecoder3D``: two-way transformer (depth 2, MLP 2048, 8 heads), IoU head (depth 3, hidden
  256), used with ``multimask_output=False`` (one mask); its 32^3 low-resolution logits are upsampled
  trilinearly (``align_corners=False``) to the window, as SAM-Med3D's own inference does.

Prompt-free masks (``out_channels = 1 + R``): R = 1 (binary track) is the single-mask output (mask token 0,
``multimask_output=False``), the seed tool's prompt-free mode. R = 2 or 3 (BraTS: WT, TC, ET) are the decoder's
multimask tokens 1..R (``multimask_output=True``, the first R of its three masks and IoU predictions): one learnt
query per region, existing weights of the released checkpoint (no new keys), trained by fine-tuning. Decodings
with points always give the one mask of token 0, whatever R (a click prompt names the object).

The network is held as ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` attributes, so the state-dict
keys are SAM-Med3D's released names (``models/sam_med3d_keys.json`` lists them; no non-persistent
``pixel_mean`` / ``pixel_std``). medim's ``SAM_Med3D.forward`` (no_grad, 2D-style preprocessing) and its weight
loading are not used. The released weights fit ``img_size`` 128 only (position embeddings).

Input: SAM-Med3D's own pipeline resamples to 1.5 mm, crops / pads to 128^3 and z-normalises over voxels > 0. The
entry declares the first and last as its own preprocessing (``PREPROCESSING``: 1.5 mm isotropic, z-normalisation over
the non-zero voxels; ``dataio.model_preprocess``), cached under its own key and used in training and every
evaluation; whole cases are covered by 128^3 sliding windows (zero-padded where smaller) like every model's.

Point convention: SAM-Med3D's click code (``utils/click_method.py``, ``utils/infer_utils.py``) takes
``torch.argwhere`` of the error region of a mask laid out like the image tensor, so its point coordinates are
voxel indices along the image tensor's spatial axes 0, 1, 2. volbench's points are the same, so the mapping is
the identity: volbench ``(i0, i1, i2)`` -> SAM-Med3D ``(i0, i1, i2)``; the prompt encoder then adds 0.5 (voxel
centre) and divides by ``img_size`` per axis. (The prompt encoder's dense positional grid numbers its first two
axes the other way round, ``PositionEmbeddingRandom3D.forward``; the released weights were trained with points
as above, so this is kept, and a test pins it.) Labels 1 positive, 0 negative, -1 padding (not-a-point).

Mask prompt: ``mask_prompt`` is the previous decoding's ``low_res`` logits (B, 1, 32, 32, 32) (four times the
token grid); None uses the learnt no-mask embedding (SAM's convention and seed 002's prompt-free decoding).
SAM-Med3D's own training and click loops start from a zero 32^3 mask instead: pass ``torch.zeros`` of that shape
to reproduce them.
"""

from __future__ import annotations

import importlib
from functools import partial
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import InputPreprocessing, register_model
from .promptable import PromptableNet, PromptOutput, check_masks, check_point_prompts, run_block

PAPER = ("Wang et al., SAM-Med3D: Towards General-purpose Segmentation Models for Volumetric Medical Images, "
         "arXiv:2310.15161, 2023 (released vit_b_ori architecture, medim 0.1.2)")
MULTIPLE_OF = 48  # prompt_embed_dim: /3 (sin, cos, sin position features), /16 (medim's 8-head decoder at rate 2)


def _medim_sam() -> ModuleType:
    """``medim.models.sam_med3d``, imported on first use (``import medim`` needs ``requests``)."""
    try:
        return importlib.import_module("medim.models.sam_med3d")
    except ImportError as err:
        raise ImportError("sam_med3d is built from medim's classes: pip install 'medim==0.1.2' requests") from err


class SamMed3D(PromptableNet):
    """SAM-Med3D as a :class:`PromptableNet` (see the module docstring for the conventions).

    Args:
        image_encoder, prompt_encoder, mask_decoder: medim's ``ImageEncoderViT3D``, ``PromptEncoder3D``,
            ``MaskDecoder3D``.
        img_size: edge of the cube the encoder is built for (voxels).
        n_masks: prompt-free masks, 1 (mask token 0) or up to 3 (multimask tokens 1..n_masks).
    """

    encoder_prefixes = ("image_encoder.",)
    encoder_export_name = "sam_encoder"  # the best checkpoint's encoder alone, as the seed tool exports it
    accepts_mask_prompt = True
    supports_gradient_checkpointing = True

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 img_size: int, n_masks: int = 1) -> None:
        super().__init__()
        self.n_masks = int(n_masks)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.img_size = img_size
        self.low_res_size = tuple(4 * s for s in prompt_encoder.image_embedding_size)
        self.checkpointing = False

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Checkpoint each ViT block of the image encoder (``use_reentrant=False``) while autograd records."""
        self.checkpointing = bool(on)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image embedding (B, prompt_embed_dim, g, g, g), ``g = img_size / patch``, of ``image`` (B, 1, S, S, S),
        ``S = img_size``: medim's ``ImageEncoderViT3D.forward`` with optionally checkpointed blocks."""
        if image.ndim != 5 or tuple(image.shape[1:]) != (1, *(self.img_size,) * 3):
            raise ValueError(f"sam_med3d: input must be (B, 1, {self.img_size}, {self.img_size}, {self.img_size}) "
                             f"(the cube the ViT is built for), got {tuple(image.shape)}")
        enc = self.image_encoder
        x = enc.patch_embed(image)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for block in enc.blocks:
            x = run_block(block, x, self.checkpointing)
        return enc.neck(x.permute(0, 4, 1, 2, 3))

    def embed_prompts(self, points: torch.Tensor | None, labels: torch.Tensor | None,
                      mask_prompt: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt encoder's sparse (B, N + 1, C) (no points: (B, 0, C)) and dense (B, C, g, g, g) embeddings;
        ``points`` are passed unchanged (volbench's and SAM-Med3D's conventions agree, module docstring)."""
        check_point_prompts(points, labels, batch, "sam_med3d")
        if mask_prompt is not None and tuple(mask_prompt.shape) != (batch, 1, *self.low_res_size):
            raise ValueError(f"sam_med3d: mask_prompt must be the previous low_res logits (B={batch}, 1, "
                             f"{', '.join(map(str, self.low_res_size))}), got {tuple(mask_prompt.shape)}")
        if points is None and mask_prompt is None:
            return self._no_prompt(batch)
        prompt = None if points is None else (points.float(), labels)
        return self.prompt_encoder(points=prompt, boxes=None, masks=mask_prompt)

    def _no_prompt(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What medim's prompt encoder gives without prompts (no sparse token, the no-mask embedding everywhere),
        for ``batch`` samples (medim sizes it for one). Not through the module's call: a view of a parameter made
        under no_grad claims ``requires_grad``, which FlopCounterMode's module hooks refuse on a module output."""
        encoder = self.prompt_encoder
        weight = encoder.no_mask_embed.weight
        sparse = weight.new_zeros(batch, 0, encoder.embed_dim)
        return sparse, weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *encoder.image_embedding_size)

    def decode(self, embedding: torch.Tensor, points: torch.Tensor | None, labels: torch.Tensor | None,
               mask_prompt: torch.Tensor | None) -> PromptOutput:
        """Logits (B, M, S, S, S), low_res (B, M, 4g, 4g, 4g) (32^3 for the released 128^3, patch 16), predicted
        IoU (B, M): M = 1 with points or ``n_masks`` 1 (mask token 0), else M = ``n_masks`` (multimask tokens)."""
        sparse, dense = self.embed_prompts(points, labels, mask_prompt, embedding.shape[0])
        multimask = points is None and self.n_masks > 1
        low_res, iou = self.mask_decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=multimask)
        if multimask:
            low_res, iou = low_res[:, :self.n_masks], iou[:, :self.n_masks]
        logits = F.interpolate(low_res, size=(self.img_size,) * 3, mode="trilinear", align_corners=False)
        return PromptOutput(logits=logits, low_res=low_res, iou=iou)


def _cube(img_size: Any, patch_size: int) -> int:
    """The cube edge of ``img_size`` (an int or three equal ints divisible by ``patch_size``)."""
    sizes = (img_size,) * 3 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(sizes) != 3 or len(set(sizes)) != 1 or sizes[0] % patch_size:
        raise ValueError(f"sam_med3d: img_size must be a cube with an edge divisible by the patch size {patch_size} "
                         f"(the ViT's position embeddings are built for one cube), got {img_size}")
    return sizes[0]


def build_sam_med3d(*, img_size: int, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                    num_heads: int = 12, global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
                    window_size: int = 14, prompt_embed_dim: int = 384, mask_in_chans: int = 16,
                    decoder_depth: int = 2, decoder_mlp_dim: int = 2048, decoder_heads: int = 8,
                    iou_head_hidden_dim: int = 256, n_masks: int = 1) -> SamMed3D:
    """SAM-Med3D from medim's classes; the defaults are the released ``vit_b_ori`` (medim's
    ``build_sam3D_vit_b_ori``); other decoder sizes replace medim's hard-coded two-way transformer."""
    if prompt_embed_dim % MULTIPLE_OF:
        raise ValueError(f"sam_med3d: prompt_embed_dim must be a multiple of {MULTIPLE_OF}, got {prompt_embed_dim}")
    sam = _medim_sam()
    grid = img_size // patch_size
    encoder = sam.ImageEncoderViT3D(
        img_size=img_size, patch_size=patch_size, in_chans=1, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=4, out_chans=prompt_embed_dim, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True, window_size=window_size, global_attn_indexes=tuple(global_attn_indexes))
    prompt_encoder = sam.PromptEncoder3D(embed_dim=prompt_embed_dim, image_embedding_size=(grid,) * 3,
                                         input_image_size=(img_size,) * 3, mask_in_chans=mask_in_chans)
    decoder = sam.MaskDecoder3D(num_multimask_outputs=3, transformer_dim=prompt_embed_dim, iou_head_depth=3,
                                iou_head_hidden_dim=iou_head_hidden_dim)
    if (decoder_depth, decoder_mlp_dim, decoder_heads) != (2, 2048, 8):
        decoder.transformer = sam.TwoWayTransformer3D(depth=decoder_depth, embedding_dim=prompt_embed_dim,
                                                      num_heads=decoder_heads, mlp_dim=decoder_mlp_dim)
    return SamMed3D(encoder, prompt_encoder, decoder, img_size, n_masks=n_masks)


def state_dict_shapes(model: nn.Module) -> dict[str, list[int]]:
    """State-dict key -> shape, in state-dict order (the format of ``sam_med3d_keys.json``)."""
    return {key: list(value.shape) for key, value in model.state_dict().items()}


# Seed 002's recipe (MODEL_SPECS.md section 3): its loss (losses.sam), AdamW lr 1e-4, weight decay 1e-4,
# reduce-on-plateau (x0.5, patience 5), gradient accumulation 4, clipping at norm 1.0. It is a fine-tuning recipe for
# the released weights: from scratch, lr 1e-4 moves AdamW's weights too little in a CPU budget (the tiny build gained
# 0.07 test Dice in 960 optimiser steps) and lr 1e-3 without accumulation learns (benchmarks/RESULTS.md, "Promptable
# models on the CT phantoms"; tests/test_promptable_learning.py).
PREPROCESSING = InputPreprocessing(target_spacing=(1.5, 1.5, 1.5), intensity="zscore_nonzero")
TRAIN_DEFAULTS: dict[str, Any] = dict(loss="sam_med3d", optimizer="adamw", lr=1e-4, weight_decay=1e-4,
                                      scheduler="plateau", grad_accum=4, max_grad_norm=1.0)
TINY: dict[str, Any] = dict(img_size=(32, 32, 32), patch_size=8, embed_dim=48, depth=2, num_heads=4,
                            global_attn_indexes=(1,), window_size=3, prompt_embed_dim=48, mask_in_chans=8,
                            decoder_depth=2, decoder_mlp_dim=64, decoder_heads=4, iou_head_hidden_dim=32)


@register_model(family="sam_med3d", task="promptable", spatial_dims=3, modalities=("flair",), any_channels=True,
                needs_fixed_input=True, divisibility=16, default_patch_size=(128, 128, 128),
                test_patch_size=(32, 32, 32), paper=PAPER, num_params=100_509_232, tiny_kwargs=TINY,
                train_defaults=TRAIN_DEFAULTS, preprocessing=PREPROCESSING, scratch_flags="--lr 1e-3 --grad_accum 1")
def sam_med3d(*, in_channels: int = 1, out_channels: int = 2, img_size: Any = (128, 128, 128),
              **kwargs: Any) -> nn.Module:
    """SAM-Med3D ``vit_b_ori`` for a cube ``img_size`` (a 3-tuple); ``kwargs``: :func:`build_sam_med3d`'s sizes;
    ``out_channels = 1 + R`` prompt-free masks (module docstring).

    Raises:
        ValueError: ``in_channels`` is not 1 (the released patch embedding takes one channel), ``out_channels`` is
            not 2 to 4 (``cat([0, z_1 .. z_R])``, R <= 3 decoder masks), or ``img_size`` is not a cube.
    """
    if in_channels != 1:
        raise ValueError(f"sam_med3d: in_channels must be 1 (SAM-Med3D's patch embedding takes one channel), "
                         f"got {in_channels}")
    n_masks = check_masks(out_channels, 3, "sam_med3d", "the decoder's three multimask tokens")
    patch = int(kwargs.get("patch_size", 16))
    return build_sam_med3d(img_size=_cube(img_size, patch), **dict(kwargs, n_masks=n_masks))
