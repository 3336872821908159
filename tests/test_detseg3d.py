"""DetSeg3D (detect-then-segment): targets, RoI extraction, crop/paste, per-RoI loss, training RoIs, API."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from losses.detection import heatmap_focal_loss, masked_l1, per_roi_dice_bce, roi_dice_bce_loss
from models import create_model, model_info
from models.detection import roi as R
from models.detection.detseg3d import DetSeg3D

TINY = model_info("detseg3d").tiny_kwargs


def _tiny(**kw) -> DetSeg3D:
    torch.manual_seed(0)
    return create_model("detseg3d", in_channels=1, out_channels=1, **dict(TINY, **kw))


# ----------------------------------------------------------------------------- targets
def test_targets_of_one_cube_lesion() -> None:
    label = np.zeros((32, 32, 16), dtype=np.int64)
    label[8:16, 16:24, 0:8] = 1  # centre (12, 20, 4) voxels -> (1.5, 2.5, 0.5) cells
    t = R.make_targets(label, (4, 4, 2))
    np.testing.assert_array_equal(t["boxes"], [[8, 16, 0, 16, 24, 8]])
    assert t["boxes"].dtype == np.float32
    heat = t["heatmap"][0]
    assert np.unravel_index(heat.argmax(), heat.shape) == (1, 2, 0) and heat[1, 2, 0] == 1.0
    assert math.isclose(heat[0, 2, 0], math.exp(-0.5), rel_tol=1e-6)  # sigma = max(1, ceil(8/8/4)) = 1
    np.testing.assert_allclose(t["size"][:, 1, 2, 0], [1, 1, 1])
    np.testing.assert_allclose(t["offset"][:, 1, 2, 0], [0.5, 0.5, 0.5])
    assert t["mask"].sum() == 1 and t["mask"][1, 2, 0] == 1
    assert t["size"].sum() == 3 and t["offset"].sum() == 1.5  # only at the centre cell
    assert R.gaussian_sigma((40, 64, 64)) == 2.0


def test_box_regression_targets_cover_the_lesion_box_with_gaussian_weights() -> None:
    """TTFNet's rule: every cell the box meets regresses the lesion's box, weighted by its Gaussian; the seed's
    rule writes the centre cell only. A peak one cell off the centre decodes the lesion's box exactly."""
    label = np.zeros((32, 32, 16), dtype=np.int64)
    label[6:26, 9:13, 3:9] = 1  # box 20 x 4 x 6 voxels: cells [0, 4) x [1, 2) x [1, 5) at stride (8, 8, 2)
    box = R.make_targets(label, (4, 4, 8), stride=(8, 8, 2), regress="box")
    centre = R.make_targets(label, (4, 4, 8), stride=(8, 8, 2), regress="centre")
    claimed = np.argwhere(box["weight"] > 0)
    assert {tuple(c) for c in claimed} == {(i, 1, k) for i in range(4) for k in range(1, 5)}
    centre_cell = (2, 1, 3)  # centre (16, 11, 6) voxels -> (2.0, 1.375, 3.0) cells
    assert box["weight"][centre_cell] == 1.0 and box["mask"].sum() == 1 and box["mask"][centre_cell] == 1
    # weights are the heatmap's Gaussian (sigma max(1, ceil(0.5 / 4)) = 1 cell) at each claimed cell
    np.testing.assert_allclose(box["weight"][box["weight"] > 0], box["heatmap"][0][box["weight"] > 0])
    assert box["weight"][0, 1, 3] == pytest.approx(math.exp(-2.0))
    assert np.argwhere(centre["weight"] > 0).tolist() == [list(centre_cell)]
    np.testing.assert_array_equal(centre["heatmap"], box["heatmap"])
    for cell in ((2, 1, 3), (1, 1, 2), (3, 1, 4)):
        size = torch.from_numpy(box["size"][(slice(None), *cell)])[None]
        offset = torch.from_numpy(box["offset"][(slice(None), *cell)])[None]
        decoded = R.decode_boxes(torch.tensor([cell]), size, offset, stride=(8, 8, 2))
        np.testing.assert_allclose(decoded[0], box["boxes"][0], atol=1e-5)


