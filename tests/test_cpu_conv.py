"""The batch-1 CPU depth split (utils.cpu_conv): same outputs and gradients as nn.Conv3d / nn.ConvTranspose3d
to ~1e-5 (relative to the largest value), taken only where PyTorch would run its slow native kernel, never
under deterministic algorithms, and invisible to state dicts, copies and pickling."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import utils.cpu_conv as cpu_conv
from engine.model_setup import cpu_conv_wanted, setup_model
from models import create_model
from models.blocks.unet_blocks import OutConv3D
from utils.cpu_conv import (DepthSplitConv3d, DepthSplitConvTranspose3d, apply_depth_split_convs,
                            count_depth_split_convs, native_convs, revert_depth_split_convs, split_active)

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture(autouse=True)
def nondeterministic() -> Iterator[None]:
    """Each test starts with deterministic algorithms off and leaves the global setting as it found it."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture(autouse=True)
def two_threads() -> Iterator[None]:
    """PyTorch's backend choice (slow kernel at batch 1, oneDNN at batch 2) depends on the thread count: these cases
    are stated for the machine's 2 threads, also when the suite's workers run on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def split_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of calls into the two split functions."""
    calls = {"conv": 0, "transpose": 0}
    for key, name in (("conv", "depth_split_conv3d"), ("transpose", "depth_split_conv_transpose3d")):
        original = getattr(cpu_conv, name)

        def counted(*args, _original=original, _key=key, **kwargs):  # type: ignore[no-untyped-def]
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(cpu_conv, name, counted)
    return calls


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal to 1e-5 of the largest magnitude of ``expected`` (summation order may differ)."""
    scale = float(expected.detach().abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def compare(reference: nn.Module, x: torch.Tensor) -> nn.Module:
    """Run ``reference`` and its depth-split copy forward and backward on ``x``; assert equal results."""
    split = copy.deepcopy(reference)
    apply_depth_split_convs(split)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = reference(xa), split(xb)
    assert ya.shape == yb.shape
    assert_close_scaled(yb, ya, "output")
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    assert_close_scaled(xb.grad, xa.grad, "input gradient")
    for (name, pa), (_, pb) in zip(reference.named_parameters(), split.named_parameters()):
        assert_close_scaled(pb.grad, pa.grad, f"gradient of {name}")
    return split


CONV_CONFIGS = [  # kernel, stride, padding, dilation, depth of the input
    (3, 1, 1, 1, 16), (3, 2, 1, 1, 16), (3, 2, 1, 1, 9), (3, 1, 0, 1, 10), (3, 2, 0, 1, 11),
    (3, 1, 2, 2, 12), (1, 1, 0, 1, 8), ((3, 1, 1), 1, (1, 0, 0), 1, 9), (3, (2, 1, 1), 1, 1, 13),
]


@needs_onednn
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kernel,stride,padding,dilation,depth", CONV_CONFIGS)
def test_conv3d_same_output_and_gradients(kernel, stride, padding, dilation, depth, batch: int,
                                          split_calls: dict[str, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 8, kernel, stride=stride, padding=padding, dilation=dilation, bias=True)
    compare(conv, torch.randn(batch, 3, depth, 7, 6))
    assert (split_calls["conv"] > 0) == (batch == 1)  # batch 2 already reaches oneDNN: left alone


@needs_onednn
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("depth", [2, 7, 8])
def test_conv_transpose3d_same_output_and_gradients(depth: int, batch: int, split_calls: dict[str, int]) -> None:
    torch.manual_seed(0)
    compare(nn.ConvTranspose3d(8, 4, 2, stride=2), torch.randn(batch, 8, depth, 5, 5))
    assert (split_calls["transpose"] > 0) == (batch == 1)


@needs_onednn
def test_conv_transpose3d_with_overlapping_kernel_is_not_split(split_calls: dict[str, int]) -> None:
    torch.manual_seed(0)
    compare(nn.ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1), torch.randn(1, 8, 6, 5, 5))
    assert split_calls["transpose"] == 0


@needs_onednn
def test_whole_unet_same_output_and_gradients(split_calls: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = create_model("unet3d_xs", in_channels=4, out_channels=4, base=4)
    split = compare(model, torch.randn(1, 4, 32, 32, 32))
    assert count_depth_split_convs(split) == sum(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
                                                 for m in model.modules())
    assert split_calls["conv"] > 0 and split_calls["transpose"] > 0


@needs_onednn
def test_not_split_where_pytorch_already_uses_onednn_or_inputs_differ(split_calls: dict[str, int]) -> None:
    conv = nn.Conv3d(2, 4, 5, padding=2)  # kernel > 3: oneDNN at batch 1 already
    apply_depth_split_convs(conv)
    conv(torch.randn(1, 2, 8, 8, 8))
    small = nn.Conv3d(2, 4, 3, padding=1)
    apply_depth_split_convs(small)
    small(torch.randn(1, 2, 2, 8, 8))  # 2 output rows: below MIN_OUT_DEPTH
    small.double()(torch.randn(1, 2, 8, 8, 8, dtype=torch.float64))  # oneDNN takes float32 only here
    assert split_calls["conv"] == 0


@needs_onednn
def test_never_split_under_deterministic_algorithms(split_calls: dict[str, int]) -> None:
    torch.manual_seed(0)
    plain = nn.Conv3d(3, 8, 3, padding=1)
    split = copy.deepcopy(plain)
    apply_depth_split_convs(split)
    x = torch.randn(1, 3, 12, 8, 8)
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert not split_active()
    assert torch.equal(split(x), plain(x))  # the very same kernel
    torch.use_deterministic_algorithms(False)
    with native_convs():
        assert not split_active() and torch.equal(split(x), plain(x))
    assert split_calls["conv"] == 0
    split(x)
    assert split_calls["conv"] == 1


def _setup(**kwargs):  # type: ignore[no-untyped-def]
    return setup_model("unet3d_xs", available_modalities=("t1", "t1ce", "t2", "flair"), n_classes=4,
                       requested_patch=(32, 32, 32), data_extent=(32, 32, 32), overrides={"base": 2}, **kwargs)


def test_model_setup_applies_it_except_under_deterministic() -> None:
    assert count_depth_split_convs(_setup().build()) > 0
    assert count_depth_split_convs(_setup(cpu_conv=False).build()) == 0
    torch.use_deterministic_algorithms(True, warn_only=True)  # what seed_everything(deterministic=True) does
    assert count_depth_split_convs(_setup().build()) == 0
    assert count_depth_split_convs(_setup(cpu_conv=True).build()) > 0  # built, but it never runs (test above)


def test_cpu_conv_wanted_follows_the_config() -> None:
    assert cpu_conv_wanted(SimpleNamespace(deterministic=False)) is True
    assert cpu_conv_wanted(SimpleNamespace(deterministic=True)) is False
    assert cpu_conv_wanted(SimpleNamespace(deterministic=False, cpu_conv_split=False)) is False


@pytest.mark.parametrize("flags, wanted", [([], True), (["--no_cpu_conv_split"], False), (["--deterministic"], False)])
def test_cli_flags_reach_the_planned_models(flags: list[str], wanted: bool) -> None:
    from engine.options.config import parse_config  # noqa: PLC0415
    from engine.options.resume_check import RESULT_FLAGS  # noqa: PLC0415

    config = parse_config(["--models", "unet3d_xs", *flags])
    assert config.cpu_conv_split is ("--no_cpu_conv_split" not in flags)
    assert cpu_conv_wanted(config) is wanted
    assert "cpu_conv_split" in RESULT_FLAGS  # the kernel's summation order changes the trained weights
    from dataio.types import DatasetInfo  # noqa: PLC0415
    from engine.sweep_plan import SweepData, plan_models  # noqa: PLC0415

    data = SweepData(cases={}, splits={}, extent=(32, 32, 32), info=DatasetInfo(name="synthetic"))
    setup = plan_models(["unet3d_xs"], config, data)["unet3d_xs"].setup
    assert setup.cpu_conv is wanted


def test_swap_keeps_state_dict_identity_and_survives_copy_and_pickle() -> None:
    torch.manual_seed(0)
    model = create_model("unet3d_xs", in_channels=4, out_channels=3, base=2)
    keys = list(model.state_dict())
    swapped = apply_depth_split_convs(model)
    assert swapped > 0 and list(model.state_dict()) == keys
    assert isinstance(model.out_conv, OutConv3D) and isinstance(model.out_conv, DepthSplitConv3d)
    assert isinstance(model.dec1.up, DepthSplitConvTranspose3d)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert count_depth_split_convs(loaded) == swapped == count_depth_split_convs(copy.deepcopy(model))
    x = torch.randn(1, 4, 16, 16, 16)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert revert_depth_split_convs(model) == swapped
    assert type(model.out_conv) is OutConv3D and type(model.dec1.up) is nn.ConvTranspose3d
    assert count_depth_split_convs(model) == 0 and apply_depth_split_convs(nn.Linear(2, 2)) == 0
