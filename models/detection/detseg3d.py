"""DetSeg3D: a CenterNet-style 3D lesion detector (stride 8) followed by a U-Net on each RoI.

After kevinkwshin/DetSeg3D ``main.py`` (MODEL_SPECS 2.1), with these deliberate differences:

- the heatmap loss is CenterNet's penalty-reduced focal loss on the logits, normalised by the number of
  lesions (the original applied MONAI's FocalLoss, a mean over every cell, to probabilities); the size loss
  compares log sizes (:mod:`losses.detection`); the detection terms have equal weights 1/1/1;
- the size head predicts log sizes (``exp`` instead of the original ReLU, whose zero output at a lesion's
  centre gets no gradient);
- box regression (``regress="box"``, TTFNet's Gaussian-weighted regression): size and offset are trained at every
  cell the lesion's box meets, weighted by its heatmap Gaussian there, not at the centre cell only (the seed writes
  them at the centre but masks its L1 to every cell of target > 0.5, so its other cells learn size 0); a heatmap peak
  a cell off the centre then still decodes the lesion's box. This matters for thin, hollow lesions such as a
  subdural crescent, whose box centre lies off the lesion and whose peak lands beside the centre cell; offsets are
  then linear (``raw + 0.5``, in cells, any value), not the seed's squashed [0, 1). ``regress="centre"``: the centre
  cell only, sigmoid offsets;
- the detector uses GroupNorm (8 groups) instead of BatchNorm: trained on one patch per step, BatchNorm
  normalises each patch by its own statistics but a scan at inference by its running averages, so the
  heatmap learnt in training shifts at inference (higher off the lesions, lower at their centres);
- each RoI has two boxes: the decoded *detection box* (reported and scored against the lesions' boxes) and a
  *crop box* of the same centre with sizes clipped to ``[min_box, max_box]`` (segmented and pasted back), so
  a lesion thinner than ``min_box`` (one 5 mm slice of a head CT) keeps a box that can overlap its own;
- the detector's grid follows the voxel spacing (:func:`grid_for_spacing`): stride 8 on the finest axis and about as
  many mm on the others, halving the coarse axis at the last levels as nnU-Net plans anisotropic data (the seed
  strides 8 on every axis: on head CT of 5 mm slices a cell spans 40 mm across slices, two cells the whole
  phantom, and the z offset of a one-slice haemorrhage cannot be learnt; see benchmarks/RESULTS.md); isotropic
  voxels keep the seed's grid;
- RoI peaks go through 3D NMS; training RoIs are the ground-truth boxes (plain and jittered) and the
  detector's proposals that hit a lesion, plus hard negatives; the RoI U-Net uses instance norm.

Stage 1, detector (GroupNorm + ReLU throughout): init Convolution 3^3 (in -> c); three levels, each a MONAI
``ResidualUnit`` (2 subunits, 3^3) then a strided ``Convolution`` (c -> 2c -> 4c -> 8c; stride 2 on each axis
the grid halves at that level); a fusion
``ResidualUnit`` (8c); three heads, each Convolution 3^3 (8c -> 4c, GroupNorm, ReLU) + 1^3 conv:
heatmap (1 channel, logits; bias initialised to the focal prior -log((1 - 0.01) / 0.01)),
size (3 channels, ``exp`` of the head's output clipped to +-``LOG_SIZE_LIMIT`` with gradients passing the clip,
in cells = voxels / stride; about 1 cell at initialisation), offset (3 channels, in cells from the cell's corner:
``raw + 0.5`` with box regression, ``sigmoid(raw)`` in [0, 1) with centre regression). The regression mode is a
buffer of the state dict (``box_regression``), so a checkpoint decodes as it was trained whatever the build says;
one saved before the mode existed (no buffer) loads as centre regression, the only mode then.

Stage 2, RoI segmenter: MONAI ``UNet`` (3D, in_channels -> 1 logit, channels ``seg_channels``, strides 2,
2 residual units, dropout 0.1, instance norm, so each RoI is segmented independently of its mini-batch).

Conventions are those of :mod:`models.detection.roi` (boxes ``[x1, y1, z1, x2, y2, z2]`` over array axes
0, 1, 2, maximum exclusive) and :mod:`losses.detection`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet
from torch import nn

from losses.detection import CenterNetDetectionLoss, roi_dice_bce_loss

from .._registry import register_model
from ..anisotropy import halvings_for_spacing, step_strides
from . import roi as R

logger = logging.getLogger(__name__)

PAPER = "DetSeg3D (CenterNet-style detector + RoI U-Net)"
STRIDE = 8
HEATMAP_PRIOR = 0.01
PROPOSAL_HIT_IOU = 0.1  # a training proposal whose detection box reaches this IoU with a lesion's box is a positive
LOG_SIZE_LIMIT = 6.0  # sizes within exp(+-6) cells (0.02 to 3200 voxels at stride 8): no overflow, no zero


class Detections(NamedTuple):
    """One scan's :meth:`DetSeg3D.predict`: probability (D, H, W), boxes (N, 6) and scores (N,) float32, and the
    highest heatmap probability of the scan (``peak``)."""

    probability: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    peak: float


def _norm(channels: int) -> tuple[str, dict[str, int]]:
    """MONAI norm argument of the detector: GroupNorm of ``gcd(channels, 8)`` groups (affine, as many
    parameters as BatchNorm)."""
    return ("GROUP", {"num_groups": math.gcd(channels, 8)})


def _conv(cin: int, cout: int) -> Convolution:
    return Convolution(3, cin, cout, kernel_size=3, act="RELU", norm=_norm(cout))


def grid_for_spacing(spacing: Sequence[float] | None) -> tuple[int, int, int]:
    """The detector's stride per axis for voxels of ``spacing`` (mm per axis): 8 on the finest axis, and on each
    other axis the power of two in [1, 8] nearest (in log scale) to ``8 * finest / spacing``, so the cells are
    about as long in mm on every axis; ``None`` or isotropic voxels: the seed's 8 on every axis. Head CT of 0.9 mm
    x 0.9 mm x 4.5 mm gets (8, 8, 2): cells of 7 x 7 x 9 mm instead of 7 x 7 x 36 mm (a 16-slice phantom is two
    such cells deep)."""
    if spacing is None:
        return (STRIDE,) * 3
    return tuple(2**h for h in halvings_for_spacing(spacing, 3))  # type: ignore[return-value]


def level_strides(stride: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-level conv strides of the detector's three levels for a total per-axis ``stride`` (each 1, 2, 4 or 8):
    an axis of stride ``2^n`` is halved at the last ``n`` levels (as nnU-Net plans an anisotropic axis: the
    fine axes are halved first, the coarse one once they have caught up)."""
    if len(stride) != 3 or any(s not in (1, 2, 4, 8) for s in stride):
        raise ValueError(f"detector stride must be three of 1, 2, 4, 8 per axis, got {tuple(stride)}")
    return step_strides([int(round(math.log2(s))) for s in stride], 3)