def test_box_regression_cell_shared_by_two_lesions_goes_to_the_nearer_centre() -> None:
    label = np.zeros((32, 32, 16), dtype=np.int64)
    label[0:18, 0:3, 0:4] = 1  # box x [0, 18): centre 9 -> cell 1; z [0, 4): centre cell 1
    label[14:30, 5:8, 0:4] = 1  # a separate component (2 voxels apart in y); box x [14, 30): centre 22 -> cell 2
    t = R.make_targets(label, (4, 4, 8), stride=(8, 8, 2), regress="box")
    # cells (1, 0, 0) and (2, 0, 0) lie in both boxes; each goes to the lesion whose Gaussian is higher there
    assert t["size"][0, 1, 0, 0] == pytest.approx(18 / 8) and t["offset"][0, 1, 0, 0] == pytest.approx(9 / 8 - 1)
    assert t["size"][0, 2, 0, 0] == pytest.approx(16 / 8) and t["offset"][0, 2, 0, 0] == pytest.approx(22 / 8 - 2)
    assert t["weight"][1, 0, 0] == pytest.approx(math.exp(-0.5)) and t["mask"].sum() == 2
    with pytest.raises(ValueError, match="regress"):
        R.make_targets(label, (4, 4, 8), regress="anchors")


def test_components_are_26_connected_and_filtered_by_size() -> None:
    label = np.zeros((16, 16, 16), dtype=np.uint8)
    label[2, 2, 2] = label[3, 3, 3] = 1  # corner neighbours: one lesion under 26-connectivity
    label[10:12, 10:12, 10:12] = 1  # 8 voxels
    label[0, 15, 15] = 1  # a single voxel
    lesions, comps = R.lesion_boxes(label, min_lesion_size=2)
    assert len(comps) == 3 and len(lesions) == 2
    np.testing.assert_array_equal(lesions[0], [2, 2, 2, 4, 4, 4])
    np.testing.assert_array_equal(lesions[1], [10, 10, 10, 12, 12, 12])
    t = R.make_targets(label, (2, 2, 2), min_lesion_size=2)
    assert t["mask"].sum() == 2 and len(t["all_boxes"]) == 3
    assert R.make_targets(np.zeros((8, 8, 8)), (1, 1, 1))["heatmap"].max() == 0


# ----------------------------------------------------------------------------- RoI extraction
def _maps(shape=(6, 6, 6)):
    heat = torch.zeros(shape)
    size = torch.ones((3, *shape))
    offset = torch.full((3, *shape), 0.5)
    return heat, size, offset


def test_extract_rois_peaks_threshold_nms_and_decoding() -> None:
    heat, size, offset = _maps()
    heat[1, 1, 1] = heat[1, 1, 2] = 0.9  # a tie: both local maxima, their 24^3 boxes overlap (IoU 0.5)
    size[:, 1, 1, 1] = size[:, 1, 1, 2] = 3.0
    heat[4, 4, 4] = 0.5
    heat[1, 4, 4] = 0.05  # below the threshold
    size[:, 4, 4, 4] = torch.tensor([0.1, 2.0, 20.0])  # 0.8 / 16 / 160 voxels -> clipped to 1 / 16 / 64
    offset[:, 4, 4, 4] = torch.tensor([0.25, 0.5, 0.75])
    boxes, scores = R.extract_rois(heat, size, offset, threshold=0.1, nms_iou=0.3, max_rois=64)
    assert boxes.shape == (2, 6) and scores.tolist() == pytest.approx([0.9, 0.5])
    centre = (boxes[1, :3] + boxes[1, 3:]) / 2
    np.testing.assert_allclose(centre, (torch.tensor([4, 4, 4]) + torch.tensor([0.25, 0.5, 0.75])) * 8)
    np.testing.assert_allclose(boxes[1, 3:] - boxes[1, :3], [1, 16, 64])
    np.testing.assert_allclose(boxes[0], [0, 0, 0, 24, 24, 24])  # the first of the tie (cell 1,1,1)
    # without NMS (IoU threshold 1) the duplicate survives
    boxes2, _ = R.extract_rois(heat, size, offset, threshold=0.1, nms_iou=1.0, max_rois=64)
    assert boxes2.shape[0] == 3


def test_extract_rois_cap_and_fallback() -> None:
    heat, size, offset = _maps((8, 8, 8))
    for k, (i, j, l) in enumerate([(0, 0, 0), (0, 4, 0), (4, 0, 0), (4, 4, 0), (0, 0, 4), (7, 7, 7)]):
        heat[i, j, l] = 0.9 - 0.1 * k
    boxes, scores = R.extract_rois(heat, size, offset, threshold=0.1, max_rois=4)
    assert boxes.shape == (4, 6) and torch.all(scores[:-1] >= scores[1:])
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    empty = torch.zeros(2, 2, 2)
    assert R.extract_rois(empty, torch.ones(3, 2, 2, 2), torch.zeros(3, 2, 2, 2), threshold=0.1)[0].shape == (0, 6)
    fb, _ = R.extract_rois(empty, torch.ones(3, 2, 2, 2), torch.zeros(3, 2, 2, 2), threshold=0.1, max_rois=3,
                           fallback=True)
    assert fb.shape == (3, 6)


