"""The strong baselines of issue 24 (item 1): nnU-Net's ResEnc U-Net and DynUNet planned as nnU-Net plans them,
MONAI's SegResNet, MedNeXt and BasicUNet; nnU-Net's deep-supervision loss and training recipe."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn

import engine.tasks  # noqa: F401  (sets create_model's default out_channels per model kind)
import integrated_experiment
from engine.optim import build_optimizer, build_scheduler, step_scheduler
from engine.tasks.segmentation import brats_segmentation
from engine.trainer_settings import TrainerSettings
from losses import create_loss
from losses.deep_supervision import deep_supervision_loss, deep_supervision_weights, downsample_labels
from models import create_model, model_info
from models.nnunet_plan import features_per_stage, plan_unet
from utils.schema import RUNS_CSV

BASELINES = ["resenc_unet", "dynunet", "segresnet", "mednext_s", "mednext_b", "mednext_m", "mednext_l",
             "mednext_l_k5", "basicunet"]
# Full builds (4 input channels, 4 classes; resenc_unet and dynunet planned for 128^3 at 1 mm), counted once with
# the pinned libraries (dynamic-network-architectures 0.4.4, MONAI 1.6.1). MedNeXt's match its paper (5.6M, 10.5M,
# 17.6M, 61.8M, 63.0M).
PINNED_PARAMS = {"resenc_unet": 102_353_972, "dynunet": 31_192_068, "segresnet": 4_702_244,
                 "mednext_s": 5_551_076, "mednext_b": 10_511_012, "mednext_m": 17_533_668,
                 "mednext_l": 61_726_916, "mednext_l_k5": 62_940_548, "basicunet": 5_752_068}
SMALL_EDGE = {"basicunet": 32}  # BasicUNet always pools 4 times: 16^3 would leave its instance norm one voxel


def test_planner_gives_nnunets_plans() -> None:
    """Plans nnU-Net's own ``get_pool_and_conv_props`` (nnunetv2 master) gives; the port was also compared with
    it on 3000 random patch/spacing pairs when written."""
    iso = plan_unet((128, 128, 128), (1.0, 1.0, 1.0))
    assert iso.n_stages == 6 and iso.kernel_sizes == ((3, 3, 3),) * 6
    assert iso.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5 and iso.divisible_by == (32, 32, 32)
    brats = plan_unet((128, 160, 112), (1.0, 1.0, 1.0))  # nnU-Net's BraTS 3d_fullres patch: last stride (2, 2, 1)
    assert brats.strides[-1] == (2, 2, 1) and brats.n_stages == 6 and brats.divisible_by == (32, 32, 16)
    aniso = plan_unet((20, 320, 256), (3.6, 0.625, 0.625))  # prostate-like: in-plane first, 1x3x3 kernels
    assert aniso.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2))
    assert aniso.kernel_sizes == ((1, 3, 3), (1, 3, 3)) + ((3, 3, 3),) * 5
    padded = plan_unet((100, 100, 100))  # 4 poolings: nnU-Net pads the patch to a multiple of 16
    assert padded.divisible_by == (16, 16, 16) and padded.patch_size == (112, 112, 112)
    assert features_per_stage(7) == (32, 64, 128, 256, 320, 320, 320)
    with pytest.raises(ValueError, match=r"pads the patch to \(112, 112, 112\)"):
        create_model("resenc_unet", img_size=(100, 100, 100))


def test_full_builds_follow_the_recipes_and_pinned_parameter_counts() -> None:
    for name in BASELINES:
        with torch.device("meta"):
            model = create_model(name)
        count = sum(p.numel() for p in model.parameters())
        assert count == PINNED_PARAMS[name] == model_info(name).num_params, name
    with torch.device("meta"):
        resenc = create_model("resenc_unet")
        dyn = create_model("dynunet", img_size=(128, 160, 112))
    encoder = resenc.encoder
    assert [len(stage.blocks) for stage in encoder.stages] == [1, 3, 4, 6, 6, 6]
    assert list(encoder.output_channels) == [32, 64, 128, 256, 320, 320]
    assert [len(stage.convs) for stage in resenc.decoder.stages] == [1] * 5  # one convolution per decoder stage
    norms = [m for m in resenc.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(m.affine and m.eps == 1e-5 for m in norms)
    assert all(m.negative_slope == 0.01 for m in resenc.modules() if isinstance(m, nn.LeakyReLU))
    assert [tuple(s) for s in dyn.strides][-1] == (2, 2, 1) and dyn.filters == [32, 64, 128, 256, 320, 320]


@pytest.mark.parametrize("name", BASELINES)
def test_tiny_build_trains_and_predicts_full_resolution(name: str) -> None:
    edge = SMALL_EDGE.get(name, 16)
    kwargs = dict(model_info(name).tiny_kwargs)
    if "img_size" in kwargs:
        kwargs["img_size"] = (edge,) * 3
    torch.manual_seed(0)
    model = create_model(name, in_channels=2, out_channels=3, **kwargs).train()
    x = torch.randn(1, 2, edge, edge, edge)
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    assert outputs[0].shape == (1, 3, edge, edge, edge)
    sum(o.float().square().mean() for o in outputs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        pred = model.eval()(x)
    assert isinstance(pred, torch.Tensor) and pred.shape == (1, 3, edge, edge, edge)


def test_deep_supervision_weights_are_nnunets() -> None:
    assert deep_supervision_weights(1) == (1.0,)
    assert deep_supervision_weights(4) == pytest.approx((8 / 14, 4 / 14, 2 / 14, 0.0))
    assert sum(deep_supervision_weights(6)) == pytest.approx(1.0)


def test_deep_supervision_loss_is_the_weighted_sum_over_scales() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8, 8))
    outputs = [torch.randn(2, 3, *(8 // 2**i,) * 3, requires_grad=True) for i in range(3)]
    loss = create_loss("nnunet")
    total = deep_supervision_loss(loss, outputs, target)
    # by hand: weights 1, 1/2, 0 normalised -> 2/3, 1/3, 0; nearest-exact halving keeps voxels 1, 3, 5, 7
    half = target[:, 1::2, 1::2, 1::2]
    assert torch.equal(downsample_labels(target, (4, 4, 4)), half)
    expected = 2 / 3 * loss(outputs[0], target) + 1 / 3 * loss(outputs[1], half)
    assert float(total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    total.backward()
    assert outputs[2].grad is not None and not outputs[2].grad.any()  # the lowest scale: in the graph, weight 0
    single = deep_supervision_loss(loss, outputs[:1], target).detach()
    assert float(single) == pytest.approx(float(loss(outputs[0], target).detach()))


def test_segmentation_task_trains_deep_supervision_and_eval_returns_one_tensor() -> None:
    task = brats_segmentation()
    torch.manual_seed(0)
    model = create_model("resenc_unet", **dict(model_info("resenc_unet").tiny_kwargs, img_size=(16, 16, 16)))
    batch = {"image": torch.randn(1, 4, 16, 16, 16), "label": torch.randint(0, 4, (1, 16, 16, 16))}
    outputs = model.train()(batch["image"])
    assert isinstance(outputs, list) and [o.shape[2] for o in outputs] == [16, 8]
    expected = deep_supervision_loss(task.loss_fn, outputs, batch["label"])
    got = task.train_step(model, batch, torch.device("cpu"))["loss"]
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert isinstance(model.eval()(batch["image"]), torch.Tensor)
    dyn = create_model("dynunet", **dict(model_info("dynunet").tiny_kwargs, deep_supervision=True)).train()
    scales = dyn(torch.randn(1, 4, 32, 32, 32))  # 4 stages: the full, 1/2 and 1/4 scales, each at its own size
    assert [tuple(o.shape[2:]) for o in scales] == [(32,) * 3, (16,) * 3, (8,) * 3]
    plain = create_model("dynunet", **dict(model_info("dynunet").tiny_kwargs, img_size=(16, 16, 16))).train()
    assert isinstance(plain(torch.randn(1, 4, 16, 16, 16)), torch.Tensor)  # deep supervision is off by default


def test_nnunet_recipe_is_the_train_defaults_of_the_nnunet_baselines() -> None:
    for name in ("resenc_unet", "dynunet"):
        settings = TrainerSettings.for_model(TrainerSettings(epochs=10), model_info(name).train_defaults)
        assert (settings.optimizer, settings.lr, settings.momentum, settings.weight_decay, settings.scheduler) == (
            "sgd", 1e-2, 0.99, 3e-5, "poly")
    assert TrainerSettings.for_model(TrainerSettings(lr=3e-4), model_info("resenc_unet").train_defaults).lr == 3e-4
    opt = build_optimizer(settings.optimizer, nn.Linear(2, 2).parameters(), lr=settings.lr,
                          weight_decay=settings.weight_decay, momentum=settings.momentum)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and group["nesterov"] and group["momentum"] == 0.99
    scheduler = build_scheduler(settings.scheduler, opt, epochs=10)
    for _ in range(3):
        step_scheduler(scheduler, None)
    assert group["lr"] == pytest.approx(1e-2 * (1 - 3 / 10) ** 0.9)
    assert not model_info("segresnet").train_defaults  # the MONAI baselines train with the sweep's recipe


def test_tiny_sweep_trains_the_deep_supervised_baselines(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = integrated_experiment.main([
        "--synthetic_cases", "5", "--synthetic_size", "32", "32", "32", "--cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(out), "--samples_per_volume", "1", "--num_workers", "0", "--skip_efficiency",
        "--epochs", "1", "--seeds", "7", "--tiny", "--models", "resenc_unet", "dynunet",
        "--model_kwargs", '{"dynunet": {"deep_supervision": true}}'])
    assert code == 0
    runs = pd.read_csv(out / RUNS_CSV).set_index("model")
    assert (runs["status"] == "ok").all(), runs["error"].to_dict()
    epochs = pd.read_csv(out / "all_epochs_results.csv")
    assert epochs["lr"].tolist() == pytest.approx([1e-2, 1e-2])  # the nnU-Net recipe's lr for the unset --lr


def test_a_users_adam_drops_the_recipes_sgd_momentum() -> None:
    recipe = model_info("resenc_unet").train_defaults
    chosen = TrainerSettings.for_model(TrainerSettings(optimizer="adam"), recipe, explicit=("optimizer",))
    assert chosen.optimizer == "adam" and chosen.momentum is None and chosen.lr == recipe["lr"]
    kept = TrainerSettings.for_model(TrainerSettings(), recipe)
    assert kept.optimizer == "sgd" and kept.momentum == recipe["momentum"]


@pytest.mark.parametrize("name", ["dynunet", "resenc_unet"])
def test_a_sweep_plans_the_nnunet_baselines_for_the_dataset_spacing(name: str, tmp_path: Path) -> None:
    """As nnU-Net plans from its training set's median spacing: on head CT of ~1 x 1 x 4.5 mm the high-resolution
    stages get in-plane kernels (3, 3, 1) and keep the slices; on the isotropic BraTS phantoms the plan is the 1 mm
    one a direct build makes."""
    from engine.options.config import parse_config
    from engine.sweep_plan import median_spacing, plan_models, prepare_data

    def planned(dataset: str, size: tuple[int, int, int]) -> tuple[tuple, nn.Module]:
        config = parse_config(["--dataset_version", dataset, "--synthetic_cases", "8", "--synthetic_size",
                               *map(str, size), "--tiny", "--models", name, "--cache_dir", str(tmp_path / "cache")])
        data = prepare_data(config, tmp_path / dataset)
        setup = plan_models([name], config, data)[name].setup
        assert setup.model_kwargs["spacing"] == median_spacing(data.cases.values())
        return setup.model_kwargs["spacing"], setup.build()

    def kernels(model: nn.Module) -> list[tuple[int, ...]]:
        return [tuple(m.kernel_size) for m in model.modules() if isinstance(m, nn.Conv3d)]

    spacing, ct = planned("synthetic_ich", (32, 32, 16))
    assert spacing[2] > 4 * spacing[0] and kernels(ct)[0] == (3, 3, 1)
    spacing, mri = planned("synthetic", (32, 32, 32))
    assert spacing == (1.0, 1.0, 1.0)
    direct = create_model(name, in_channels=4, out_channels=4, **model_info(name).tiny_kwargs)
    assert kernels(mri) == kernels(direct) and kernels(mri)[0] == (3, 3, 3)
