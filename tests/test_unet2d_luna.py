"""The LUNA chapter's 2.5D U-Net (``unet2d_luna``) and weighted Dice (``luna_dice``) against the chapter.

Chapter: Stevens, Antiga & Viehmann, Deep Learning with PyTorch, ch. 13: ``UNetWrapper(in_channels=7,
n_classes=1, depth=3, wf=4, padding=True, batch_norm=True, up_mode='upconv')`` and
``diceLoss(p, g).mean() + diceLoss(p * g, g).mean() * 8`` with ``diceLoss = 1 - (2 sum(pg) + 1) / (sum p + sum g + 1)``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from engine.optim import build_optimizer, build_scheduler
from engine.trainer_settings import TrainerSettings
from losses import create_loss, is_binary_loss, loss_spec
from models import create_model, model_info

NAME = "unet2d_luna"


def _chapter_model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(NAME, out_channels=2, **kwargs)


def _hand_count(in_ch: int, n_out: int, wf: int = 4, depth: int = 3) -> int:
    """Parameters of the chapter's UNetWrapper, counted layer by layer (bias included, BN = 2 per channel)."""
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    block = lambda i, o: conv(i, o, 3) + bn(o) + conv(o, o, 3) + bn(o)  # noqa: E731
    widths = [2 ** (wf + i) for i in range(depth)]
    total = bn(in_ch) + sum(block(i, o) for i, o in zip([in_ch, *widths[:-1]], widths))
    total += sum(conv(widths[i + 1], widths[i], 2) + block(widths[i + 1], widths[i]) for i in range(depth - 1))
    return total + conv(widths[0], n_out, 1)


def test_registration_metadata_and_recipe() -> None:
    info = model_info(NAME)
    assert (info.family, info.task, info.spatial_dims, info.any_channels) == (NAME, "segmentation", 2, True)
    assert (info.context_slices, info.in_channels, info.divisibility) == (3, 7, 4)
    assert (info.default_patch_size, info.test_patch_size) == ((64, 64), (32, 32))
    assert (info.foreground_fraction, info.centre_jitter) == (1.0, 16)
    assert "Deep Learning with PyTorch" in info.paper
    assert info.train_defaults == dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="none",
                                       max_grad_norm=None, batch_size=16, loss="luna_dice")
    settings = TrainerSettings.for_model(TrainerSettings(), info.train_defaults)
    assert (settings.optimizer, settings.batch_size, settings.max_grad_norm, settings.loss) == ("adam", 16, None,
                                                                                                "luna_dice")
    optimizer = build_optimizer(settings.optimizer, _chapter_model().parameters(), lr=settings.lr,
                                weight_decay=settings.weight_decay)
    assert isinstance(optimizer, torch.optim.Adam) and build_scheduler(settings.scheduler, optimizer, epochs=3) is None


def test_forward_shapes() -> None:
    model = _chapter_model()
    assert model(torch.randn(3, 7, 64, 64)).shape == (3, 2, 64, 64)
    tiny = create_model(NAME, out_channels=2, **model_info(NAME).tiny_kwargs)
    assert tiny(torch.randn(2, 7, 32, 32)).shape == (2, 2, 32, 32)
    assert create_model(NAME, out_channels=4)(torch.randn(2, 7, 32, 32)).shape == (2, 4, 32, 32)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 7, 30, 32))


@pytest.mark.parametrize("train", [True, False])
def test_softmax_channel_one_is_the_chapter_sigmoid(train: bool) -> None:
    model = _chapter_model().train(train)
    x = torch.randn(2, 7, 32, 32) * 300 - 500  # HU-like values: the input BatchNorm normalises them
    with torch.no_grad():
        logits, chapter = model(x), model.probability(x)
    assert torch.equal(logits[:, :1], torch.zeros_like(chapter))
    torch.testing.assert_close(torch.softmax(logits, dim=1)[:, 1:], chapter, atol=1e-7, rtol=0)
    assert torch.equal(logits.argmax(1, keepdim=True), (chapter > 0.5).long())  # the chapter's threshold


def test_tie_at_zero_is_background() -> None:
    model = _chapter_model()
    nn.init.zeros_(model.unet.last.weight)
    nn.init.zeros_(model.unet.last.bias)
    x = torch.randn(1, 7, 32, 32)
    assert bool((model.probability(x) == 0.5).all()) and not bool(model(x).argmax(1).any())


def test_parameter_count_is_the_chapters() -> None:
    chapter = _chapter_model()
    assert sum(p.numel() for p in chapter.parameters()) == _hand_count(7, 1) == 118_271
    default = create_model(NAME)  # the registry's default build: 4 classes (BraTS), i.e. 3 channels next to 0
    assert sum(p.numel() for p in default.parameters()) == model_info(NAME).num_params == _hand_count(7, 3)
    assert {"input_batchnorm.weight", "unet.down_path.0.block.0.weight", "unet.up_path.0.up.weight",
            "unet.last.weight"} <= set(chapter.state_dict())  # the chapter's UNetWrapper keys