# ----------------------------------------------------------------------------- crop / paste
def test_crop_and_paste_round_trip_overlap_average_and_outside_zero() -> None:
    mask = torch.zeros(1, 32, 32, 32)
    mask[0, 10:14, 6:12, 20:26] = 1
    box = torch.tensor([[8.0, 4.0, 16.0, 24.0, 20.0, 32.0]])  # 16^3, the RoI size: exact round trip
    crop = R.crop_and_resize(mask, box, (16, 16, 16))
    assert crop.shape == (1, 1, 16, 16, 16)
    torch.testing.assert_close(crop[0, 0], mask[0, 8:24, 4:20, 16:32])
    pasted, count = R.paste_rois(crop, box, (32, 32, 32))
    torch.testing.assert_close(pasted, mask[0])
    assert count.sum() == 16**3
    # a box of 8^3 resampled to 16^3 and back lands at its box after thresholding
    small = torch.tensor([[10.0, 6.0, 20.0, 18.0, 14.0, 28.0]])
    back, _ = R.paste_rois(R.crop_and_resize(mask, small, (16, 16, 16)), small, (32, 32, 32))
    ref = torch.zeros(32, 32, 32)
    ref[10:18, 6:14, 20:28] = mask[0, 10:18, 6:14, 20:28]
    torch.testing.assert_close((back >= 0.5).float(), ref)
    # two overlapping RoIs average; outside every RoI 0
    boxes = torch.tensor([[0.0, 0, 0, 16, 16, 16], [8.0, 8, 8, 24, 24, 24]])
    maps = torch.stack([torch.ones(1, 16, 16, 16), torch.zeros(1, 16, 16, 16)])
    vol, count = R.paste_rois(maps, boxes, (32, 32, 32))
    assert vol[4, 4, 4] == 1 and vol[12, 12, 12] == 0.5 and vol[20, 20, 20] == 0 and count[12, 12, 12] == 2
    assert vol[24:].abs().sum() == 0 and count[24:].sum() == 0
    # a box leaving the image: the crop is zero-padded, the paste clipped
    out = torch.tensor([[-8.0, -8, -8, 8, 8, 8]])
    crop = R.crop_and_resize(torch.ones(1, 32, 32, 32), out, (16, 16, 16))
    assert crop[0, 0, :8, :8, :8].abs().sum() == 0 and torch.all(crop[0, 0, 8:, 8:, 8:] == 1)
    vol, count = R.paste_rois(crop, out, (32, 32, 32))
    assert count.sum() == 8**3 and torch.all(vol[:8, :8, :8] == 1)


# ----------------------------------------------------------------------------- losses
def test_seg_loss_is_per_roi_so_lesion_size_does_not_weigh() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, 16)
    target = torch.zeros(2, 1, 16, 16, 16)
    target[0].view(-1)[:10] = 1  # a 10-voxel lesion
    target[1].view(-1)[:1000] = 1  # a 1000-voxel lesion
    both = roi_dice_bce_loss(logits, target)
    a, b = roi_dice_bce_loss(logits[:1], target[:1]), roi_dice_bce_loss(logits[1:], target[1:])
    torch.testing.assert_close(both, (a + b) / 2)
    torch.testing.assert_close(per_roi_dice_bce(logits, target), torch.stack([a, b]))
    # pooling the voxels of both RoIs (one Dice over the batch) would weigh the big lesion more
    p = torch.sigmoid(logits)
    pooled_dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    per_dice = per_roi_dice_bce(logits, target) - torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, reduction="none").mean((1, 2, 3, 4))
    assert abs(float(pooled_dice - per_dice.mean())) > 1e-3
    # an empty target with an empty prediction costs ~0 (smoothed Dice, BCE near 0)
    assert float(roi_dice_bce_loss(torch.full((1, 1, 8, 8, 8), -20.0), torch.zeros(1, 1, 8, 8, 8))) < 1e-3
    assert float(roi_dice_bce_loss(torch.zeros(0, 1, 8, 8, 8), torch.zeros(0, 1, 8, 8, 8))) == 0