def _read_regression_mode(module: "CenterNetDetector3D", incompatible_keys: Any) -> None:
    """After a state dict is loaded: decode as the loaded weights were trained (their ``box_regression``)."""
    module._box = bool(module.box_regression)


def _centre_mode_for_old_weights(module: "CenterNetDetector3D", state_dict: dict[str, Any], prefix: str,
                                 *args: Any) -> None:
    """Before a state dict is loaded: weights saved before the mode existed (no ``box_regression``) were trained
    with centre regression (sigmoid offsets), the only mode then, so they load as such."""
    key = f"{prefix}box_regression"
    if key not in state_dict:
        logger.warning("DetSeg3D weights without %s were saved before box regression existed: they decode with "
                       "centre regression (sigmoid offsets), as they were trained", key)
        state_dict[key] = torch.tensor(0, dtype=torch.uint8)


class CenterNetDetector3D(nn.Module):
    """Anchor-free detector at ``stride`` (per axis; the seed's 8 on every axis by default): returns
    ``(heatmap logits (B,1), size (B,3), offset (B,3))`` maps."""

    def __init__(self, in_channels: int, base_channels: int = 32, stride: Sequence[int] = (STRIDE,) * 3,
                 regress: str = "box") -> None:
        super().__init__()
        if regress not in R.REGRESS_MODES:
            raise ValueError(f"regress must be one of {R.REGRESS_MODES}, got {regress!r}")
        c = int(base_channels)
        self.register_buffer("box_regression", torch.tensor(int(regress == "box"), dtype=torch.uint8))
        self._box = regress == "box"  # the buffer's value, kept on the host (no device sync per forward)
        self.register_load_state_dict_pre_hook(_centre_mode_for_old_weights)
        self.register_load_state_dict_post_hook(_read_regression_mode)
        self.init_conv = _conv(in_channels, c)
        levels = []
        for k, strides in enumerate(level_strides(stride)):
            cin = c * 2**k
            levels.append(nn.Sequential(
                ResidualUnit(3, cin, cin, strides=1, kernel_size=3, subunits=2, act="RELU", norm=_norm(cin)),
                Convolution(3, cin, 2 * cin, strides=strides, kernel_size=3, act="RELU", norm=_norm(2 * cin))))
        self.encoder = nn.Sequential(*levels)
        self.fusion = ResidualUnit(3, 8 * c, 8 * c, strides=1, kernel_size=3, subunits=2, act="RELU",
                                   norm=_norm(8 * c))
        self.heatmap_head = nn.Sequential(_conv(8 * c, 4 * c), nn.Conv3d(4 * c, 1, 1))
        self.size_head = nn.Sequential(_conv(8 * c, 4 * c), nn.Conv3d(4 * c, 3, 1))
        self.offset_head = nn.Sequential(_conv(8 * c, 4 * c), nn.Conv3d(4 * c, 3, 1))
        with torch.no_grad():
            self.heatmap_head[-1].bias.fill_(-math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.fusion(self.encoder(self.init_conv(x)))
        log_size = self.size_head(f)  # the clip passes gradients straight through: no output stops learning
        log_size = log_size + (log_size.clamp(-LOG_SIZE_LIMIT, LOG_SIZE_LIMIT) - log_size).detach()
        raw = self.offset_head(f)
        offset = raw + 0.5 if self._box else torch.sigmoid(raw)
        return self.heatmap_head(f), log_size.exp(), offset

    @property
    def regress(self) -> str:
        """``"box"`` or ``"centre"``: where size and offset are trained (see the module docstring)."""
        return "box" if self._box else "centre"


def _pad_to(x: torch.Tensor, multiple: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the last three axes at their end to a multiple of ``multiple`` (per axis); returns the original
    shape."""
    shape = tuple(x.shape[-3:])
    pads = [(-s) % int(m) for s, m in zip(shape, multiple)]
    if any(pads):
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
    return x, shape


class DetSeg3D(nn.Module):
    """Two-stage detect-then-segment model; see the module docstring.

    Args:
        in_channels: image channels (the detector and the RoI U-Net both read all of them).
        base_channels: detector width c (levels c, 2c, 4c, 8c).
        seg_channels: RoI U-Net channels (one stride-2 step between consecutive entries).
        roi_size: size every RoI crop is resampled to (voxels).
        max_rois: RoIs kept per image (after NMS) at inference, and cap of positive and of negative RoIs
            per image in training.
        roi_batch_size: RoIs per segmenter mini-batch.
        train_threshold: heatmap probability above which a peak counts as a detector proposal in training:
            one that hits a lesion is a positive RoI; hard negatives come from those first, then from the
            highest remaining peaks (so, with peaks sorted by score, the negatives are the highest
            non-overlapping peaks either way).
        infer_threshold: heatmap probability a peak must exceed to become a RoI at inference.
        nms_iou: 3D NMS drops a box whose IoU with a higher-scoring kept box is above this.
        min_box, max_box: crop box sizes (what the segmenter sees) are clipped to ``[min_box, max_box]``
            voxels per axis; detection boxes to ``[1, max_box]`` (:data:`models.detection.roi.MIN_DETECTION_BOX`).
        min_lesion_size: smallest 26-connected component (voxels) counted as a lesion.
        neg_ratio: hard-negative RoIs per positive RoI in training (``ceil(neg_ratio * max(n_pos, 1))``
            per image, so a lesion-free patch gets ``ceil(neg_ratio)``).
        roi_jitter: jitter of the training copies of the ground-truth boxes (fraction of the box size).
        seg_lambda: weight of the RoI segmentation loss.
        seg_dropout: dropout of the RoI U-Net.
        dice_smooth: smoothing of the per-RoI Dice loss.
        stride: the detector's grid in voxels per axis (one int or three of 1, 2, 4, 8; see :func:`level_strides`);
            ``None``: planned from ``spacing`` (:func:`grid_for_spacing`).
        spacing: voxel spacing in mm per axis (the sweep passes the dataset's median spacing); ``None`` and no
            ``stride``: the seed's 8 on every axis.
        regress: ``"box"`` (size and offset trained at every cell of the lesion's box, Gaussian-weighted) or
            ``"centre"`` (the seed's centre cell only); see the module docstring.
    """

    def __init__(self, *, in_channels: int = 1, base_channels: int = 32,
                 seg_channels: Sequence[int] = (32, 64, 128, 256), roi_size: Sequence[int] = (32, 32, 32),
                 max_rois: int = 64, roi_batch_size: int = 8, train_threshold: float = 0.3,
                 infer_threshold: float = 0.1, nms_iou: float = 0.3, min_box: float = 8.0, max_box: float = 64.0,
                 min_lesion_size: int = 1, neg_ratio: float = 1.0, roi_jitter: float = 0.15,
                 seg_lambda: float = 1.0, seg_dropout: float = 0.1, dice_smooth: float = 1.0,
                 stride: int | Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                 regress: str = "box") -> None:
        super().__init__()
        grid = grid_for_spacing(spacing) if stride is None else stride
        self.stride = tuple(int(s) for s in R.axis_strides(grid))
        seg_channels = tuple(int(c) for c in seg_channels)
        roi_size = tuple(int(r) for r in roi_size)
        if len(roi_size) != 3 or min(roi_size) < 1:
            raise ValueError(f"roi_size must be three positive sizes, got {roi_size}")
        if len(seg_channels) < 2:
            raise ValueError(f"seg_channels needs at least two levels, got {seg_channels}")
        if any(r % 2 ** (len(seg_channels) - 1) for r in roi_size):
            raise ValueError(f"roi_size {roi_size} must be divisible by 2**(len(seg_channels) - 1) = "
                             f"{2 ** (len(seg_channels) - 1)}")
        for name, v in dict(max_rois=max_rois, roi_batch_size=roi_batch_size, min_lesion_size=min_lesion_size).items():
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if neg_ratio < 0:
            raise ValueError(f"neg_ratio must be >= 0, got {neg_ratio}")
        if not 0 < min_box <= max_box:
            raise ValueError(f"need 0 < min_box <= max_box, got min_box={min_box}, max_box={max_box}")
        self.in_channels = int(in_channels)
        self.roi_size = roi_size
        self.max_rois, self.roi_batch_size = int(max_rois), int(roi_batch_size)
        self.train_threshold, self.infer_threshold = float(train_threshold), float(infer_threshold)
        self.nms_iou = float(nms_iou)
        self.min_box, self.max_box = float(min_box), float(max_box)
        self.min_lesion_size, self.neg_ratio = int(min_lesion_size), float(neg_ratio)
        self.roi_jitter = float(roi_jitter)
        self.seg_lambda, self.dice_smooth = float(seg_lambda), float(dice_smooth)
        self.detector = CenterNetDetector3D(in_channels, base_channels, self.stride, regress)
        self.segmenter = UNet(spatial_dims=3, in_channels=in_channels, out_channels=1, channels=seg_channels,
                              strides=(2,) * (len(seg_channels) - 1), num_res_units=2, norm="INSTANCE",
                              dropout=seg_dropout)
        self.det_loss = CenterNetDetectionLoss(1.0, 1.0, 1.0)

    # ------------------------------------------------------------------ helpers
    def _segment(self, crops: torch.Tensor) -> torch.Tensor:
        """Segmenter logits of RoI crops (N, C, *roi_size), in mini-batches of ``roi_batch_size``."""
        if crops.shape[0] == 0:
            return crops.new_zeros((0, 1, *self.roi_size))
        return torch.cat([self.segmenter(c) for c in crops.split(self.roi_batch_size)], dim=0)

    def _rois(self, heat_logits: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, *, threshold: float | None,
              fallback: bool, straight_through: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Detection boxes (N, 6) and scores (N,) of one image's maps (:func:`models.detection.roi.extract_rois`)."""
        return R.extract_rois(torch.sigmoid(heat_logits[0]), size, offset, threshold=threshold, nms_iou=self.nms_iou,
                              max_rois=self.max_rois, stride=self.stride, max_size=self.max_box, fallback=fallback,
                              straight_through=straight_through)

    def crop_boxes(self, boxes: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """Crop boxes of detection (or lesion) boxes: same centres, sizes clipped to ``[min_box, max_box]``."""
        return R.crop_boxes(boxes, self.min_box, self.max_box, straight_through)

    def _detect_segment(self, x: torch.Tensor, *, fallback: bool, differentiable: bool
                        ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Full pass: probabilities (B, 1, D, H, W), per-image detection boxes (clipped to the image; those left
        without volume dropped) and scores, and each image's highest heatmap probability (B,)."""
        xp, shape = _pad_to(x, self.stride)
        heat, size, offset = self.detector(xp)
        boxes, scores, cropped, crops = [], [], [], []
        for b in range(x.shape[0]):
            bx, sc = self._rois(heat[b], size[b], offset[b], threshold=self.infer_threshold, fallback=fallback,
                                straight_through=differentiable)
            inside = R.in_image(bx, shape)  # a peak of the zero padding can decode to a box outside the scan
            bx, sc = R.clip_boxes(bx, shape)[inside], sc[inside]
            boxes.append(bx)
            scores.append(sc)
            cropped.append(self.crop_boxes(bx, straight_through=differentiable))
            crops.append(R.crop_and_resize(x[b], cropped[b], self.roi_size))
        probs = torch.sigmoid(self._segment(torch.cat(crops, dim=0)))
        out, start = [], 0
        for b in range(x.shape[0]):
            n = boxes[b].shape[0]
            p = probs[start:start + n]
            start += n
            if differentiable and n:  # straight-through: value x1, gradient reaches the heatmap head
                p = p * (scores[b] / scores[b].detach()).view(-1, 1, 1, 1, 1)
            out.append(R.paste_rois(p, cropped[b], shape)[0])
        peaks = torch.sigmoid(heat.detach().flatten(1).amax(dim=1))
        return torch.stack(out)[:, None], boxes, scores, peaks

    # ------------------------------------------------------------------ API
    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> Any:
        """With ``label`` (B, *patch): :meth:`training_losses` (so a DistributedDataParallel wrapper sees the
        training pass). Without: the full detect-then-segment pass, foreground probability (B, 1, D, H, W).

        Detector on the input (zero-padded to a multiple of 8 at the end of each axis), RoIs at
        ``infer_threshold`` (local maxima, NMS, top ``max_rois``), RoI U-Net, paste-back averaging overlaps.
        When an image's heatmap has no peak above the threshold, its ``max_rois`` highest cells are used
        instead, so both stages always run: efficiency figures (FLOPs, memory, latency) include the
        segmenter on up to ``max_rois`` RoIs per image. Gradients reach every parameter: through the
        RoI maps, the box geometry (continuous crop and paste coordinates; the box-size clip passes
        gradients straight through) and a straight-through factor ``score / score.detach()`` (value 1)
        on each pasted RoI, so the output values are exactly those of :meth:`predict`'s maps.
        """
        if label is not None:
            return self.training_losses(x, label)
        return self._detect_segment(x, fallback=True, differentiable=True)[0]

    def training_losses(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one training batch: image (B, C, *patch), label (B, *patch) integer 0/1.

        Returns ``{"heatmap", "size", "offset", "seg"}`` (``seg`` already times ``seg_lambda``); the trainer
        sums them. Training RoIs per image (crop boxes): positives, at most ``max_rois``: each lesion's box,
        the detector's peaks above ``train_threshold`` whose detection box has IoU >= 0.1 with a lesion's
        box (so the segmenter learns the crops it gets at inference, not only centred ones), and a jittered
        copy of each lesion's box; plus ``ceil(neg_ratio * max(n_pos, 1))`` hard negatives (at most
        ``max_rois``): the detector's highest local-maximum peaks whose crop box has IoU 0 with every
        foreground component's box, those above ``train_threshold`` first. Targets: the label crop
        resampled to ``roi_size`` and thresholded at 0.5; all zero for negatives.
        """
        if label.ndim == image.ndim and label.shape[1] == 1:
            label = label[:, 0]
        if label.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(f"label must be (B, *patch) matching image {tuple(image.shape)}, got {tuple(label.shape)}")
        xp, _ = _pad_to(image, self.stride)
        lp, _ = _pad_to(label, self.stride)
        heat, size, offset = self.detector(xp)
        fshape = heat.shape[2:]
        lab_np = (lp.detach().cpu().numpy() > 0)
        tgts = [R.make_targets(lab_np[b], fshape, stride=self.stride, min_lesion_size=self.min_lesion_size,
                               regress=self.detector.regress)
                for b in range(image.shape[0])]
        dev, dt = heat.device, heat.dtype
        stacked = {k: torch.from_numpy(np.stack([t[k] for t in tgts])).to(dev, dt)
                   for k in ("heatmap", "size", "offset", "weight")}
        losses = self.det_loss(heat, size, offset, stacked)

        crops, targets = [], []
        for b in range(image.shape[0]):
            pos, neg = self.training_rois(heat[b], size[b], offset[b], tgts[b]["boxes"], tgts[b]["all_boxes"])
            boxes = torch.cat([pos, neg], dim=0)
            crops.append(R.crop_and_resize(xp[b], boxes, self.roi_size))
            tpos = R.crop_and_resize(lp[b][None].to(dt), pos, self.roi_size) >= 0.5
            targets.append(torch.cat([tpos, tpos.new_zeros((neg.shape[0], 1, *self.roi_size))], dim=0))
        crops_t = torch.cat(crops, dim=0)
        if crops_t.shape[0] == 0:  # no RoI at all (neg_ratio 0, no lesion): keep the segmenter in the graph
            seg = sum(p.sum() for p in self.segmenter.parameters()) * 0.0
        else:
            seg = roi_dice_bce_loss(self._segment(crops_t), torch.cat(targets, dim=0), self.dice_smooth)
        losses["seg"] = self.seg_lambda * seg
        return losses

    @torch.no_grad()
    def training_rois(self, heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, lesion_boxes: np.ndarray,
                      component_boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Training RoIs of one image from its detector maps (heat logits (1, d, h, w), size, offset (3, d, h, w))
        and its lesion / component boxes: ``(positives (P, 6), hard negatives (Q, 6))`` crop boxes, see
        :meth:`training_losses`."""
        gt = torch.as_tensor(lesion_boxes, dtype=torch.float32, device=heat.device).reshape(-1, 6)
        comps = torch.as_tensor(component_boxes, dtype=torch.float32, device=heat.device).reshape(-1, 6)
        cand, sc = self._rois(heat.detach(), size.detach(), offset.detach(), threshold=None, fallback=False)
        hits = R.hits_any(cand, gt, PROPOSAL_HIT_IOU) & (sc > self.train_threshold)
        pos = self.positive_boxes(gt, cand[hits])
        crops = self.crop_boxes(cand)
        n_neg = min(self.max_rois, math.ceil(self.neg_ratio * max(pos.shape[0], 1)))
        neg = crops[R.select_hard_negatives(crops, sc, comps, n_neg, self.train_threshold)]
        return pos, neg.to(pos)

    def positive_boxes(self, gt: torch.Tensor, proposals: torch.Tensor | None = None) -> torch.Tensor:
        """Training positives (crop boxes): each lesion box (N, 6), then the detector's ``proposals`` that hit a
        lesion (as the segmenter will see them at inference), then a jittered copy of each lesion box; at most
        ``max_rois``, in that order."""
        if gt.shape[0] == 0:
            return gt.new_zeros((0, 6))
        hits = gt.new_zeros((0, 6)) if proposals is None else proposals.to(gt)
        boxes = torch.cat([gt, hits, R.jitter_boxes(gt, self.roi_jitter)], dim=0)
        return self.crop_boxes(boxes)[: self.max_rois]

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> Detections:
        """Whole-scan inference of one image (C, D, H, W), in eval mode without gradients.

        Returns:
            :class:`Detections`: the pasted foreground probability (D, H, W) float32 (0 outside every crop
            box; all 0 when no peak exceeds ``infer_threshold``, there is no fallback here), the detection
            boxes (N, 6) clipped to the image and their heatmap peak values (N,), sorted descending, and the
            scan's highest heatmap probability (a float, proposals or not).
        """
        was_training = self.training
        self.eval()
        try:
            prob, boxes, scores, peaks = self._detect_segment(image[None], fallback=False, differentiable=False)
        finally:
            self.train(was_training)
        return Detections(prob[0, 0].float().cpu().numpy(), boxes[0].float().cpu().numpy().astype(np.float32),
                          scores[0].float().cpu().numpy().astype(np.float32), float(peaks[0]))


_DEFAULT_PATCH = (96, 96, 32)
# 16 wide at full resolution (half the default build), trained at lr 1e-3: 4 wide hit 12 of 40 unseen lesions, 8 wide 21
# (as with the nnU-Net baselines), and with 8 wide the rare thin lesions (subdural crescents) stayed unfit even on
# the training scans; 16 wide with box regression at lr 1e-3 gives AP@0.1 0.68 / mAP 0.46 / Dice 0.52 on those 40
# lesions after 20 epochs where 8 wide at the recipe's lr gave 0.46 / 0.17 / 0.26; the 16-wide RoI U-Net learns its
# masks at 1e-3 only (Dice 0.10 at 1e-4) (benchmarks/RESULTS.md, "DetSeg3D on the CT phantoms").
TINY = dict(base_channels=16, seg_channels=(16, 32, 64, 128), roi_size=(16, 16, 16), max_rois=8)
TINY_TRAIN = dict(lr=1e-3)
# sweep flags -> builder kwargs: the RoI settings when set, and the lesion size rule of the sweep always
FLAG_KWARGS = dict(max_rois="max_rois", roi_batch_size="roi_batch_size", roi_size="roi_size", seg_lambda="seg_lambda",
                   neg_ratio="neg_ratio", min_lesion_size="min_lesion_size")


@register_model(family="detseg3d", task="detect_segment", spatial_dims=3, divisibility=STRIDE,
                default_patch_size=_DEFAULT_PATCH, paper=PAPER, num_params=13_268_657, tiny_kwargs=TINY,
                test_patch_size=(32, 32, 16), train_defaults=dict(optimizer="adamw", lr=1e-4, scheduler="cosine"),
                tiny_train_defaults=TINY_TRAIN,
                flag_kwargs=FLAG_KWARGS, spacing_kwarg="spacing")
def detseg3d(*, in_channels: int = 1, out_channels: int = 1, **kwargs: Any) -> nn.Module:
    """DetSeg3D; ``out_channels`` must be 1 (one foreground probability)."""
    if out_channels != 1:
        raise ValueError(f"detseg3d: out_channels must be 1 (a single foreground probability), "
                         f"got out_channels={out_channels}")
    return DetSeg3D(in_channels=in_channels, **kwargs)
