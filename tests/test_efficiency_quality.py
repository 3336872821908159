"""Quality of the efficiency figures: the latency-quality columns reach the result tables, and on CUDA the
allocator-peak train PAM equals the peak of a plain training step (skipped without CUDA)."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn as nn

from metrics.efficiency import EFFICIENCY_KEYS, SHARE_MIN_WINDOW_S, measure_latency, measure_pam
from metrics.efficiency_memory import cuda_plain_step_peak_mb
from models import create_model
from utils.schema import RUN_TRAILING

QUALITY = ("latency_cv", "latency_load", "latency_cpu_share", "latency_threads", "latency_flag")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class _Sleep(nn.Module):
    """Identity that sleeps ``seconds`` per call (wall time without CPU time) and counts its calls."""

    def __init__(self, seconds: float, calls: list) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(1)
        time.sleep(self.seconds)
        return x


def test_latency_quality_columns_are_run_and_comparison_columns() -> None:
    assert set(QUALITY) <= set(EFFICIENCY_KEYS) and set(QUALITY) <= set(RUN_TRAILING)
    assert RUN_TRAILING.index("latency_ms_median") < RUN_TRAILING.index("latency_cv")


def test_latency_cv_is_std_over_mean_of_the_timed_runs() -> None:
    result = measure_latency(nn.Conv3d(1, 2, 3), (1, 1, 8, 8, 8), device="cpu", warmup=1, runs=4, threads=1)
    assert math.isclose(result["latency_cv"], result["latency_ms_std"] / result["latency_ms"])
    assert math.isnan(result["latency_cpu_share"])  # ~0.1 ms of timed runs: too short for the CPU clock


def test_latency_cpu_share_over_a_long_enough_window_is_physical() -> None:
    calls = []
    net = nn.Conv3d(4, 8, 3)
    slow = nn.Sequential(net, _Sleep(SHARE_MIN_WINDOW_S / 4, calls))  # 4 timed runs span >= the window
    result = measure_latency(slow, (1, 4, 16, 16, 16), device="cpu", warmup=1, runs=4, threads=1)
    share = result["latency_cpu_share"]
    assert len(calls) == 5 and not math.isnan(share)
    # CPU time / wall: the sleeps hold no core, so well under 1; no process exceeds its machine's cores
    assert 0 < share < 0.8 and "busy" in result["latency_flag"]


@needs_cuda
def test_cuda_train_pam_matches_plain_training_step_peak() -> None:
    torch.manual_seed(0)
    model = create_model("unet3d_xs", in_channels=4, out_channels=4, base=8).cuda()
    shape = (1, 4, 64, 64, 64)
    pam, _ = measure_pam(model, shape, device="cuda", mode="train", runs=2)
    plain = cuda_plain_step_peak_mb(model, shape)
    assert pam > 0 and plain > 0
    assert abs(pam - plain) <= 0.1 * plain, (pam, plain)  # same step, same allocator; workspaces may differ


@needs_cuda
def test_cuda_latency_has_no_cpu_share_and_is_synchronised() -> None:
    result = measure_latency(nn.Conv3d(1, 2, 3).cuda(), (1, 1, 16, 16, 16), device="cuda", warmup=1, runs=3)
    assert math.isnan(result["latency_cpu_share"]) and result["latency_ms"] > 0