def test_detection_loss_terms() -> None:
    logits = torch.zeros(1, 1, 2, 2, 2, requires_grad=True)
    target = torch.zeros(1, 1, 2, 2, 2)
    target[0, 0, 0, 0, 0] = 1
    target[0, 0, 1, 0, 0] = 0.5
    # p = 0.5 everywhere: peak 0.25 log 2, the 0.5 cell 0.5^4 0.25 log 2, the six zeros 0.25 log 2 each; one peak
    expected = math.log(2) * 0.25 * (1 + 0.5**4 + 6)
    assert float(heatmap_focal_loss(logits, target).detach()) == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(float(heatmap_focal_loss(torch.full((1, 1, 2, 2, 2), 80.0), target)))
    pred = torch.zeros(1, 3, 2, 2, 2)
    tgt = torch.zeros(1, 3, 2, 2, 2)
    tgt[0, :, 1, 1, 1] = torch.tensor([3.0, 6.0, 9.0])
    tgt[0, :, 0, 0, 0] = 100.0  # not a centre cell: ignored
    mask = torch.zeros(1, 2, 2, 2)
    mask[0, 1, 1, 1] = 1
    assert float(masked_l1(pred, tgt, mask)) == pytest.approx(6.0)
    assert float(masked_l1(pred, tgt, torch.zeros(1, 2, 2, 2))) == 0.0
    weights = mask.clone()
    weights[0, 0, 0, 0] = 0.25  # Gaussian weights: (1 * 18 + 0.25 * 300) / (3 * 1.25)
    assert float(masked_l1(pred, tgt, weights)) == pytest.approx((18 + 0.25 * 300) / 3.75)


# ----------------------------------------------------------------------------- training RoIs
@pytest.mark.parametrize("neg_ratio,expected", [(1.0, 3), (0.5, 2), (2.0, 6)])
def test_hard_negatives_never_overlap_a_lesion_and_follow_neg_ratio(neg_ratio: float, expected: int) -> None:
    model = _tiny(neg_ratio=neg_ratio)
    label = np.zeros((64, 64, 64), dtype=np.uint8)
    label[20:30, 20:30, 20:30] = 1
    label[50, 50, 50] = 1  # below min_lesion_size: no positive, yet no negative may touch it
    model.min_lesion_size = 2
    t = R.make_targets(label, (8, 8, 8), min_lesion_size=2)
    heat_logits = torch.full((1, 8, 8, 8), -5.0)
    heat_logits[0, 3, 3, 3] = 5.0  # on the lesion: highest, must not be a negative
    heat_logits[0, 6, 6, 6] = 4.0  # on the tiny component
    heat_logits[0, 0, 0, 7] = 3.0
    heat_logits[0, 7, 0, 0] = 2.0
    heat_logits[0, 0, 7, 0] = 1.0
    heat_logits[0, 7, 7, 0] = 0.0
    size, offset = torch.ones(3, 8, 8, 8), torch.full((3, 8, 8, 8), 0.5)
    torch.manual_seed(1)
    pos, neg = model.training_rois(heat_logits, size, offset, t["boxes"], t["all_boxes"])
    assert pos.shape == (3, 6)  # the lesion plain, the proposal hitting it (IoU 512 / 1000), one jittered copy
    np.testing.assert_allclose(pos[0], [20, 20, 20, 30, 30, 30])
    np.testing.assert_allclose(pos[1], [24, 24, 24, 32, 32, 32])  # the peak at cell (3, 3, 3): 8^3 around 28
    assert neg.shape == (expected, 6)
    assert not R.boxes_overlap_any(neg, torch.from_numpy(t["all_boxes"])).any()
    np.testing.assert_allclose(neg[0], [0, 0, 56, 8, 8, 64])  # the highest peak off every component
    # the jittered copy is reproducible from the global seed
    torch.manual_seed(1)
    pos2, _ = model.training_rois(heat_logits, size, offset, t["boxes"], t["all_boxes"])
    torch.testing.assert_close(pos, pos2)
    # a patch without lesion still gets one negative
    _, neg0 = model.training_rois(heat_logits, size, offset, np.zeros((0, 6)), np.zeros((0, 6)))
    assert neg0.shape[0] == math.ceil(neg_ratio)


# ----------------------------------------------------------------------------- model API
def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    image = torch.randn(2, 1, 32, 32, 16)
    label = torch.zeros(2, 32, 32, 16, dtype=torch.long)
    label[0, 4:12, 10:20, 3:9] = 1
    label[1, 20:22, 20:22, 10:12] = 1
    image = image + 2 * label[:, None]
    return image, label


def test_tiny_train_step_every_parameter_learns() -> None:
    model = _tiny().train()
    image, label = _batch()
    losses = model.training_losses(image, label)
    assert set(losses) == {"heatmap", "size", "offset", "seg"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if float(p.grad.abs().sum()) == 0]
    assert not zero, zero
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # seg_lambda scales the seg term only
    torch.manual_seed(3)
    l1 = model.training_losses(image, label)
    model.seg_lambda = 2.0
    torch.manual_seed(3)
    l2 = model.training_losses(image, label)
    # same seed -> same jitter and dropout draws
    assert float(l2["seg"].detach()) == pytest.approx(2 * float(l1["seg"].detach()), rel=1e-4)


