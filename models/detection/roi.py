"""RoI machinery of DetSeg3D: targets from a label mask, peak extraction + 3D NMS, crop/resize, paste-back.

Conventions (shared by every function here):

- Boxes are ``[x1, y1, z1, x2, y2, z2]`` over array axes 0, 1, 2 (D, H, W), minimum inclusive, maximum
  exclusive, in continuous voxel coordinates where voxel ``i`` spans ``[i, i + 1)`` (its centre is
  ``i + 0.5``); MONAI's ``StandardMode``. A lesion occupying voxels 4..11 on an axis has ``x1 = 4, x2 = 12``.
- Feature cell ``k`` at stride ``s`` (per axis: one int, or three for an anisotropic grid) spans voxels
  ``[s k, s k + s)``. A box centre ``c`` (voxels) lies in
  cell ``floor(c / s)`` with offset ``c / s - floor(c / s)`` in ``[0, 1)``; sizes are in cells (voxels / s).
  :func:`make_targets` then :func:`decode_boxes` at the centre cell (with ``regress="box"`` at any cell of the
  lesion's box that the lesion claims) gives the lesion's box back exactly.
- Two boxes per RoI: the *detection box* (the decoded centre and size, at least ``MIN_DETECTION_BOX`` voxels
  per axis: what is reported and scored against the lesions' boxes) and the *crop box*
  (:func:`crop_boxes`: the same centre, sizes clipped to the segmenter's ``[min_box, max_box]``, so a lesion
  one slice thick is still cropped with context; what is cropped and pasted back).
- Crops sample the image trilinearly (``grid_sample``, ``align_corners=False``) at the centres of a
  ``roi_size`` grid spanning the box, reading zeros outside the image: a crop + trilinear resize that
  reads the real neighbours at the box edge. Paste-back samples the RoI map at the centres of the
  image voxels whose centre lies inside the box, so a box of exactly ``roi_size`` voxels round-trips
  exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.box_utils import box_iou, non_max_suppression
from scipy import ndimage

STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
MIN_DETECTION_BOX = 1.0  # voxels per axis: a lesion is at least one voxel
REGRESS_MODES = ("box", "centre")  # where size and offset targets are written (see make_targets)


# --------------------------------------------------------------------------- targets
def lesion_boxes(label: np.ndarray, min_lesion_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the 26-connected foreground components of ``label`` (D, H, W).

    Returns:
        ``(lesions, components)``: float32 (N, 6) boxes of the components with at least
        ``min_lesion_size`` voxels, and (M, 6) boxes of every component (M >= N), both in label order.
    """
    fg = np.asarray(label) > 0
    lab, n = ndimage.label(fg, structure=STRUCTURE_26)
    if n == 0:
        empty = np.zeros((0, 6), dtype=np.float32)
        return empty, empty.copy()
    sizes = ndimage.sum_labels(fg, lab, index=np.arange(1, n + 1))
    slices = ndimage.find_objects(lab)
    boxes = np.array([[s.start for s in sl] + [s.stop for s in sl] for sl in slices], dtype=np.float32)
    keep = sizes >= min_lesion_size
    return boxes[keep], boxes


def axis_strides(stride: int | Sequence[int]) -> np.ndarray:
    """Per-axis strides (3,) float64 of ``stride`` (one int for all three axes, or three ints)."""
    out = np.broadcast_to(np.asarray(stride, dtype=np.float64), (3,)).copy()
    if (out < 1).any():
        raise ValueError(f"strides must be >= 1, got {stride}")
    return out


def gaussian_sigma(box_size_voxels: Sequence[float], stride: int | Sequence[int] = 8) -> float:
    """``max(1, ceil(min(size / stride) / 4))`` (cells; the size in cells along each axis, so an isotropic
    ``stride`` gives the seed's ``max(1, ceil(min(size) / stride / 4))``)."""
    cells = np.asarray(box_size_voxels, dtype=np.float64) / axis_strides(stride)
    return float(max(1, math.ceil(float(cells.min()) / 4)))


