"""Efficiency measures: parameter and FLOP counts against hand formulas, CPU PAM against known saved
tensors, stage-wise PAM, latency, and that no measurement changes the model."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
import torch.nn as nn

from metrics.efficiency import (CV_LIMIT, EFFICIENCY_KEYS, MB, count_flops, count_parameters, count_parameters_of,
                                latency_flag, measure_efficiency, measure_latency, measure_pam, stage_wise_pam)
from models import create_model

CPU = "cpu"
TINY_UNET_SHAPE = (1, 4, 32, 32, 32)


def tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("unet3d_xs", base=4)


def test_count_parameters_is_sum_of_numel() -> None:
    model = nn.Sequential(nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3), nn.Linear(5, 7))
    expected = (2 * 3 * 27 + 3) + (3 + 3) + (5 * 7 + 7)
    assert count_parameters(model) == expected
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight  # a shared parameter counts once
    assert count_parameters(tied) == 16 + 4 + 4


def test_count_parameters_of_on_meta_and_fallback() -> None:
    assert count_parameters_of(lambda: create_model("unet3d_xs", base=4)) == count_parameters(tiny_unet())

    def needs_real_tensors() -> nn.Module:
        m = nn.Linear(3, 2)
        if m.weight.sum().item() > 1e9:  # .item() is impossible on meta: forces the CPU fallback
            raise AssertionError
        return m

    assert count_parameters_of(needs_real_tensors) == 3 * 2 + 2


def test_flop_counter_matches_conv_formula_and_thop_is_twice_macs() -> None:
    cin, cout, k, size = 2, 3, 3, 6
    conv = nn.Conv3d(cin, cout, k, bias=False)  # no padding: output (size - k + 1)^3
    out_voxels = (size - k + 1) ** 3
    result = count_flops(conv, (1, cin, size, size, size), device=CPU)
    assert result["flops_torch"] == 2 * cin * cout * k**3 * out_voxels
    # a conv-only model: thop's MACs are the same multiply-adds, so 2 x MACs equals the torch count
    assert result["flops_thop"] == result["flops_torch"]
    assert result["flops_input"] == f"1x{cin}x{size}x{size}x{size}"
    assert count_flops(conv, (1, cin, size, size, size), device="meta") == result  # shapes only, same counts


def test_flops_are_stated_at_batch_one() -> None:
    conv = nn.Conv3d(1, 2, 1, bias=False)
    assert count_flops(conv, (3, 1, 4, 4, 4), device=CPU) == count_flops(conv, (1, 1, 4, 4, 4), device=CPU)


def test_thop_overcounts_conv_transpose_by_stride_cubed() -> None:
    up = nn.ConvTranspose3d(4, 2, kernel_size=2, stride=2, bias=False)
    result = count_flops(up, (1, 4, 4, 4, 4), device=CPU)
    assert result["flops_torch"] == 2 * 4 * 2 * 2**3 * 4**3  # each input voxel meets k^3 weights per pair
    assert result["flops_thop"] / result["flops_torch"] == pytest.approx(8.0)


def test_thop_failure_gives_nan_and_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import thop

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported module")

    monkeypatch.setattr(thop, "profile", broken)
    with caplog.at_level(logging.WARNING, logger="metrics.efficiency"):
        result = count_flops(nn.Conv3d(1, 1, 1), (1, 1, 2, 2, 2), device=CPU)
    assert math.isnan(result["flops_thop"]) and result["flops_torch"] > 0
    assert "thop failed" in caplog.text


def test_cpu_train_pam_equals_saved_tensor_bytes() -> None:
    batch, h1, h2 = 3, 7, 11
    model = nn.Sequential(nn.Linear(5, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 2))
    # autograd saves each ReLU's output (also the next Linear's input, same storage); the first Linear's
    # input and all weights are excluded, and the pre-activation Linear outputs are not saved.
    expected = 4 * batch * (h1 + h2)
    mean, std = measure_pam(model, (batch, 5), device=CPU, mode="train", runs=2)
    assert mean * MB == expected and std == 0.0


def test_cpu_infer_pam_tracks_frees() -> None:
    model = nn.Sequential(nn.Conv3d(1, 4, 1), nn.ReLU(), nn.Conv3d(4, 2, 1))
    voxels = 4**3
    a = b = 4 * voxels * 4  # conv1 and ReLU outputs, float32
    c = 2 * voxels * 4  # conv2 output
    # conv1's output dies once the ReLU has run, so the peak is max(a + b, b + c), not a + b + c
    mean, _ = measure_pam(model, (1, 1, 4, 4, 4), device=CPU, mode="infer", runs=1)
    assert mean * MB == max(a + b, b + c)


def test_infer_pam_positive_and_below_train_for_conv_net() -> None:
    model = tiny_unet()
    train, _ = measure_pam(model, TINY_UNET_SHAPE, device=CPU, mode="train", runs=1)
    infer, _ = measure_pam(model, TINY_UNET_SHAPE, device=CPU, mode="infer", runs=1)
    assert 0 < infer <= train


def test_pam_rejects_bad_arguments() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="mode"):
        measure_pam(model, (1, 2), device=CPU, mode="eval")
    with pytest.raises(ValueError, match="input_shape"):
        measure_pam(model, (1, 2, 0), device=CPU)


def test_pam_uses_first_tensor_of_tuple_or_dict_outputs() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> dict:
            h = torch.relu(self.lin(x))
            return {"seg": h, "aux": (h.sum(),)}

    mean, _ = measure_pam(Pair(), (2, 3), device=CPU, mode="train", runs=1)
    assert mean * MB == 2 * 4 * 4  # the ReLU output


def test_stage_wise_names_are_top_level_children() -> None:
    model = tiny_unet()
    rows = stage_wise_pam(model, TINY_UNET_SHAPE, device=CPU)
    assert [r["stage"] for r in rows] == [name for name, _ in model.named_children()]
    train, _ = measure_pam(model, TINY_UNET_SHAPE, device=CPU, mode="train", runs=1)
    infer, _ = measure_pam(model, TINY_UNET_SHAPE, device=CPU, mode="infer", runs=1)
    assert sum(r["pam_train_mb"] for r in rows) == pytest.approx(train)
    assert max(r["pam_infer_mb"] for r in rows) == pytest.approx(infer)
    assert rows[0]["pam_train_mb"] > rows[4]["pam_train_mb"] > 0  # enc1 at 32^3 saves more than the bottleneck


def test_stage_wise_pam_stages_override_and_unused_stage() -> None:
    model = tiny_unet()
    model.pam_stages = ["dec1.up", "enc1"]
    rows = stage_wise_pam(model, TINY_UNET_SHAPE, device=CPU)
    names = [r["stage"] for r in rows]
    assert names[:2] == ["enc1", "dec1.up"]  # call order, not list order
    assert names[2:] == ["<other>"]  # the rest of the network
    model.pam_stages = ["enc9"]
    with pytest.raises(ValueError, match="enc9"):
        stage_wise_pam(model, TINY_UNET_SHAPE, device=CPU)

    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.used(x))

    assert [r["stage"] for r in stage_wise_pam(WithUnused(), (1, 2), device=CPU)] == ["used", "<other>"]


def test_stage_wise_pam_on_monai_unetr() -> None:
    model = create_model("unetr", img_size=(32, 32, 32), hidden_size=32, mlp_dim=64, num_heads=2, feature_size=4)
    rows = stage_wise_pam(model, TINY_UNET_SHAPE, device=CPU)
    names = [r["stage"] for r in rows]
    assert names[0] == "vit" and "encoder1" in names and "decoder5" in names and names[-1] == "out"
    assert all(r["pam_infer_mb"] > 0 for r in rows)


def small_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(inplace=True), nn.Dropout3d(0.5),
                         nn.ConvTranspose3d(4, 2, 2, stride=2), nn.BatchNorm3d(2))


def test_stage_wise_pam_on_monai_swin_unetr() -> None:
    model = create_model("swin_unetr", feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    rows = stage_wise_pam(model, (1, 4, 64, 64, 64), device=CPU)
    names = [r["stage"] for r in rows]
    assert names[0] == "swinViT" and names[-1] == "out" and set(names) <= {n for n, _ in model.named_children()}
    assert rows[0]["pam_train_mb"] > 0


def test_measure_efficiency_leaves_model_unchanged() -> None:
    model = small_bn_net()
    shape = (2, 2, 8, 8, 8)
    model.train()
    model[3].eval()  # a mixed train/eval state must come back as it was
    model(torch.randn(shape)).mean().backward()  # real gradients and BN statistics to keep
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    result = measure_efficiency(model, shape, device=CPU, pam_runs=2, latency_runs=2, latency_warmup=1)
    assert tuple(result) == EFFICIENCY_KEYS
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # incl. running stats, num_batches_tracked
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert torch.equal(torch.get_rng_state(), rng)  # dropout in the train-mode forward drew from a forked RNG
    assert result["params"] == count_parameters(model) and result["flops_input"] == "1x2x8x8x8"
    assert result["pam_train_mb_std"] == 0.0 and result["pam_train_mb"] > 0 and result["pam_infer_mb"] > 0
    assert not any(k.startswith("total_") for k in model.state_dict())  # thop's buffers stay on its copy


def test_latency_keys_positive() -> None:
    result = measure_latency(nn.Conv3d(1, 2, 3), (1, 1, 8, 8, 8), device=CPU, warmup=1, runs=3)
    assert set(result) == {"latency_ms", "latency_ms_std", "latency_ms_median", "latency_cv", "latency_load",
                           "latency_cpu_share", "latency_threads", "latency_flag"}
    assert set(result) <= set(EFFICIENCY_KEYS)
    assert result["latency_ms"] > 0 and result["latency_ms_median"] > 0 and result["latency_ms_std"] >= 0
    assert result["latency_cv"] == pytest.approx(result["latency_ms_std"] / result["latency_ms"])
    assert result["latency_threads"] == torch.get_num_threads()
    assert math.isnan(result["latency_cpu_share"])  # timed runs far shorter than SHARE_MIN_WINDOW_S
    assert set(result["latency_flag"].split("+")) <= {"", "busy", "noisy"}
    with pytest.raises(ValueError, match="runs"):
        measure_latency(nn.Conv3d(1, 2, 3), (1, 1, 8, 8, 8), device=CPU, runs=0)


def test_latency_pins_threads_and_restores_them() -> None:
    before = torch.get_num_threads()
    result = measure_latency(nn.Conv3d(1, 2, 3), (1, 1, 8, 8, 8), device=CPU, warmup=0, runs=1, threads=1)
    assert result["latency_threads"] == 1 and result["latency_cv"] == 0.0
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        measure_latency(nn.Conv3d(1, 2, 3), (1, 1, 8, 8, 8), device=CPU, threads=0)


def test_latency_flag_rules() -> None:
    assert latency_flag(0.01, 0.2, 0.97) == ""
    assert latency_flag(0.01, 1.5, 0.97) == "busy"  # others hold more than half the cores
    assert latency_flag(0.01, 0.2, 0.5) == "busy"  # others took half of our CPU time
    assert latency_flag(CV_LIMIT, 0.2, float("nan")) == "noisy"  # CUDA: no CPU share
    assert latency_flag(0.3, 2.0, 0.4) == "busy+noisy"
    assert latency_flag(0.0, float("nan"), float("nan")) == ""  # no load average on this OS
    assert latency_flag(0.01, 1.2, 0.97, own=1.0) == ""  # the load is this process's own threads


def test_latency_on_a_busy_machine_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    import metrics.efficiency as eff

    monkeypatch.setattr(eff, "machine_load", lambda: 3.0)
    result = measure_latency(nn.Conv3d(1, 2, 3), (1, 1, 8, 8, 8), device=CPU, warmup=0, runs=2)
    assert result["latency_load"] == 3.0 and "busy" in result["latency_flag"]


def test_flops_and_pam_ignore_the_cpu_depth_split() -> None:
    from utils.cpu_conv import apply_depth_split_convs, count_depth_split_convs

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose3d(8, 4, 2, stride=2))
    split = copy.deepcopy(plain)
    assert apply_depth_split_convs(split) == 2
    shape = (1, 2, 16, 16, 16)
    assert count_flops(split, shape) == count_flops(plain, shape)  # thop included: it sees the plain classes
    assert measure_pam(split, shape, device=CPU, runs=1) == measure_pam(plain, shape, device=CPU, runs=1)
    assert stage_wise_pam(split, shape, device=CPU) == stage_wise_pam(plain, shape, device=CPU)
    assert count_depth_split_convs(split) == 2  # the measured model keeps its split