def test_predict_on_a_scan_not_a_multiple_of_8() -> None:
    model = _tiny(infer_threshold=0.0)  # every local maximum becomes a RoI
    model.train()
    image = torch.randn(1, 37, 29, 19)
    prob, boxes, scores, peak = model.predict(image)
    assert model.training  # mode restored
    assert peak == pytest.approx(float(scores[0]))  # the highest local maximum is the heatmap's maximum
    assert prob.shape == (37, 29, 19) and prob.dtype == np.float32
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 6 and 0 < len(boxes) <= TINY["max_rois"]
    assert scores.shape == (len(boxes),)
    assert np.all(scores[:-1] >= scores[1:])
    assert np.all(boxes[:, :3] >= 0) and np.all(boxes[:, 3:] <= np.array([37, 29, 19]))
    assert np.all(boxes[:, 3:] > boxes[:, :3])
    assert 0 <= prob.min() and prob.max() <= 1
    inside = np.zeros(prob.shape, dtype=bool)
    for b in model.crop_boxes(torch.from_numpy(boxes)):
        inside[R.paste_region(b.tolist(), prob.shape)] = True
    assert np.all(prob[~inside] == 0)  # pasted over the crop boxes only
    # the default inference threshold on an untrained detector finds nothing: empty RoIs, zero probability
    prob0, boxes0, scores0, peak0 = _tiny().predict(image)
    assert prob0.shape == (37, 29, 19) and boxes0.shape == (0, 6) and scores0.shape == (0,) and prob0.max() == 0
    assert 0 < peak0 < 0.1  # below the threshold, still reported


def test_forward_shape_and_gradient_reaches_every_parameter() -> None:
    model = _tiny().train()
    x, _ = _batch()
    y = model(x)
    assert y.shape == (2, 1, 32, 32, 16) and torch.isfinite(y).all() and float(y.detach().max()) > 0
    (y * torch.randn_like(y)).sum().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert not bad, bad
    model.eval()
    with torch.no_grad():
        y2 = model(torch.randn(1, 1, 30, 27, 13))  # not a multiple of 8
    assert y2.shape == (1, 1, 30, 27, 13)


def test_builder_contract() -> None:
    with pytest.raises(ValueError, match="out_channels"):
        create_model("detseg3d", in_channels=1, out_channels=4)
    info = model_info("detseg3d")
    assert info.task == "detect_segment" and info.divisibility == 8
    assert info.train_defaults == dict(optimizer="adamw", lr=1e-4, scheduler="cosine")
    with torch.device("meta"):
        model = create_model("detseg3d", in_channels=1, out_channels=1)
    n_det = sum(p.numel() for p in model.detector.parameters())
    n_seg = sum(p.numel() for p in model.segmenter.parameters())
    assert (n_det, n_seg) == (8_522_823, 4_738_058)  # detector 8.52M as measured for the original


# ----------------------------------------------------------------------------- box and heatmap calibration
HEAD_CT_LESION = (slice(21, 26), slice(34, 41), slice(9, 10))  # 5 x 7 x 1 voxels: one 5 mm slice of a head CT


def _thin_lesion() -> np.ndarray:
    label = np.zeros((64, 64, 16), dtype=np.uint8)
    label[HEAD_CT_LESION] = 1
    return label