def make_targets(label: np.ndarray, feature_shape: Sequence[int], *, stride: int | Sequence[int] = 8,
                 min_lesion_size: int = 1, regress: str = "centre") -> dict[str, np.ndarray]:
    """Detector targets of one label mask (D, H, W) on a feature grid ``feature_shape`` (d, h, w).

    Heatmap: a Gaussian per lesion centred at its integer centre cell, sigma from :func:`gaussian_sigma`,
    peak 1, lesions combined by element-wise max. Size (box extent / stride, cells) and offset
    (centre / stride - cell, cells) are written at the cells of ``weight`` > 0: with ``regress="centre"``
    (the seed's CenterNet) the centre cell only (weight 1, offset in [0, 1); a later lesion overwrites an
    earlier one sharing its cell); with ``regress="box"`` also every cell whose voxel span meets the lesion's
    box, weighted by the lesion's heatmap Gaussian there (TTFNet's Gaussian-weighted box regression), so a
    heatmap peak a cell or two off the centre still decodes the lesion's box; a cell claimed by two lesions
    takes the one of higher weight. ``mask`` marks the centre cells.

    Returns:
        dict with ``heatmap`` (1, d, h, w), ``size`` (3, d, h, w), ``offset`` (3, d, h, w), ``mask`` and
        ``weight`` (d, h, w) float32 arrays, ``boxes`` (N, 6) lesion boxes and ``all_boxes`` (M, 6) boxes of
        every component.
    """
    if regress not in REGRESS_MODES:
        raise ValueError(f"regress must be one of {REGRESS_MODES}, got {regress!r}")
    fshape = tuple(int(s) for s in feature_shape)
    boxes, all_boxes = lesion_boxes(label, min_lesion_size)
    heat = np.zeros((1, *fshape), dtype=np.float32)
    size = np.zeros((3, *fshape), dtype=np.float32)
    offset = np.zeros((3, *fshape), dtype=np.float32)
    mask = np.zeros(fshape, dtype=np.float32)
    weight = np.zeros(fshape, dtype=np.float32)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in fshape], indexing="ij")
    strides = axis_strides(stride)
    for box in boxes:
        extent = box[3:] - box[:3]
        centre = (box[:3] + box[3:]) / 2.0 / strides
        cell = np.minimum(np.floor(centre).astype(np.int64), np.array(fshape) - 1)
        sigma = gaussian_sigma(extent, stride)
        d2 = sum((g - c) ** 2 for g, c in zip(grids, cell))
        gauss = np.exp(-d2 / (2.0 * sigma**2)).astype(np.float32)
        heat[0] = np.maximum(heat[0], gauss)
        region = np.zeros(fshape, dtype=bool)
        if regress == "box":
            lo = np.floor(box[:3] / strides).astype(np.int64)
            hi = np.minimum(np.ceil(box[3:] / strides).astype(np.int64), fshape)
            region[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        region[tuple(cell.tolist())] = True
        claim = region & (gauss >= weight)
        weight[claim] = gauss[claim]
        size[:, claim] = (extent / strides)[:, None]
        offset[:, claim] = (centre[:, None] - np.stack([g[claim] for g in grids]))
        mask[tuple(cell.tolist())] = 1.0
    return dict(heatmap=heat, size=size, offset=offset, mask=mask, weight=weight, boxes=boxes, all_boxes=all_boxes)


# --------------------------------------------------------------------------- boxes
def centre_size_to_box(centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(N, 3) centres and sizes (voxels) -> (N, 6) boxes."""
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def clamp_size(size: torch.Tensor, lo: float, hi: float, straight_through: bool = False) -> torch.Tensor:
    """Clip sizes to ``[lo, hi]``; with ``straight_through`` the gradient passes the clip unchanged."""
    clipped = size.clamp(lo, hi)
    return size + (clipped - size).detach() if straight_through else clipped


def decode_boxes(cells: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, *, stride: int | Sequence[int] = 8,
                 min_size: float = MIN_DETECTION_BOX, max_size: float = 64.0,
                 straight_through: bool = False) -> torch.Tensor:
    """Detection boxes (N, 6) from integer cells (N, 3), predicted sizes (N, 3, cells) and offsets (N, 3).

    Centre = (cell + offset) * stride; size = size * stride clipped to ``[min_size, max_size]`` voxels.
    """
    strides = torch.as_tensor(axis_strides(stride), dtype=offset.dtype, device=offset.device)
    centre = (cells.to(offset.dtype) + offset) * strides
    return centre_size_to_box(centre, clamp_size(size * strides, min_size, max_size, straight_through))


def crop_boxes(boxes: torch.Tensor, min_size: float, max_size: float, straight_through: bool = False) -> torch.Tensor:
    """Crop boxes of (N, 6) boxes: the same centres, sizes clipped to ``[min_size, max_size]`` voxels per axis."""
    centre, size = (boxes[:, :3] + boxes[:, 3:]) / 2, boxes[:, 3:] - boxes[:, :3]
    return centre_size_to_box(centre, clamp_size(size, min_size, max_size, straight_through))


def clip_boxes(boxes: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Clip (N, 6) boxes to an image of spatial ``shape`` (D, H, W)."""
    hi = torch.tensor(list(shape) * 2, dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), hi)


def in_image(boxes: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(N,) bool: box ``i`` keeps a positive volume once clipped to an image of spatial ``shape`` (D, H, W)."""
    clipped = clip_boxes(boxes.detach(), shape)
    return (clipped[:, 3:] > clipped[:, :3]).all(dim=1)


def hits_any(boxes: torch.Tensor, others: torch.Tensor, iou: float) -> torch.Tensor:
    """(N,) bool: box ``i`` has IoU >= ``iou`` with some box of ``others`` (MONAI's 3D ``box_iou``)."""
    if boxes.shape[0] == 0 or others.shape[0] == 0:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    return (box_iou(boxes.detach().float(), others.to(boxes).float()) >= iou).any(dim=1)


def boxes_overlap_any(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """(N,) bool: box ``i`` has a positive-volume intersection (IoU > 0) with some box of ``others``."""
    if boxes.shape[0] == 0 or others.shape[0] == 0:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    others = others.to(boxes)
    lo = torch.maximum(boxes[:, None, :3], others[None, :, :3])
    hi = torch.minimum(boxes[:, None, 3:], others[None, :, 3:])
    return ((hi - lo) > 0).all(dim=2).any(dim=1)


def jitter_boxes(boxes: torch.Tensor, jitter: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random copies of (N, 6) boxes: per axis a centre shift uniform in ``+-jitter * size`` and a scale
    uniform in ``[1 - jitter, 1 + jitter]``; drawn on the CPU from ``generator`` (default: torch's global
    generator, so ``torch.manual_seed`` fixes them)."""
    if boxes.shape[0] == 0 or jitter <= 0:
        return boxes.clone()
    b = boxes.detach().cpu().float()
    size = b[:, 3:] - b[:, :3]
    centre = (b[:, :3] + b[:, 3:]) / 2
    u = torch.rand((b.shape[0], 6), generator=generator) * 2 - 1
    centre = centre + u[:, :3] * jitter * size
    size = size * (1 + u[:, 3:] * jitter)
    return centre_size_to_box(centre, size).to(boxes)


# --------------------------------------------------------------------------- RoI extraction
def extract_rois(heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, *, threshold: float | None,
                 nms_iou: float = 0.3, max_rois: int = 64, stride: int | Sequence[int] = 8,
                 min_size: float = MIN_DETECTION_BOX, max_size: float = 64.0, fallback: bool = False,
                 straight_through: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """RoIs of one image from its detector maps.

    Candidates are the local maxima of the heatmap probability ``heat`` (d, h, w) over a 3^3 neighbourhood
    (ties all kept) with probability above ``threshold`` (``None``: every local maximum); their detection boxes
    come from :func:`decode_boxes`; MONAI's 3D NMS removes a box whose IoU with a higher-scoring kept box
    exceeds ``nms_iou``; the top ``max_rois`` survivors by score are returned, scores descending.
    With ``fallback`` and no candidate, the ``max_rois`` highest cells are returned instead (no NMS).

    Args:
        heat: (d, h, w) probabilities (after sigmoid).
        size: (3, d, h, w) sizes in cells. offset: (3, d, h, w) offsets in cells.

    Returns:
        ``(boxes (N, 6), scores (N,))``; they carry gradients of ``size``/``offset``/``heat`` (the boxes only
        through the continuous centre and size, selection itself is discrete).
    """
    d, h, w = heat.shape
    flat = heat.reshape(-1)
    with torch.no_grad():
        hd = heat.detach()[None, None]
        is_peak = (F.max_pool3d(hd, 3, stride=1, padding=1) == hd)[0, 0].reshape(-1)
        if threshold is not None:
            is_peak &= flat.detach() > threshold
        idx = torch.nonzero(is_peak).flatten()
        use_nms = True
        if idx.numel() == 0 and fallback:
            idx = torch.topk(flat.detach(), min(max_rois, flat.numel())).indices
            use_nms = False
        if idx.numel() == 0:
            return heat.new_zeros((0, 6)), heat.new_zeros((0,))
        order = torch.argsort(flat.detach()[idx], descending=True, stable=True)
        idx = idx[order]
    cells = torch.stack([idx // (h * w), (idx // w) % h, idx % w], dim=1)
    sz = size.reshape(3, -1)[:, idx].t()
    off = offset.reshape(3, -1)[:, idx].t()
    boxes = decode_boxes(cells, sz, off, stride=stride, min_size=min_size, max_size=max_size,
                         straight_through=straight_through)
    scores = flat[idx]
    if use_nms:
        keep = non_max_suppression(boxes.detach().float(), scores.detach().float(), nms_iou, max_proposals=max_rois)
        keep = keep.to(device=boxes.device, dtype=torch.long)
    else:
        keep = torch.arange(min(max_rois, idx.numel()), device=boxes.device)
    keep = keep[:max_rois]
    return boxes[keep], scores[keep]


def select_hard_negatives(boxes: torch.Tensor, scores: torch.Tensor, gt_boxes: torch.Tensor, n: int,
                          threshold: float | None = None) -> torch.Tensor:
    """Indices of up to ``n`` hard negatives among candidate RoIs (``boxes``, ``scores`` descending).

    A candidate qualifies when its box has IoU 0 (no positive-volume intersection) with every box in
    ``gt_boxes``. Qualifying candidates above ``threshold`` come first, then the remaining qualifying ones,
    each group by descending score (as the candidates are sorted, this is the ``n`` highest qualifying).
    """
    if n <= 0 or boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    ok = ~boxes_overlap_any(boxes.detach(), gt_boxes)
    idx = torch.nonzero(ok).flatten()
    if threshold is not None and idx.numel():
        above = scores.detach()[idx] > threshold
        idx = torch.cat([idx[above], idx[~above]])
    return idx[:n]


# --------------------------------------------------------------------------- crop / paste
def _sample_grid(boxes: torch.Tensor, out_size: Sequence[int], image_shape: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` grid (N, *out_size, 3) sampling the centres of an ``out_size`` grid spanning each box."""
    axes = []
    for a in range(3):
        n = int(out_size[a])
        t = (torch.arange(n, dtype=boxes.dtype, device=boxes.device) + 0.5) / n  # (n,)
        pos = boxes[:, a, None] + t[None] * (boxes[:, 3 + a, None] - boxes[:, a, None])  # (N, n) voxels
        axes.append(2.0 * pos / float(image_shape[a]) - 1.0)
    gd = axes[0][:, :, None, None].expand(-1, -1, out_size[1], out_size[2])
    gh = axes[1][:, None, :, None].expand(-1, out_size[0], -1, out_size[2])
    gw = axes[2][:, None, None, :].expand(-1, out_size[0], out_size[1], -1)
    return torch.stack([gw, gh, gd], dim=-1)  # grid_sample wants (x=W, y=H, z=D)


def crop_and_resize(image: torch.Tensor, boxes: torch.Tensor, roi_size: Sequence[int]) -> torch.Tensor:
    """RoI crops (N, C, *roi_size) of ``image`` (C, D, H, W): trilinear, zeros outside the image.

    Differentiable with respect to the image and the box coordinates.
    """
    n = boxes.shape[0]
    roi_size = tuple(int(r) for r in roi_size)
    if n == 0:
        return image.new_zeros((0, image.shape[0], *roi_size))
    grid = _sample_grid(boxes.float(), roi_size, image.shape[1:]).to(image.dtype)
    src = image[None].expand(n, *image.shape)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def paste_region(box: Sequence[float], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """Voxels whose centre ``i + 0.5`` lies in ``[x1, x2)``, clipped to ``shape``: ``i`` in
    ``[ceil(x1 - 0.5), ceil(x2 - 0.5))``."""
    out = []
    for a in range(3):
        lo = max(0, math.ceil(float(box[a]) - 0.5))
        hi = min(int(shape[a]), math.ceil(float(box[3 + a]) - 0.5))
        out.append(slice(lo, max(lo, hi)))
    return tuple(out)  # type: ignore[return-value]


def paste_rois(roi_maps: torch.Tensor, boxes: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste RoI maps (N, 1, *roi_size) back into a volume of spatial ``shape`` (D, H, W).

    Each map is resampled (trilinear) at the centres of the voxels of :func:`paste_region` and added;
    the sum is divided by the count of RoIs covering each voxel (overlaps are averaged); voxels outside
    every RoI get 0. Differentiable with respect to the maps and the box coordinates.

    Returns:
        ``(volume (D, H, W), count (D, H, W))``.
    """
    shape = tuple(int(s) for s in shape)
    total = roi_maps.new_zeros(shape)
    count = roi_maps.new_zeros(shape)
    for i in range(roi_maps.shape[0]):
        region = paste_region(boxes[i].detach().tolist(), shape)
        ext = [s.stop - s.start for s in region]
        if min(ext) <= 0:
            continue
        axes = []
        for a in range(3):
            centres = torch.arange(region[a].start, region[a].stop, dtype=roi_maps.dtype, device=roi_maps.device) + 0.5
            x1, x2 = boxes[i, a].to(roi_maps.dtype), boxes[i, 3 + a].to(roi_maps.dtype)
            axes.append(2.0 * (centres - x1) / (x2 - x1) - 1.0)
        gd = axes[0][:, None, None].expand(ext)
        gh = axes[1][None, :, None].expand(ext)
        gw = axes[2][None, None, :].expand(ext)
        grid = torch.stack([gw, gh, gd], dim=-1)[None]
        patch = F.grid_sample(roi_maps[i:i + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
        total[region] += patch[0, 0]
        count[region] += 1
    return total / count.clamp(min=1), count
