"""Interactive evaluation of a promptable model: simulated clicks, one at a time, on one target of one case; and
the simulated clicks of click training.

Evaluation procedure (per labelled case and target; the binary lesion on the lesion track, each of WT, TC and ET
on BraTS, every target a binary mask):

1. The first click comes from the ground truth (``engine.tasks.clicks.next_click`` with no previous mask).
2. The first window (``roi_size`` voxels) is centred on the first click (shifted to lie inside the volume;
   zero-padded where the volume is smaller), never on the label's centre, which would use the ground truth to
   choose the field of view. Each window is encoded once (``encode``) and its embedding reused for every click.
3. Click k: all clicks so far that fall inside a window (window voxel coordinates along array axes 0, 1, 2;
   1 positive, 0 negative) go to ``decode`` together with that window's previous low-resolution logits as the
   mask prompt (models that take one), as SAM-Med3D's current evaluation does. A window is decoded when it is
   opened and again whenever a new click falls inside it.
4. Merge: the case's logits are the mean of the latest logits of the windows covering each voxel (overlaps are
   averaged); the mask is ``mean > 0`` (sigmoid > 0.5) where some window covers the voxel, background elsewhere.
5. Window extension: while the mask touches a face of a window that is not the volume's border, a window shifted
   by half a window (``roi // 2`` voxels) across that face (then shifted back inside the volume) is opened, unless
   an open window has exactly that place, up to ``ClickPlan.max_windows`` windows per target (default 8, the
   first included; windows are checked in opening order, faces axis 0, 1, 2, low face before high face). A new
   window's prompts are the clicks inside it; one that holds no click gets a positive seed point taken from the
   prediction, not the ground truth (``next_click(mask, mode="center")`` inside the window: the deepest voxel of
   the largest predicted component there), used until a click falls inside it; its first mask prompt (models that
   take one) is the merged logits over the window (0 where nothing was predicted yet, SAM-Med3D's empty prompt)
   pooled to the low-resolution size. Then step 4 again. A window is never closed.
6. The next click is drawn from the errors (FN u FP) of the mask against the target INSIDE the windows (a click
   outside every window could not reach the model); with no error left the mask stays as it is.

The masks after the click counts asked for are returned; metrics are computed on the whole case, so a target
that extends beyond the windows keeps its misses there. With one window (a prediction that stays inside it, or
a volume no larger than the window) this is exactly the single-window procedure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.inference import InferenceSettings, case_tensor
from engine.tasks.clicks import Click, click_rng, next_click

MAX_WINDOWS = 8  # windows per target, the first one included


@dataclass(frozen=True)
class ClickPlan:
    """What one interactive evaluation does: the click counts reported, the click rule, the run seed, and the
    most windows per target (the first plus extensions)."""

    counts: tuple[int, ...]
    mode: str
    seed: int
    max_windows: int = MAX_WINDOWS


def window_slices(centre: tuple[int, ...], roi: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Start-inclusive window of ``roi`` voxels centred on ``centre`` and shifted to lie inside ``shape`` (a
    volume axis shorter than the window starts at 0; the caller zero-pads)."""
    starts = [min(max(int(c) - r // 2, 0), max(s - r, 0)) for c, r, s in zip(centre, roi, shape)]
    return tuple(slice(a, a + r) for a, r in zip(starts, roi))


def _window_image(image: torch.Tensor, window: tuple[slice, ...], roi: tuple[int, ...]) -> torch.Tensor:
    """(C, *roi) crop of ``image`` (C, D, H, W), zero-padded past the volume's end."""
    out = torch.zeros((image.shape[0], *roi), dtype=image.dtype)
    crop = image[(slice(None), *window)]
    out[(slice(None), *[slice(0, n) for n in crop.shape[1:]])] = crop
    return out


def _points(clicks: list[Click], window: tuple[slice, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    coords = [[p - w.start for p, w in zip(c.position, window)] for c in clicks]
    return (torch.tensor([coords], dtype=torch.float32, device=device),
            torch.tensor([[int(c.positive) for c in clicks]], dtype=torch.int64, device=device))


@dataclass
class _Window:
    """One open window: its place (``slices``, roi-sized, may pass the volume's end; ``inside``: clipped), its
    embedding, its latest logits (window coordinates) and low-resolution logits, and its seed point."""

    slices: tuple[slice, ...]
    inside: tuple[slice, ...]
    embedding: Any
    logits: np.ndarray | None = None
    low_res: torch.Tensor | None = None
    seed: Click | None = None

    def holds(self, click: Click) -> bool:
        return all(s.start <= p < s.stop for p, s in zip(click.position, self.inside))

    def crop(self) -> tuple[slice, ...]:
        """Where ``inside`` lies in the window's own coordinates."""
        return tuple(slice(0, s.stop - s.start) for s in self.inside)


class _Session:
    """The open windows of one target and their merged prediction (module docstring, steps 2-5)."""

    def __init__(self, net: nn.Module, image: torch.Tensor, shape: tuple[int, ...], settings: InferenceSettings,
                 spacing: tuple[float, ...], max_windows: int) -> None:
        self.net, self.image, self.shape, self.settings = net, image, shape, settings
        self.roi = tuple(int(r) for r in settings.roi_size)
        self.spacing, self.max_windows = spacing, max_windows
        self.windows: list[_Window] = []
        self.clicks: list[Click] = []
        self.merged = np.zeros(shape, dtype=np.float32)
        self.covered = np.zeros(shape, dtype=bool)

    @property
    def mask(self) -> np.ndarray:
        return self.covered & (self.merged > 0)

    def open(self, slices: tuple[slice, ...]) -> _Window:
        """Encode a new window at ``slices`` (no decoding yet)."""
        inside = tuple(slice(w.start, min(w.stop, n)) for w, n in zip(slices, self.shape))
        crop = _window_image(self.image, slices, self.roi)[None].to(self.settings.device)
        window = _Window(slices, inside, self.net.encode(crop))
        self.windows.append(window)
        return window

    def decode(self, window: _Window, mask_prompt: torch.Tensor | None = None) -> None:
        """Decode ``window`` with the clicks inside it (else its seed) and its previous low-res logits (else
        ``mask_prompt``) for models that take a mask prompt."""
        clicks = [c for c in self.clicks if window.holds(c)] or ([window.seed] if window.seed else [])
        points, labels = _points(clicks, window.slices, self.settings.device)
        previous = window.low_res if window.low_res is not None else mask_prompt
        out = self.net.decode(window.embedding, points, labels, previous if self.net.accepts_mask_prompt else None)
        window.low_res = out.low_res
        window.logits = out.logits[0, 0].float().cpu().numpy()

    def merge(self) -> None:
        """Step 4: the mean logits of the windows covering each voxel."""
        total = np.zeros(self.shape, dtype=np.float32)
        count = np.zeros(self.shape, dtype=np.int32)
        for window in self.windows:
            if window.logits is not None:
                total[window.inside] += window.logits[window.crop()]
                count[window.inside] += 1
        self.covered = count > 0
        self.merged = np.where(self.covered, total / np.maximum(count, 1), 0.0).astype(np.float32)

    def add_click(self, click: Click) -> None:
        """Record ``click``, re-decode the windows that hold it, merge, extend."""
        self.clicks.append(click)
        for window in self.windows:
            if window.holds(click):
                self.decode(window)
        self.merge()
        self.extend()

    def extend(self) -> None:
        """Step 5: open windows while the mask touches an inner face, up to ``max_windows``."""
        while len(self.windows) < self.max_windows:
            slices = self._next_place()
            if slices is None:
                return
            prompt = self._mask_prompt(slices)
            window = self.open(slices)
            if not any(window.holds(c) for c in self.clicks):
                local = next_click(self.mask[window.inside], None, mode="center", spacing=self.spacing)
                if local is None:  # not reached: the face that asked for the window lies inside it
                    local = Click(tuple((s.stop - s.start) // 2 for s in window.inside), True)  # type: ignore[arg-type]
                window.seed = Click(tuple(p + s.start for p, s in zip(local.position, window.inside)), True)
            self.decode(window, prompt)
            self.merge()

    def _next_place(self) -> tuple[slice, ...] | None:
        """The first window place (opening order, faces axis 0-2, low then high) the mask asks for, or None."""
        mask, taken = self.mask, [w.slices for w in self.windows]  # slices are unhashable before Python 3.12
        for window in self.windows:
            for axis in range(3):
                for side in (-1, 1):
                    face = self._inner_face(window, axis, side)
                    if face is None or not mask[face].any():
                        continue
                    start = window.slices[axis].start + side * (self.roi[axis] // 2)
                    start = min(max(start, 0), max(self.shape[axis] - self.roi[axis], 0))
                    place = tuple(slice(start, start + self.roi[axis]) if a == axis else s
                                  for a, s in enumerate(window.slices))
                    if place not in taken:
                        return place
        return None

    def _inner_face(self, window: _Window, axis: int, side: int) -> tuple[slice, ...] | None:
        """The one-voxel slab of ``window``'s face (``side`` -1: low, 1: high) on ``axis``; None at the volume's
        border."""
        span = window.slices[axis]
        if (side < 0 and span.start <= 0) or (side > 0 and span.stop >= self.shape[axis]):
            return None
        index = span.start if side < 0 else span.stop - 1
        return tuple(slice(index, index + 1) if a == axis else s for a, s in enumerate(window.inside))

    def _mask_prompt(self, slices: tuple[slice, ...]) -> torch.Tensor | None:
        """The merged logits over ``slices`` (0 outside every window and the volume), pooled to the first window's
        low-resolution size; None for models without a mask prompt."""
        first = self.windows[0].low_res
        if not self.net.accepts_mask_prompt or first is None:
            return None
        crop = torch.from_numpy(self.merged)[None]
        full = _window_image(crop, slices, self.roi)[None].to(first.device, first.dtype)
        return F.interpolate(full, size=tuple(first.shape[2:]), mode="area")

    def click_region(self) -> tuple[tuple[slice, ...], np.ndarray]:
        """The bounding box of the windows' union and the union inside it (where the next click may fall)."""
        box = tuple(slice(min(w.inside[a].start for w in self.windows), max(w.inside[a].stop for w in self.windows))
                    for a in range(3))
        return box, self.covered[box]


@torch.no_grad()
def click_masks(model: nn.Module, case: Any, target: np.ndarray, settings: InferenceSettings,
                plan: ClickPlan, name: str) -> dict[int, np.ndarray]:
    """Masks (bool, the case's shape) after each click count of ``plan.counts``; {} for an empty target.
    ``name`` (the target's name) enters the click generator's seed with the case id."""
    target = np.asarray(target, dtype=bool)
    if not target.any():
        return {}
    net = getattr(model, "module", model)
    rng = click_rng(plan.seed, case.case_id, name)
    spacing = tuple(float(s) for s in case.spacing)
    first = next_click(target, None, mode=plan.mode, rng=rng, spacing=spacing)
    was_training = net.training
    net.eval()
    try:
        session = _Session(net, case_tensor(case, settings.modalities), target.shape, settings, spacing,
                           max(1, int(plan.max_windows)))
        session.open(window_slices(first.position, session.roi, target.shape))
        session.add_click(first)
        out: dict[int, np.ndarray] = {}
        for k in range(1, max(plan.counts) + 1):
            if k > 1:
                box, covered = session.click_region()
                local = next_click(target[box] & covered, session.mask[box], mode=plan.mode, rng=rng, spacing=spacing)
                if local is not None:
                    session.add_click(Click(tuple(p + b.start for p, b in zip(local.position, box)), local.positive))
            if k in plan.counts:
                out[k] = session.mask.copy()
        return out
    finally:
        net.train(was_training)


class TrainingClicks:
    """Click training's prompter (:meth:`models.promptable.PromptableNet.prompted`): ``count`` clicks per sample,
    each from the previous prediction's errors against ``targets`` (bool (B, D, H, W), window coordinates) by the
    ``random`` rule (the first from the target), drawn from ``rng``; every call returns all clicks so far. A
    sample with nothing to click (an empty target and no false positive) gets a padding point (label -1)."""

    def __init__(self, targets: np.ndarray, count: int, rng: np.random.Generator, device: torch.device) -> None:
        self.targets = np.asarray(targets, dtype=bool)
        self.count = int(count)
        self.rng = rng
        self.device = device
        self.points: list[list[list[int]]] = [[] for _ in range(self.targets.shape[0])]
        self.labels: list[list[int]] = [[] for _ in range(self.targets.shape[0])]

    def __call__(self, previous: Any) -> tuple[torch.Tensor, torch.Tensor]:
        masks = None if previous is None else (previous.logits[:, 0] > 0).detach().cpu().numpy()
        for b, target in enumerate(self.targets):
            click = next_click(target, None if masks is None else masks[b], mode="random", rng=self.rng)
            self.points[b].append(list(click.position) if click else [0, 0, 0])
            self.labels[b].append(int(click.positive) if click else -1)
        return (torch.tensor(self.points, dtype=torch.float32, device=self.device),
                torch.tensor(self.labels, dtype=torch.int64, device=self.device))
