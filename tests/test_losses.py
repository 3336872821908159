"""Loss registry and Dice+CE weightings (losses)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from losses import create_loss, list_losses


def test_registry_names_and_unknown():
    assert {"nnunet", "standard"} <= set(list_losses())
    with pytest.raises(ValueError, match="known losses.*nnunet.*standard"):
        create_loss("nnunett")


@pytest.mark.parametrize("name", ["nnunet", "standard"])
@pytest.mark.parametrize("shape,n_classes", [((2, 6, 5, 4), 4), ((3, 7, 6), 2), ((1, 5, 5), 3)])
def test_finite_grad_and_ordering(name, shape, n_classes):
    torch.manual_seed(0)
    loss = create_loss(name)
    target = torch.randint(0, n_classes, shape)
    logits = (torch.randn(shape[0], n_classes, *shape[1:]) * 0.1).requires_grad_()
    value = loss(logits, target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    onehot = F.one_hot(target, n_classes).movedim(-1, 1).float()
    good = loss(onehot * 10.0, target)
    bad = loss(torch.roll(onehot, 1, dims=1) * 10.0, target)   # every voxel confidently wrong
    assert good < value.detach() < bad


@pytest.mark.parametrize("name,w_dice,w_ce,squared", [("nnunet", 0.7, 0.3, True), ("standard", 0.5, 0.5, False)])
def test_weighting_equals_separate_terms(name, w_dice, w_ce, squared):
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 5, 4, 6), torch.randint(0, 3, (2, 5, 4, 6))
    dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, squared_pred=squared,
                    smooth_nr=1e-5, smooth_dr=1e-5)(logits, target[:, None])
    ce = F.cross_entropy(logits, target)
    expected = w_dice * dice + w_ce * ce
    assert create_loss(name)(logits, target) == pytest.approx(float(expected), rel=1e-5)
    assert create_loss(name)(logits, target[:, None]) == pytest.approx(float(expected), rel=1e-5)
    # the two Dice variants differ, so the test above would catch a swapped squared_pred
    other = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, squared_pred=not squared,
                     smooth_nr=1e-5, smooth_dr=1e-5)(logits, target[:, None])
    assert abs(float(other - dice)) > 1e-4


def test_bad_target_raises():
    loss = create_loss("standard")
    with pytest.raises(ValueError, match="target must be labels"):
        loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4))
