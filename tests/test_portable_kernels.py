"""``--deterministic`` pins portable CPU kernels before torch loads (utils.portable_kernels): checked in fresh
processes, since the variables only act when torch is imported."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from utils.portable_kernels import PINNED_CAPABILITY, PORTABLE_KERNELS, cpu_has_avx2, pin_portable_kernels

ROOT = Path(__file__).resolve().parent.parent
X86_AVX2 = platform.machine().lower() in ("x86_64", "amd64") and cpu_has_avx2()
PROBE = ("import sys; from utils.portable_kernels import pin_for_argv; pin_for_argv(sys.argv[1:]); "
         "import torch; print(torch.backends.cpu.get_cpu_capability())")


def capability(*flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_KERNELS}
    done = subprocess.run([sys.executable, "-c", PROBE, *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not X86_AVX2, reason="portable kernels are pinned on x86-64 with AVX2 only")
def test_deterministic_pins_avx2_kernels_before_torch_loads() -> None:
    assert capability("--deterministic") == PINNED_CAPABILITY
    # the main job pins first thing: before its first project import (which loads torch)
    script = (ROOT / "integrated_experiment.py").read_text()
    assert script.index("pin_for_argv(sys.argv[1:])") < script.index("from engine")


def test_user_values_are_kept_and_nothing_is_pinned_without_avx2(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"MKL_CBWR": "COMPATIBLE"}
    added = pin_portable_kernels(env)
    if X86_AVX2:
        assert env["MKL_CBWR"] == "COMPATIBLE" and set(added) == {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"}
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx\n")
    assert not cpu_has_avx2(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n")
    assert cpu_has_avx2(cpuinfo)
    monkeypatch.setattr("utils.portable_kernels.cpu_has_avx2", lambda: False)
    assert pin_portable_kernels({}) == {}
