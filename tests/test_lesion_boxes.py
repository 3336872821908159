"""Lesion components and boxes (metrics.lesions): hand-made masks, MONAI's mask-to-box and IoU on random cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from monai.apps.detection.transforms.box_ops import convert_mask_to_box
from monai.data.box_utils import box_iou as monai_box_iou

from metrics.lesions import (STRUCTURE_26, box_centres_in, box_iou, boxes_from_labels, boxes_from_mask,
                             boxes_to_world, hits, label_components, scored_boxes)


def _mask(shape=(40, 40, 40)):
    return np.zeros(shape, dtype=bool)


def test_single_voxel_box_is_max_exclusive():
    m = _mask()
    m[10, 20, 30] = True
    boxes = boxes_from_mask(m)
    assert boxes.dtype == np.float32 and boxes.shape == (1, 6)
    np.testing.assert_array_equal(boxes, [[10, 20, 30, 11, 21, 31]])


def test_diagonal_neighbours_are_one_component():
    m = _mask()
    m[5, 5, 5] = m[6, 6, 6] = True          # corner-touching: 26-connected only
    labels, n = label_components(m)
    assert n == 1 and labels.dtype == np.int32 and labels[5, 5, 5] == labels[6, 6, 6] == 1
    np.testing.assert_array_equal(boxes_from_mask(m), [[5, 5, 5, 7, 7, 7]])
    assert STRUCTURE_26.shape == (3, 3, 3) and STRUCTURE_26.all()


def test_one_voxel_gap_gives_two_components_in_scan_order():
    m = _mask()
    m[20, 2, 2] = True                     # later in scan order
    m[3, 4, 4] = m[3, 4, 6] = True         # two voxels with one empty voxel between them
    labels, n = label_components(m)
    assert n == 3
    assert labels[3, 4, 4] == 1 and labels[3, 4, 6] == 2 and labels[20, 2, 2] == 3
    np.testing.assert_array_equal(boxes_from_labels(labels, n),
                                  [[3, 4, 4, 4, 5, 5], [3, 4, 6, 4, 5, 7], [20, 2, 2, 21, 3, 3]])


def test_min_size_drops_small_components_and_relabels():
    m = _mask()
    m[1, 1, 1] = True                      # 1 voxel, first in scan order
    m[10:12, 10:12, 10:12] = True          # 8 voxels
    m[30:33, 30, 30] = True                # 3 voxels
    labels, n = label_components(m, min_size=3)
    assert n == 2 and labels[1, 1, 1] == 0
    assert labels[10, 10, 10] == 1 and labels[31, 30, 30] == 2
    np.testing.assert_array_equal(boxes_from_mask(m, min_size=4), [[10, 10, 10, 12, 12, 12]])
    with pytest.raises(ValueError, match="min_size"):
        label_components(m, min_size=0)


def test_empty_mask_gives_no_boxes():
    boxes = boxes_from_mask(_mask())
    assert boxes.shape == (0, 6) and boxes.dtype == np.float32
    boxes, scores = scored_boxes(_mask(), np.zeros((40, 40, 40)))
    assert boxes.shape == (0, 6) and scores.shape == (0,)


def test_scored_boxes_take_component_maximum_and_sort():
    m, prob = _mask(), np.zeros((40, 40, 40), dtype=np.float32)
    m[2:4, 2:4, 2:4] = True                # first component in scan order
    prob[2:4, 2:4, 2:4] = 0.3
    prob[3, 3, 3] = 0.6
    m[20:22, 20, 20] = True                # second component, higher maximum
    prob[20, 20, 20], prob[21, 20, 20] = 0.2, 0.9
    prob[30, 30, 30] = 1.0                 # outside the mask: ignored
    boxes, scores = scored_boxes(m, prob)
    np.testing.assert_allclose(scores, [0.9, 0.6])
    np.testing.assert_array_equal(boxes, [[20, 20, 20, 22, 21, 21], [2, 2, 2, 4, 4, 4]])
    boxes, scores = scored_boxes(m)
    np.testing.assert_array_equal(scores, [1.0, 1.0])
    np.testing.assert_array_equal(boxes[0], [2, 2, 2, 4, 4, 4])   # ties keep scan order
    with pytest.raises(ValueError, match="shape"):
        scored_boxes(m, prob[:-1])


@pytest.mark.parametrize("seed", range(5))
def test_boxes_match_monai_mask_to_box_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((24, 20, 16)) > 0.93
    labels, n = label_components(m)
    ours = boxes_from_labels(labels, n)
    assert n > 3
    channels = np.where(labels[None] == np.arange(1, n + 1)[:, None, None, None], 1, -1).astype(np.int16)
    theirs, _ = convert_mask_to_box(channels, bg_label=-1)
    np.testing.assert_array_equal(ours, theirs)


def _scipy_whole_volume(mask: np.ndarray, prob: np.ndarray, min_size: int) -> tuple[np.ndarray, int, np.ndarray,
                                                                                   np.ndarray]:
    """The reference: scipy labels over the whole volume, size filter, find_objects boxes, labelled maximum."""
    labels, n = ndimage.label(mask, structure=STRUCTURE_26)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    kept = [i for i in range(1, n + 1) if sizes[i] >= min_size]
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[kept] = np.arange(1, len(kept) + 1)
    labels = relabel[labels]
    boxes = np.asarray([[s.start for s in sl] + [s.stop for s in sl] for sl in ndimage.find_objects(labels)],
                       dtype=np.float32).reshape(-1, 6)
    scores = np.asarray(ndimage.maximum(prob, labels, index=np.arange(1, len(kept) + 1)), dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return labels, len(kept), boxes[order], scores[order]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_size", [1, 3])
def test_labelling_inside_the_mask_box_equals_whole_volume_scipy(seed, min_size):
    """Components touching the volume's faces, lesions only in a corner, single voxels: same numbering,
    boxes and scores as labelling the whole volume."""
    rng = np.random.default_rng(seed)
    m = np.zeros((30, 28, 26), dtype=bool)
    corner = tuple(slice(int(rng.integers(0, 10)), int(rng.integers(14, 31))) for _ in range(3))
    m[corner] = rng.random(m[corner].shape) > 0.9
    if seed % 2:
        m[-1, int(rng.integers(28)), int(rng.integers(26))] = True  # on a face of the volume
    prob = rng.random(m.shape).astype(np.float32)
    labels, n, boxes, scores = _scipy_whole_volume(m, prob, min_size)
    ours_labels, ours_n = label_components(m, min_size=min_size)
    assert ours_n == n and n > 2
    np.testing.assert_array_equal(ours_labels, labels)
    ours_boxes, ours_scores = scored_boxes(m, prob, min_size=min_size)
    np.testing.assert_array_equal(ours_boxes, boxes)
    np.testing.assert_array_equal(ours_scores, scores)


def test_box_iou_hand_values_and_empty():
    a = np.array([[0, 0, 0, 10, 10, 10]], dtype=np.float32)
    b = np.array([[0, 0, 0, 10, 10, 5], [5, 5, 5, 15, 15, 15], [20, 20, 20, 21, 21, 21]], dtype=np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[0.5, 125 / 1875, 0.0]], rtol=1e-6)
    assert box_iou(a, np.zeros((0, 6))).shape == (1, 0)
    assert box_iou(np.zeros((0, 6)), b).shape == (0, 3)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        box_iou(a[:, :4], b)


@pytest.mark.parametrize("seed", range(5))
def test_box_iou_matches_monai_and_brute_force(seed):
    rng = np.random.default_rng(seed)

    def rand_boxes(k):
        lo = rng.uniform(0, 20, (k, 3))
        return np.concatenate([lo, lo + rng.uniform(1, 10, (k, 3))], axis=1).astype(np.float32)

    a, b = rand_boxes(7), rand_boxes(5)
    ours = box_iou(a, b)
    np.testing.assert_allclose(ours, monai_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), rtol=1e-6)
    lo, hi = np.maximum(a[:, None, :3], b[None, :, :3]), np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    vol = lambda x: np.prod(x[:, 3:] - x[:, :3], axis=-1)  # noqa: E731
    np.testing.assert_allclose(ours, inter / (vol(a)[:, None] + vol(b)[None] - inter), rtol=1e-4, atol=1e-6)


def test_box_centres_in_edges():
    gt = np.array([[0, 0, 0, 10, 10, 10]], dtype=np.float32)
    pred = np.array([[-10, -10, -10, 20, 20, 20],   # centre (5, 5, 5): inside
                     [0, 0, 0, 0, 0, 0],           # centre on the lower edge: inside
                     [5, 0, 0, 15, 10, 10],        # centre x = 10 on the upper edge: outside
                     [30, 30, 30, 31, 31, 31]], dtype=np.float32)
    np.testing.assert_array_equal(box_centres_in(pred, gt)[:, 0], [True, True, False, False])
    np.testing.assert_array_equal(hits(pred, gt, rule="centre")[:, 0], [True, True, False, False])
    # IoU rule on the same boxes: 1000/27000, 0, 500/1500, 0 against 0.1
    np.testing.assert_array_equal(hits(pred, gt, rule="iou")[:, 0], [False, False, True, False])
    with pytest.raises(ValueError, match="rule"):
        hits(pred, gt, rule="overlap")  # type: ignore[arg-type]


def test_boxes_to_world_edges_and_flips():
    box = np.array([[10, 20, 30, 11, 21, 31]], dtype=np.float32)   # one voxel
    diag = np.diag([2.0, 3.0, 4.0, 1.0])
    diag[:3, 3] = [100.0, 0.0, -50.0]
    np.testing.assert_allclose(boxes_to_world(box, diag), [[119.0, 58.5, 68.0, 121.0, 61.5, 72.0]])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])                          # RAS <-> LPS style flip
    np.testing.assert_allclose(boxes_to_world(box, flip), [[-10.5, -20.5, 29.5, -9.5, -19.5, 30.5]])
    rot = np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # axes 0 and 1 swapped
    np.testing.assert_allclose(boxes_to_world(np.array([[0, 0, 0, 2, 4, 6]]), rot),
                               [[-0.5, -0.5, -0.5, 3.5, 1.5, 5.5]])
    out = boxes_to_world(np.zeros((0, 6)), np.eye(4))
    assert out.shape == (0, 6) and out.dtype == np.float64