def test_input_batchnorm_normalises_each_channel() -> None:
    model = _chapter_model()
    assert isinstance(model.input_batchnorm, nn.BatchNorm2d) and model.input_batchnorm.num_features == 7
    x = torch.randn(4, 7, 32, 32)
    scale, shift = torch.rand(1, 7, 1, 1) * 5 + 0.5, torch.randn(1, 7, 1, 1) * 100
    with torch.no_grad():  # train mode: batch statistics make the output invariant to a per-channel affine map
        torch.testing.assert_close(model(x * scale + shift), model(x), atol=2e-3, rtol=0)


def test_kaiming_fan_out_initialisation() -> None:
    model = _chapter_model()
    conv = model.unet.down_path[2].block[0]  # 32 -> 64, 3x3: fan_out 576, fan_in 288
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    up = model.unet.up_path[0].up  # ConvTranspose2d(64, 32, 2): torch's fan_out is 64 * 4
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 4)), rel=0.05)
    # biases: normal(mean=-b, std=b), b = 1/sqrt(fan_out), as the chapter's nn.init.normal_(bias, -bound, bound)
    inits = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    z = torch.cat([m.bias * math.sqrt(m.weight.shape[0] * m.weight[0, 0].numel()) for m in inits]).detach()
    assert z.mean().item() == pytest.approx(-1.0, abs=0.25) and z.std().item() == pytest.approx(1.0, abs=0.2)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)


def test_one_adam_step_reduces_the_luna_dice() -> None:
    model, loss_fn = _chapter_model(), create_loss("luna_dice")
    x = torch.randn(4, 7, 32, 32)
    target = torch.zeros(4, 32, 32, dtype=torch.long)
    target[:, 10:18, 12:20] = 1
    x[:, :, 10:18, 12:20] += 2.0  # a brighter "nodule"
    optimizer = torch.optim.Adam(model.parameters(), lr=model_info(NAME).train_defaults["lr"])
    before = loss_fn(model(x), target)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_fn(model(x), target)
    assert after.item() < before.item()


def test_out_channels_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="out_channels must be >= 2.*chapter's sigmoid"):
        create_model(NAME, out_channels=1)
    with pytest.raises(ValueError, match="one-channel sigmoid"):
        create_model(NAME, out_channels=4).probability(torch.randn(1, 7, 32, 32))


def _logits_of(p: torch.Tensor) -> torch.Tensor:
    """Two-class logits ``cat([0, logit(p)])`` whose softmax channel 1 is ``p``."""
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


P = torch.tensor([[[0.9, 0.2], [0.6, 0.1]], [[0.3, 0.2], [0.1, 0.4]]], dtype=torch.float64)
G = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 0]]])  # sample 2: an empty label


def test_luna_dice_equals_a_hand_computation() -> None:
    # sample 1: sum(pg) 1.5, sum p 1.8, sum g 2 -> 1 - 4/4.8 = 1/6; FN term: sum(pg) 1.5 -> 1 - 4/4.5 = 1/9
    # sample 2: sum p 1.0, empty label -> 1 - 1/2 = 1/2; FN term: 1 - 1/1 = 0
    assert create_loss("luna_dice")(_logits_of(P), G).item() == pytest.approx((1 / 6 + 1 / 2) / 2 + 8 * (1 / 9) / 2)
    assert create_loss("luna_dice", fn_weight=2.0)(_logits_of(P), G).item() == pytest.approx(1 / 3 + 2 / 18)
    assert create_loss("luna_dice", fn_weight=0.0)(_logits_of(P), G[:, None]).item() == pytest.approx(1 / 3)


def test_luna_dice_flags_and_binary_registration() -> None:
    assert is_binary_loss("luna_dice")
    spec = loss_spec("luna_dice", SimpleNamespace(fn_weight=2.0))
    assert create_loss(spec)(_logits_of(P), G).item() == pytest.approx(1 / 3 + 2 / 18)
    assert create_loss(loss_spec("luna_dice", SimpleNamespace(fn_weight=None))).fn_weight == 8.0


def test_luna_dice_matches_the_chapter_on_the_model_and_in_3d() -> None:
    model = _chapter_model()
    x, label = torch.randn(2, 7, 32, 32), torch.rand(2, 32, 32) > 0.8
    with torch.no_grad():
        prediction, logits = model.probability(x), model(x)
    g = label[:, None].float()

    def chapter_dice(p: torch.Tensor, g: torch.Tensor, epsilon: float = 1) -> torch.Tensor:
        return 1 - (2 * (p * g).sum(dim=[1, 2, 3]) + epsilon) / (p.sum(dim=[1, 2, 3]) + g.sum(dim=[1, 2, 3]) + epsilon)

    expected = chapter_dice(prediction, g).mean() + chapter_dice(prediction * g, g).mean() * 8
    value = create_loss("luna_dice")(logits, label.long())
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    as_3d = create_loss("luna_dice")(logits.reshape(2, 2, 4, 8, 32), label.long().reshape(2, 4, 8, 32))
    assert as_3d.item() == pytest.approx(value.item(), rel=1e-6)


def test_luna_dice_gradient_flows() -> None:
    logits = torch.randn(2, 2, 4, 6, 5, requires_grad=True)
    create_loss("luna_dice")(logits, torch.randint(0, 2, (2, 4, 6, 5))).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_luna_dice_refuses_bad_inputs() -> None:
    loss = create_loss("luna_dice")
    with pytest.raises(ValueError, match="two-class logits"):
        loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be labels"):
        loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="fn_weight must be >= 0"):
        create_loss("luna_dice", fn_weight=-1.0)
