"""CPU activation-memory trackers: tensors saved for backward, and live activations during a forward.

Both attribute bytes to the innermost *stage* that is running (see :class:`StageStack`), so one pass
gives the whole-model number and the stage-wise split. Bytes are storage bytes, de-duplicated by
``untyped_storage().data_ptr()`` (views of one buffer count once); the model's parameters and buffers
and the input are never counted. Allocator rounding and operator-internal workspaces are not seen.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .efficiency_common import storage_key

OUTSIDE = "<other>"  # stage name of bytes created outside every stage (functional ops in a parent forward)


class StageStack:
    """Which stage is running: forward-pre/forward hooks push and pop stage names (innermost last)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.order: list[str] = []  # stages in the order they first ran
        self.on_enter: list[Any] = []  # callbacks(name) run on each push

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else OUTSIDE

    def push(self, name: str) -> None:
        if name not in self.order:
            self.order.append(name)
        self.stack.append(name)
        for fn in self.on_enter:
            fn(name)

    def pop(self, name: str) -> None:
        if name in self.stack:  # remove the innermost entry of this name
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(name)]

    @contextmanager
    def hooked(self, stages: dict[str, nn.Module]) -> Iterator["StageStack"]:
        """Register push/pop hooks on each stage module for the duration of the block."""
        handles = []
        for name, module in stages.items():
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self.push(n)))
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: self.pop(n), always_call=True))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


class SavedTensorRecorder:
    """Bytes of distinct tensors autograd saves for backward, per stage (``saved_tensors_hooks``)."""

    def __init__(self, excluded: set[int], stages: StageStack | None = None) -> None:
        self.excluded = set(excluded)
        self.stages = stages or StageStack()
        self.seen: set[int] = set()
        self.by_stage: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_stage.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = storage_key(t)
        if ptr not in self.excluded and ptr not in self.seen:
            self.seen.add(ptr)  # first stage that saves a storage owns it
            stage = self.stages.current
            self.by_stage[stage] = self.by_stage.get(stage, 0) + nbytes
        return t

    @contextmanager
    def recording(self) -> Iterator["SavedTensorRecorder"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


class LiveActivationTracker(TorchDispatchMode):
    """Peak bytes of live activation storages during a forward, overall and per running stage.

    Each op output's storage is counted when first seen and released by ``weakref.finalize`` when the
    storage is freed; in-place outputs and views share a storage and count once.
    """

    def __init__(self, excluded: set[int], stages: StageStack | None = None) -> None:
        super().__init__()
        self.excluded = set(excluded)
        self.stages = stages or StageStack()
        self.stages.on_enter.append(self._enter)
        self.live: dict[int, int] = {}
        self.live_bytes = 0
        self.peak = 0
        self.stage_peak: dict[str, int] = {}
        self._finalizers: list[weakref.finalize] = []

    def _enter(self, name: str) -> None:
        self.stage_peak[name] = max(self.stage_peak.get(name, 0), self.live_bytes)

    def _release(self, ptr: int) -> None:
        self.live_bytes -= self.live.pop(ptr, 0)

    def _track(self, t: torch.Tensor) -> None:
        ptr, nbytes = storage_key(t)
        if ptr in self.excluded or ptr in self.live or nbytes == 0:
            return
        self.live[ptr] = nbytes
        self.live_bytes += nbytes
        try:
            self._finalizers.append(weakref.finalize(t.untyped_storage(), self._release, ptr))
        except (RuntimeError, NotImplementedError, TypeError):  # no weak-referencable storage: never freed
            pass
        self.peak = max(self.peak, self.live_bytes)
        for name in self.stages.stack:
            self.stage_peak[name] = max(self.stage_peak.get(name, 0), self.live_bytes)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self._track(leaf)
        return out

    def __exit__(self, *exc: Any) -> Any:
        result = super().__exit__(*exc)
        for f in self._finalizers:  # storages still alive (the output) must not call back later
            f.detach()
        self._finalizers.clear()
        return result