class _OracleDetector(torch.nn.Module):
    """Detector maps equal to the targets of ``label``: heatmap logits, sizes (cells) and offsets."""

    def __init__(self, label: np.ndarray) -> None:
        super().__init__()
        t = R.make_targets(label, [s // 8 for s in label.shape])
        self.maps = [torch.from_numpy(t[k])[None] for k in ("heatmap", "size", "offset")]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, offset = self.maps
        return torch.logit(heat.clamp(1e-4, 1 - 1e-4)), size, offset


def test_a_lesion_box_encoded_into_targets_decodes_back_to_itself() -> None:
    label = _thin_lesion()
    t = R.make_targets(label, (8, 8, 2))
    np.testing.assert_array_equal(t["boxes"], [[21, 34, 9, 26, 41, 10]])
    heat, size, offset = (torch.from_numpy(t[k]) for k in ("heatmap", "size", "offset"))
    boxes, scores = R.extract_rois(heat[0], size, offset, threshold=0.1)
    assert boxes.shape == (1, 6) and float(scores[0]) == 1.0  # the Gaussian's centre is its only local maximum
    np.testing.assert_allclose(boxes[0], t["boxes"][0], atol=1e-5)


def test_detseg3d_reports_the_lesion_box_and_segments_a_wider_crop() -> None:
    """A detector whose maps are perfect gives the lesion's own box (IoU 1; clipped to 8 voxels per axis it
    would be 8 x 8 x 8, IoU 35 / 512 < 0.1 with this 5 x 7 x 1 lesion), while the segmenter's crop keeps
    ``min_box`` voxels of context per axis around the same centre."""
    model = _tiny().eval()
    label = _thin_lesion()
    model.detector = _OracleDetector(label)
    found = model.predict(torch.zeros(1, *label.shape))
    prob, boxes, scores = found[:3]
    np.testing.assert_allclose(boxes, [[21, 34, 9, 26, 41, 10]], atol=1e-4)
    assert scores.tolist() == pytest.approx([1.0], abs=1e-3) and found.peak == pytest.approx(1.0, abs=1e-3)
    crop = model.crop_boxes(torch.from_numpy(boxes))[0]
    np.testing.assert_allclose(crop, [19.5, 33.5, 5.5, 27.5, 41.5, 13.5], atol=1e-4)
    inside = np.zeros(label.shape, dtype=bool)
    inside[R.paste_region(crop.tolist(), label.shape)] = True
    assert prob[inside].min() > 0 and prob[~inside].max() == 0  # pasted over the crop box


def test_a_peak_decoding_outside_the_scan_is_dropped_and_each_mask_stays_with_its_box() -> None:
    """A scan of 13 slices is padded to 16; a peak of the padding whose box lies beyond slice 13 is dropped
    before the crops, so the lesion's own crop is what is pasted over it."""
    label = np.zeros((64, 64, 16), dtype=np.uint8)
    label[HEAD_CT_LESION] = 1
    model = _tiny().eval()
    model.detector = _OracleDetector(label)
    heat, size, offset = model.detector.maps
    heat[0, 0, 2, 4, 1] = 0.9  # the lesion's peak, now second
    heat[0, 0, 6, 6, 1] = 1.0  # decodes to slices [14.7, 15.7): padding only
    size[0, :, 6, 6, 1] = torch.tensor([1.0, 1.0, 1 / 8])
    offset[0, :, 6, 6, 1] = torch.tensor([0.5, 0.5, 0.9])
    model.segmenter = _Intensity()
    image = torch.from_numpy(label[None, :, :, :13].astype(np.float32))
    prob, boxes, scores, _ = model.predict(image)
    np.testing.assert_allclose(boxes, [[21, 34, 9, 26, 41, 10]], atol=1e-4)
    assert scores.tolist() == pytest.approx([0.9], abs=1e-3)
    found = prob >= 0.5
    assert 2 * (found & (label[:, :, :13] > 0)).sum() / (found.sum() + label.sum()) > 0.5


class _Intensity(torch.nn.Module):
    """A segmenter whose logits follow the crop's intensity (foreground above 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20 * (x - 0.5)


@pytest.mark.parametrize("feature_shape", [(4, 4, 2), (16, 16, 8)])
def test_heatmap_loss_pushes_a_lesion_peak_up_whatever_the_patch_size(feature_shape: tuple[int, int, int]) -> None:
    """At the focal prior (p = 0.01) the loss's gradient raises the centre cell with an O(1) force that does not
    shrink with the number of cells, and lowers the Gaussian's neighbours (target exp(-1/2) ~ 0.61 < 1): only
    the centre is a positive."""
    label = np.zeros([8 * s for s in feature_shape], dtype=np.uint8)
    label[9:14, 10:17, 4:5] = 1  # centre (11.5, 13.5, 4.5) voxels: cell (1, 1, 0)
    target = torch.from_numpy(R.make_targets(label, feature_shape)["heatmap"])[None]
    logits = torch.full(target.shape, -math.log(99.0), requires_grad=True)
    heatmap_focal_loss(logits, target).backward()
    grad = logits.grad[0, 0]
    assert float(target[0, 0, 2, 1, 0]) == pytest.approx(math.exp(-0.5))
    assert float(grad[1, 1, 0]) == pytest.approx(-(0.99**3) + 2 * 0.01 * 0.99**2 * math.log(0.01), rel=1e-4)
    assert float(grad[2, 1, 0]) > 0 and float(grad[1, 2, 0]) > 0
    assert float(grad.sum()) < 0  # the net force is upwards: the peak is learnable from the prior


def test_detector_maps_are_the_same_in_training_and_at_inference() -> None:
    """Trained one patch per step, a batch-statistics norm computes another function at inference."""
    model = _tiny()
    image, _ = _batch()
    model.train()
    with torch.no_grad():
        trained = model.detector(image[:1])
    model.eval()
    with torch.no_grad():
        inferred = model.detector(image[:1])
    for a, b in zip(trained, inferred):
        torch.testing.assert_close(a, b)


def test_the_size_loss_reaches_the_size_head_whatever_its_output() -> None:
    """A size head whose output at every cell is far below the target still gets a gradient (no dead zone)."""
    model = _tiny().train()
    with torch.no_grad():
        model.detector.size_head[-1].bias.fill_(-10.0)
    image, label = _batch()
    model.training_losses(image, label)["size"].backward()
    assert float(model.detector.size_head[-1].weight.grad.abs().sum()) > 0
    assert float(model.detector.size_head[-1].bias.grad.sum()) < 0  # descent raises the sizes


def test_detseg3d_selects_its_epoch_by_boxes_and_masks_not_by_dice_alone() -> None:
    """The checkpoint of a detector with masks is chosen by the mean of validation mAP and Dice (issue 25: a flat
    Dice picked epoch 3 of a detector that had found no lesion); a box detector by its mAP alone."""
    from engine.tasks.detect_segment import DetectSegmentAccumulator, DetectSegmentTask, map_dice
    from engine.tasks.detection import DetectionTask

    task = DetectSegmentTask("ich")
    assert task.selection.metric == "map_dice" and task.selection.column == "best_val_map_dice"
    assert DetectionTask.selection.metric == "map"
    assert isinstance(task.new_accumulator(stage="val"), DetectSegmentAccumulator)
    assert map_dice(dict(map=0.4, dice_mean=0.2)) == pytest.approx(0.3)
    assert map_dice(dict(map=float("nan"), dice_mean=0.2)) == 0.2  # no lesion in the validation scans
    assert math.isnan(map_dice(dict(map=float("nan"), dice_mean=float("nan"))))
    # a later epoch that finds the lesions beats an early one whose Dice is a little higher
    early, late = map_dice(dict(map=0.0, dice_mean=0.05)), map_dice(dict(map=0.3, dice_mean=0.04))
    assert task.selection.improved(late, early, first=False)
    assert "val_map_dice" in task.validation_row(dict(map=0.3, dice_mean=0.04, map_dice=late), None)


# ----------------------------------------------------------------------------- anisotropic grid
def test_anisotropic_targets_decode_back_and_keep_the_seed_sigma_rule() -> None:
    """A per-axis stride (8, 8, 2): the thin lesion's centre cell, size and offset are in cells of each axis,
    decoding gives its box back, and sigma uses the size in cells per axis (the seed's rule when isotropic)."""
    label = _thin_lesion()  # box [21, 34, 9, 26, 41, 10]: centre (23.5, 37.5, 9.5)
    t = R.make_targets(label, (8, 8, 8), stride=(8, 8, 2))
    heat = t["heatmap"][0]
    assert np.unravel_index(heat.argmax(), heat.shape) == (2, 4, 4)
    np.testing.assert_allclose(t["size"][:, 2, 4, 4], [5 / 8, 7 / 8, 1 / 2])
    np.testing.assert_allclose(t["offset"][:, 2, 4, 4], [23.5 / 8 - 2, 37.5 / 8 - 4, 9.5 / 2 - 4])
    heat_t, size_t, offset_t = (torch.from_numpy(t[k]) for k in ("heatmap", "size", "offset"))
    boxes, _ = R.extract_rois(heat_t[0], size_t, offset_t, threshold=0.1, stride=(8, 8, 2))
    np.testing.assert_allclose(boxes[0], [21, 34, 9, 26, 41, 10], atol=1e-5)
    assert R.gaussian_sigma((64, 64, 40), stride=(8, 8, 2)) == 2.0  # min(8, 8, 20) cells / 4
    assert R.gaussian_sigma((40, 64, 64), stride=8) == R.gaussian_sigma((40, 64, 64), stride=(8, 8, 8)) == 2.0


def test_anisotropic_detector_halves_the_coarse_axis_last() -> None:
    from models.detection.detseg3d import level_strides

    assert level_strides((8, 8, 8)) == [(2, 2, 2)] * 3
    assert level_strides((8, 8, 2)) == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]
    assert level_strides((8, 8, 1)) == [(2, 2, 1)] * 3
    with pytest.raises(ValueError, match="1, 2, 4, 8"):
        level_strides((8, 8, 3))
    model = _tiny(stride=[8, 8, 2])
    heat, size, offset = model.detector(torch.zeros(1, 1, 32, 32, 16))
    assert heat.shape == (1, 1, 4, 4, 8) and size.shape == offset.shape == (1, 3, 4, 4, 8)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in _tiny().parameters())
    found = model.predict(torch.rand(1, 30, 27, 13))  # padded to (32, 32, 14) for the (8, 8, 2) grid
    assert found.probability.shape == (30, 27, 13)


@pytest.mark.parametrize("spacing, grid", [(None, (8, 8, 8)), ((1.0, 1.0, 1.0), (8, 8, 8)), ((0.9, 0.9, 4.5), (8, 8, 2)),
                                           ((1.0, 1.0, 5.0), (8, 8, 2)), ((0.7, 0.7, 1.25), (8, 8, 4)),
                                           ((3.0, 1.0, 1.0), (2, 8, 8)), ((0.5, 0.5, 10.0), (8, 8, 1))])
def test_detector_grid_follows_the_voxel_spacing(spacing, grid) -> None:
    from models.detection.detseg3d import grid_for_spacing

    assert grid_for_spacing(spacing) == grid
    assert _tiny(spacing=spacing).stride == grid
    assert _tiny(spacing=spacing, stride=4).stride == (4, 4, 4)  # an explicit stride wins


def test_the_sweep_builds_detseg3d_for_the_dataset_spacing(tmp_path) -> None:
    """The runner passes the median spacing of the sweep's cases (ModelInfo.spacing_kwarg) unless --model_kwargs
    gives one; the build kwargs (what checkpoints record) carry it."""
    from engine.options.config import parse_config
    from engine.sweep_plan import median_spacing, plan_models, prepare_data

    config = parse_config(["--dataset_version", "synthetic_ich", "--synthetic_cases", "8", "--synthetic_size", "32",
                           "32", "16", "--tiny", "--models", "detseg3d", "unet3d_xs", "--cache_dir",
                           str(tmp_path / "cache")])
    data = prepare_data(config, tmp_path / "out")
    plans = plan_models(["detseg3d", "unet3d_xs"], config, data)
    spacing = plans["detseg3d"].setup.model_kwargs["spacing"]
    assert spacing == median_spacing(data.cases.values()) and 4.0 <= spacing[2] <= 5.0 and spacing[0] < 1.01
    assert plans["detseg3d"].setup.build().stride == (8, 8, 2)
    assert "spacing" not in plans["unet3d_xs"].setup.model_kwargs
    # the tiny build's recipe (ModelInfo.tiny_train_defaults) over the seed's; the sweep's default for the others
    assert (plans["detseg3d"].trainer.lr, plans["detseg3d"].trainer.optimizer) == (1e-3, "adamw")
    assert plans["unet3d_xs"].trainer.lr == config.lr
    common = ["--dataset_version", "synthetic_ich", "--synthetic_cases", "8", "--synthetic_size", "32", "32", "16",
              "--models", "detseg3d", "--cache_dir", str(tmp_path / "cache")]
    assert plan_models(["detseg3d"], parse_config(common), data)["detseg3d"].trainer.lr == 1e-4  # the seed's
    chosen = parse_config([*common, "--tiny", "--lr", "3e-4"])
    assert plan_models(["detseg3d"], chosen, data)["detseg3d"].trainer.lr == 3e-4  # the user's flag wins
    config = parse_config(["--dataset_version", "synthetic_ich", "--synthetic_cases", "8", "--synthetic_size", "32",
                           "32", "16", "--tiny", "--models", "detseg3d", "--cache_dir", str(tmp_path / "cache"),
                           "--model_kwargs", '{"detseg3d": {"spacing": [1, 1, 1]}}'])
    assert plan_models(["detseg3d"], config, data)["detseg3d"].setup.build().stride == (8, 8, 8)


def test_the_regression_mode_travels_with_the_weights() -> None:
    """A checkpoint decodes offsets as it was trained (the mode is a buffer of the state dict), and one saved
    before the mode existed (no buffer, centre regression then) loads as centre regression, not decoding its
    sigmoid-trained offsets linearly."""
    centre, box = _tiny(regress="centre"), _tiny(regress="box")
    x = torch.rand(1, 1, 32, 32, 16)
    box.load_state_dict(centre.state_dict())
    assert box.detector.regress == "centre"
    with torch.no_grad():
        for a, b in zip(centre.detector(x), box.detector(x)):
            torch.testing.assert_close(a, b)
        offset = box.detector(x)[2]
    assert float(offset.min()) >= 0.0 and float(offset.max()) < 1.0  # sigmoid offsets
    old = {k: v for k, v in centre.state_dict().items() if not k.endswith("box_regression")}
    loaded = _tiny(regress="box")
    loaded.load_state_dict(old)  # strict: the missing buffer is supplied, nothing else is
    assert loaded.detector.regress == "centre" and int(loaded.detector.box_regression) == 0
    assert "detector.box_regression" not in old  # the caller's dict is left as it was
    with torch.no_grad():
        for a, b in zip(centre.detector(x), loaded.detector(x)):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="regress"):
        _tiny(regress="anchors")
