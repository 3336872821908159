"""scripts/gpu_check.py on the CPU: each comparison fails when fed a perturbed result, a real CPU run of a subset of
the checks passes (bf16 autocast against fp32, a deterministic rerun bit-equal, PAM against an independent count,
the gloo collectives under torchrun) and its results fail when perturbed, a failed check exits 1, and without CUDA
the script says so and exits 0."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses resolve their module by name
_spec.loader.exec_module(gpu_check)

REFERENCE = {
    "unet3d_xs": {"status": "ok", "train_loss": 0.63, "val_loss": 0.64, "val_dice_ich": 0.41, "test_dice_ich": 0.38,
                  "test_dice_mean": 0.38},
    "retinanet": {"status": "ok", "train_loss": 1.07, "train_loss_classification": 0.79,
                  "test_dice_mean": float("nan")},
}
TOLERANCES = [gpu_check.AMP_TOLERANCE["fp16"], gpu_check.AMP_TOLERANCE["bf16"], gpu_check.AMP_TOLERANCE_CPU["bf16"]]


def _with(metrics: dict, model: str, key: str, value: object) -> dict:
    out = copy.deepcopy(metrics)
    out[model][key] = value
    return out


@pytest.mark.parametrize("tol", TOLERANCES)
def test_amp_comparison_fails_on_a_perturbed_run(tol: gpu_check.AmpTolerance) -> None:
    assert gpu_check.compare_amp(REFERENCE, copy.deepcopy(REFERENCE), tol)[0]
    close = _with(_with(REFERENCE, "unet3d_xs", "test_dice_ich", 0.38 + tol.dice_atol / 2),
                  "retinanet", "train_loss", 1.07 * (1 + tol.loss_rtol / 2))
    assert gpu_check.compare_amp(REFERENCE, close, tol)[0]
    for perturbed in (_with(REFERENCE, "unet3d_xs", "test_dice_ich", 0.58),  # Dice off by 0.2
                      _with(REFERENCE, "unet3d_xs", "val_dice_ich", 0.21),
                      _with(REFERENCE, "retinanet", "train_loss_classification", 0.79 * 1.3),
                      _with(REFERENCE, "unet3d_xs", "train_loss", float("nan")),  # diverged
                      _with(REFERENCE, "retinanet", "test_dice_mean", 0.1),  # a value where there was none
                      _with(REFERENCE, "retinanet", "status", "failed"),
                      {"unet3d_xs": REFERENCE["unet3d_xs"]}):  # a model missing
        passed, detail = gpu_check.compare_amp(REFERENCE, perturbed, tol)
        assert not passed and detail


def _cases(test_ids: list[str], models=("unet3d_xs", "retinanet")) -> tuple[list[dict], list[dict]]:
    runs = [dict(model=m, seed=24, fold=float("nan"), status="ok") for m in models]
    per_case = [dict(model=m, seed=24, fold=float("nan"), case_id=c) for m in models for c in test_ids]
    return runs, per_case


def test_case_count_comparison_fails_when_a_case_is_scored_twice_or_missing() -> None:
    ids = ["ICHSYN_00004", "ICHSYN_00011", "ICHSYN_00020"]
    runs, per_case = _cases(ids)
    assert gpu_check.compare_case_counts(runs, per_case, ids, ("gloo", "gloo"))[0]
    assert gpu_check.compare_case_counts(runs, per_case, ids, (None, None))[0]  # world size 1: no process group
    twice = per_case + [dict(per_case[1])]  # a padded DistributedSampler repeats a case on the last rank
    assert not gpu_check.compare_case_counts(runs, twice, ids, ("gloo", "gloo"))[0]
    assert "more than once" in gpu_check.compare_case_counts(runs, twice, ids, ("gloo", "gloo"))[1]
    assert not gpu_check.compare_case_counts(runs, per_case[1:], ids, ("gloo", "gloo"))[0]
    assert not gpu_check.compare_case_counts(runs, per_case, ids, ("gloo", "nccl"))[0]
    failed = [dict(runs[0], status="failed")] + runs[1:]
    assert not gpu_check.compare_case_counts(failed, per_case, ids, ("gloo", "gloo"))[0]


def _tables() -> dict[str, list[dict]]:
    return {"runs": [dict(model="unet3d_xs", seed=24, fold=float("nan"), status="ok", dice_ich=0.38, hd95_ich=7.5,
                          train_time_s=3.1, checkpoint="/a/b.pth")],
            "epochs": [dict(model="unet3d_xs", seed=24, fold=float("nan"), epoch=1, train_loss=0.6323, val_loss=0.64,
                            val_dice_ich=0.41, epoch_time_s=3.0)],
            "per_case": [dict(model="unet3d_xs", seed=24, fold=float("nan"), case_id="c1", dice_ich=0.38)]}


def test_rerun_comparison_needs_bit_equality_on_the_cpu() -> None:
    first, second = _tables(), _tables()
    second["runs"][0].update(train_time_s=9.9, checkpoint="/other/b.pth")  # timing and paths differ run to run
    assert gpu_check.compare_reruns(first, second, None) == (True, "bit-equal")
    one_ulp = copy.deepcopy(first)
    one_ulp["epochs"][0]["train_loss"] = math.nextafter(0.6323, 1.0)
    assert not gpu_check.compare_reruns(first, one_ulp, None)[0]
    fewer = copy.deepcopy(first)
    fewer["per_case"] = []
    assert not gpu_check.compare_reruns(first, fewer, None)[0]
    # CUDA: the documented differences pass, a Dice off by 0.2 does not
    passed, detail = gpu_check.compare_reruns(first, one_ulp, gpu_check.RERUN_TOLERANCE_CUDA)
    assert passed and "not bit-equal" in detail
    off = copy.deepcopy(first)
    off["runs"][0]["dice_ich"] = 0.58
    assert not gpu_check.compare_reruns(first, off, gpu_check.RERUN_TOLERANCE_CUDA)[0]


def test_memory_latency_collective_and_throughput_comparisons_fail_when_perturbed() -> None:
    reference = {"train": 100.0, "infer": 30.0}
    assert gpu_check.compare_memory({"train": 104.0, "infer": 31.0}, reference, gpu_check.PAM_RTOL)[0]
    assert not gpu_check.compare_memory({"train": 130.0, "infer": 30.0}, reference, gpu_check.PAM_RTOL)[0]
    assert not gpu_check.compare_memory({"train": 0.0}, {"train": 0.0}, gpu_check.PAM_RTOL)[0]
    assert not gpu_check.compare_memory({}, {"train": 10.0}, gpu_check.PAM_RTOL)[0]

    assert gpu_check.compare_latency(2.1, 2.0, gpu_check.LATENCY_RTOL, gpu_check.LATENCY_ATOL_MS)[0]
    assert gpu_check.compare_latency(0.30, 0.15, gpu_check.LATENCY_RTOL, gpu_check.LATENCY_ATOL_MS)[0]  # within atol
    assert not gpu_check.compare_latency(4.0, 2.0, gpu_check.LATENCY_RTOL, gpu_check.LATENCY_ATOL_MS)[0]
    assert not gpu_check.compare_latency(float("nan"), 2.0, gpu_check.LATENCY_RTOL, gpu_check.LATENCY_ATOL_MS)[0]

    good = [dict(rank=r, backend="nccl", sum=3, gathered=[0, 1], device=f"cuda:{r}") for r in (0, 1)]
    assert gpu_check.compare_collectives(good, 2, "nccl")[0]
    for broken in ([dict(good[0], sum=2), good[1]], good[:1], [good[0], dict(good[1], device="cuda:0")],
                   [dict(r, backend="gloo") for r in good], [good[0], dict(good[1], gathered=[1])]):
        assert not gpu_check.compare_collectives(broken, 2, "nccl")[0]

    assert gpu_check.compare_throughput(60.0, 35.0, 2, gpu_check.JOBS_MIN_RATIO_PER_RANK)[0]
    assert not gpu_check.compare_throughput(60.0, 70.0, 2, gpu_check.JOBS_MIN_RATIO_PER_RANK)[0]
    assert not gpu_check.compare_throughput(60.0, 0.0, 1, gpu_check.JOBS_MIN_RATIO_PER_RANK)[0]


def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu_check.json").exists()
    assert gpu_check.main(["--device", "cuda"]) == 2


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # main() on the CPU sets one thread


def test_a_failed_check_exits_1_and_an_error_is_a_failed_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            one_thread: None) -> None:
    def broken(run: gpu_check.CheckRun) -> gpu_check.CheckResult:
        raise RuntimeError("exit 1: torchrun ...")

    monkeypatch.setenv("VOLBENCH_PROGRESS", "0")
    monkeypatch.setattr(gpu_check, "CHECKS", {
        "fine": lambda run: gpu_check.CheckResult("fine", True, "ok", {"value": float("nan")}),
        "skipped": lambda run: gpu_check.CheckResult("skipped", None, "one GPU: needs 2"),
        "broken": broken})
    report = tmp_path / "report.json"
    assert gpu_check.main(["--self_test", "--json", str(report), "--work_dir", str(tmp_path / "w")]) == 1
    checks = {c["name"]: c for c in json.loads(report.read_text())["checks"]}
    assert checks["fine"]["passed"] is True and checks["fine"]["measured"] == {"value": None}
    assert checks["skipped"]["passed"] is None
    assert checks["broken"]["passed"] is False and "RuntimeError" in checks["broken"]["detail"]
    assert gpu_check.main(["--self_test", "--checks", "fine", "skipped", "--json", str(report)]) == 0


def test_cpu_self_test_passes_and_its_results_fail_when_perturbed(tmp_path: Path) -> None:
    # a process of its own: the script pins the portable CPU kernels before torch loads (see its main)
    report_file, work = tmp_path / "gpu_check.json", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--self_test", "--checks",
                           "amp_bf16", "deterministic", "pam", "collectives_2", "--json", str(report_file),
                           "--work_dir", str(work)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    results = {c["name"]: c for c in report["checks"]}
    assert all(c["passed"] for c in results.values()) and report["passed"]
    assert results["deterministic"]["detail"] == "fp32: bit-equal"
    assert {"date_utc", "torch", "cuda", "device"} <= set(report["machine"])
    for check in results.values():
        assert {"name", "passed", "detail", "measured", "tolerance", "seconds"} <= set(check)

    amp = results["amp_bf16"]
    tol = gpu_check.AmpTolerance(**amp["tolerance"])
    fp32, bf16 = amp["measured"]["fp32"], amp["measured"]["bf16"]
    assert set(fp32) == set(gpu_check.MODELS) and gpu_check.compare_amp(fp32, bf16, tol)[0]
    dice = next(k for k, v in fp32["unet3d_xs"].items() if "dice" in k and gpu_check._finite(v))
    assert not gpu_check.compare_amp(fp32, _with(bf16, "unet3d_xs", dice, fp32["unet3d_xs"][dice] + 0.2), tol)[0]
    loss = bf16["retinanet"]["train_loss"]
    assert not gpu_check.compare_amp(fp32, _with(bf16, "retinanet", "train_loss", loss * 1.5), tol)[0]

    first, again = gpu_check.read_tables(work / "sweep_fp32"), gpu_check.read_tables(work / "sweep_fp32_again")
    assert gpu_check.compare_reruns(first, again, None)[0]
    again["per_case"].append(dict(again["per_case"][0]))  # a test case scored twice
    assert not gpu_check.compare_reruns(first, again, None)[0]

    pam = results["pam"]["measured"]
    more = {"train": pam["volbench_mb"]["train"] * 1.5}
    assert not gpu_check.compare_memory(more, pam["reference_mb"], gpu_check.PAM_RTOL)[0]
    reports = results["collectives_2"]["measured"]["reports"]
    assert gpu_check.compare_collectives(reports, 2, "gloo")[0]
    assert not gpu_check.compare_collectives(reports[:1], 2, "gloo")[0]
