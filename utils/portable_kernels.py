"""Portable CPU kernels for ``--deterministic``: the same bits on any x86-64 machine with AVX2.

PyTorch's ATen dispatch, oneDNN's JIT and MKL each pick code paths by the CPU's instruction set (AVX2 vs AVX-512
sums split differently), so a deterministic run on an AVX-512 machine and one on an AVX2 machine differ in the
last bits. Pinning all three to AVX2 (``PORTABLE_KERNELS``) makes a ``--deterministic`` CPU run repeat bit for bit
across such machines, for the same thread count and library versions. The variables are read when torch loads, so
:func:`pin_for_argv` runs before torch is imported (at the top of ``integrated_experiment.py``; torchrun starts each
rank through it). Values the user set are kept; nothing is pinned on a CPU without AVX2 (it would crash) or off
x86-64. This module must not import torch.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
PINNED_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports once pinned
FLAG = "--deterministic"


def cpu_has_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU lists the ``avx2`` flag (Linux ``/proc/cpuinfo``; False where it cannot be read)."""
    try:
        return any(line.startswith("flags") and " avx2" in line for line in cpuinfo.read_text().splitlines())
    except OSError:
        return False


def pin_portable_kernels(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set ``PORTABLE_KERNELS`` in ``environ`` (default ``os.environ``) where unset; returns what was set ({} when
    the machine is not x86-64 with AVX2, or torch is already imported: then it would have no effect)."""
    env = os.environ if environ is None else environ
    if platform.machine().lower() not in ("x86_64", "amd64") or not cpu_has_avx2():
        return {}
    if "torch" in sys.modules and environ is None:
        logger.warning("--deterministic: torch was imported before the CPU kernels could be pinned; this run uses "
                       "the machine's own kernels")
        return {}
    added = {k: v for k, v in PORTABLE_KERNELS.items() if k not in env}
    env.update(added)
    return added


def pin_for_argv(argv: Sequence[str]) -> dict[str, str]:
    """:func:`pin_portable_kernels` when ``argv`` holds ``--deterministic`` (checked before argparse runs)."""
    return pin_portable_kernels() if FLAG in argv else {}
