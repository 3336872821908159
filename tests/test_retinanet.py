"""RetinaNet (MONAI RetinaNetDetector) entry: the seed's settings, training losses, whole-scan detection.

All on CPU: the full default build on the meta device (settings only), everything else at the tiny
configuration (``tiny_kwargs``, ~43k parameters, a train step in a few hundredths of a second).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.apps.detection.utils.hard_negative_sampler import HardNegativeSampler
from monai.data.box_utils import box_iou
from monai.networks.nets import resnet

from models import create_model, model_info
from models.detection.retinanet import RetinaNetModel

INFO = model_info("retinanet")
PATCH = INFO.test_patch_size  # (32, 32, 16)


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny ops run fastest on one thread; two threads on a busy 2-core machine run 5-20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(seed: int = 0, **kwargs) -> RetinaNetModel:
    torch.manual_seed(seed)
    return create_model("retinanet", in_channels=1, out_channels=1, **dict(INFO.tiny_kwargs, **kwargs))


def _missing_grads(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]


def test_default_build_has_the_seed_settings() -> None:
    with torch.device("meta"):
        model = create_model("retinanet", in_channels=1, out_channels=1)
    assert all(p.device.type == "meta" for p in model.parameters())
    net, det = model.network, model.detector
    body = net.feature_extractor.body
    # ResNet-50 bottleneck backbone; only layers 1-2 feed the FPN, so layers 3-4 are not kept in the network
    assert model.settings["layers"] == (3, 4, 6, 3)
    assert [len(body.layer1), len(body.layer2)] == [3, 4]
    assert all(isinstance(b, resnet.ResNetBottleneck) for b in [*body.layer1, *body.layer2])
    assert not hasattr(body, "layer3") and not hasattr(body, "layer4")
    assert body.conv1.in_channels == 1
    assert tuple(body.conv1.stride) == (2, 2, 1) and tuple(body.conv1.kernel_size) == (7, 7, 7)
    assert model.settings["returned_layers"] == (1, 2)
    assert net.feature_extractor.out_channels == 256
    for head in (net.classification_head, net.regression_head):
        assert sum(isinstance(m, torch.nn.Conv3d) for m in head.conv) == 4
    assert net.num_classes == 1
    # 3 feature-map scales with the three base anchor shapes each
    assert model.feature_map_scales == (1, 2, 4)
    assert model.settings["anchor_shapes"] == ((6, 8, 4), (8, 6, 5), (10, 10, 6))
    cells = det.anchor_generator.cell_anchors
    assert len(cells) == 3 and det.num_anchors_per_loc == 3 == net.num_anchors
    # scale 2 (even sizes, unaffected by MONAI's rounding of half-sizes) gives exactly 2x the base shapes
    assert (cells[1][:, 3:] - cells[1][:, :3]).tolist() == [[12, 16, 8], [16, 12, 10], [20, 20, 12]]
    assert tuple(det.size_divisible) == (16, 16, 8) and INFO.divisibility == 16
    matcher = det.proposal_matcher
    assert isinstance(matcher, ATSSMatcher) and matcher.num_candidates == 4 and matcher.center_in_gt is False
    sampler = det.fg_bg_sampler
    assert isinstance(sampler, HardNegativeSampler)
    assert (sampler.batch_size_per_image, sampler.positive_fraction) == (64, 0.3)
    assert (sampler.pool_size, sampler.min_neg) == (20, 16)
    sel = det.box_selector
    assert (sel.score_thresh, sel.nms_thresh, sel.detections_per_img) == (0.02, 0.22, 100)
    assert sel.topk_candidates_per_level == 1000
    assert (det.target_box_key, det.target_label_key) == ("boxes", "labels")
    # registry metadata (nesterov is the engine's SGD)
    assert INFO.task == "detection" and INFO.spatial_dims == 3 and INFO.family == "retinanet"
    assert INFO.train_defaults == dict(optimizer="sgd", momentum=0.9, lr=1e-2, weight_decay=3e-5, scheduler="step",
                                       lr_step_size=50)
    assert all(p % 16 == 0 for p in INFO.default_patch_size)


def test_train_step_with_and_without_boxes() -> None:
    model = _tiny()
    model.train()
    x = torch.rand(2, 1, *PATCH)
    boxes = [torch.tensor([[8.0, 8.0, 4.0, 16.0, 16.0, 10.0]]), torch.zeros(0, 6)]  # second image: no lesion
    losses = model.training_losses(x, boxes)
    assert set(losses) == {"classification", "box_regression"}
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())
    assert float(losses["box_regression"].detach()) > 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    sum(losses.values()).backward()
    assert not _missing_grads(model)
    opt.step()
    assert sum(not torch.equal(a, p) for a, p in zip(before, model.parameters())) > 0.9 * len(before)

    # a batch without any box: MONAI's constant box loss is replaced by a zero on the regression head
    losses = model.training_losses(torch.rand(1, 1, *PATCH), [torch.zeros(0, 6)])
    assert float(losses["box_regression"].detach()) == 0.0 and losses["box_regression"].requires_grad
    assert torch.isfinite(losses["classification"]) and float(losses["classification"].detach()) > 0
    model.zero_grad()
    sum(losses.values()).backward()
    assert not _missing_grads(model)

    # losses in eval mode (validation loss): computed, and the module stays in eval mode
    model.eval()
    with torch.no_grad():
        losses = model.training_losses(x, boxes)
    assert all(torch.isfinite(v) for v in losses.values()) and not model.training


def test_detect_on_a_scan_larger_and_smaller_than_the_patch() -> None:
    model = _tiny(score_thresh=0.0)  # untrained scores sit near the 0.01 prior, under the default 0.02
    model.train()
    scan = torch.rand(1, 70, 50, 30)  # larger than the 32x32x16 patch, not a multiple of size_divisible
    boxes, scores = model.detect(scan, roi_size=PATCH, overlap=0.25)
    assert model.training  # mode restored
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.shape == (len(scores), 6) and 0 < len(scores) <= 100
    assert (boxes >= 0).all() and (boxes[:, 3:] <= np.array(scan.shape[1:])).all()
    assert (boxes[:, 3:] >= boxes[:, :3]).all()
    assert (np.diff(scores) <= 0).all() and len(scores) == 100
    small = torch.rand(1, 20, 40, 7)  # smaller than the patch in axes 0 and 2
    boxes, scores = model.detect(small, roi_size=PATCH)
    assert boxes.shape == (len(scores), 6)
    assert (boxes >= 0).all() and (boxes[:, 3:] <= np.array(small.shape[1:])).all()


def test_a_few_steps_on_one_cube_lesion_find_it() -> None:
    model = _tiny(0)
    g = torch.Generator().manual_seed(0)
    scan = 0.1 * torch.rand(1, 48, 40, 24, generator=g)
    scan[0, 26:34, 14:22, 12:18] = 1.0
    gt = torch.tensor([[26.0, 14.0, 12.0, 34.0, 22.0, 18.0]])
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    model.train()
    size = torch.tensor(PATCH, dtype=torch.float32).repeat(2)
    for _ in range(40):  # random patches of the scan, boxes shifted and clipped into each patch
        o = [int(torch.randint(0, s - p + 1, (1,), generator=g)) for s, p in zip(scan.shape[1:], PATCH)]
        patch = scan[:, o[0]:o[0] + PATCH[0], o[1]:o[1] + PATCH[1], o[2]:o[2] + PATCH[2]][None]
        b = torch.minimum((gt - torch.tensor(o * 2, dtype=torch.float32)).clamp(min=0), size)
        b = b[((b[:, 3:] - b[:, :3]) > 2).all(dim=1)]
        losses = model.training_losses(patch, [b])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    boxes, scores = model.detect(scan, roi_size=PATCH)
    assert len(boxes) > 0
    assert float(box_iou(torch.from_numpy(boxes[:1]), gt)[0, 0]) > 0.1


@pytest.mark.parametrize("shape", [PATCH, (30, 33, 12)])
def test_forward_is_one_tensor_reaching_every_parameter(shape: tuple[int, int, int]) -> None:
    model = _tiny()
    model.train()
    out = model(torch.rand(2, 1, *shape))
    assert isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 2
    # (A classes + A*6 deltas) per location of the three levels of the padded input (strides 4,4,2 / 8,8,4 / 16,16,8)
    padded = [-(-s // k) * k for s, k in zip(shape, (16, 16, 8))]
    locs = sum(np.prod([p // (st * 2**lvl) for p, st in zip(padded, (4, 4, 2))]) for lvl in range(3))
    assert out.shape[1] == locs * 3 * (1 + 6)
    (out * torch.randn_like(out)).sum().backward()
    assert not _missing_grads(model)
