"""Quality of the efficiency figures: the latency-quality columns reach the result tables, and on CUDA the
allocator-peak train PAM equals the peak of a plain training step (skipped without CUDA)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from metrics.efficiency import EFFICIENCY_KEYS, measure_latency, measure_pam
from metrics.efficiency_memory import cuda_plain_step_peak_mb
from models import create_model
from utils.schema import RUN_TRAILING

QUALITY = ("latency_cv", "latency_load", "latency_cpu_share", "latency_threads", "latency_flag")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_latency_quality_columns_are_run_and_comparison_columns() -> None:
    assert set(QUALITY) <= set(EFFICIENCY_KEYS) and set(QUALITY) <= set(RUN_TRAILING)
    assert RUN_TRAILING.index("latency_ms_median") < RUN_TRAILING.index("latency_cv")


def test_latency_cv_is_std_over_mean_of_the_timed_runs() -> None:
    result = measure_latency(nn.Conv3d(1, 2, 3), (1, 1, 8, 8, 8), device="cpu", warmup=1, runs=4, threads=1)
    assert math.isclose(result["latency_cv"], result["latency_ms_std"] / result["latency_ms"])
    assert 0 < result["latency_cpu_share"] <= 1.5  # CPU time / wall time; a little over 1 from runtime threads


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
