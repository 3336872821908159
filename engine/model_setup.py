"""Per-model decisions made before training: modalities, dimensionality, patch size, build kwargs.

Every check here runs before any job trains, so a model that cannot run on the chosen data fails
with a clear message up front.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from dataio.sampling import DEFAULT_FOREGROUND_FRACTION, SampleRules
from models import ModelInfo, create_model, model_info
from utils.cpu_conv import apply_depth_split_convs

log = logging.getLogger(__name__)

CPU_CONV_FIELD = "cpu_conv_split"  # the config field (flag ``--no_cpu_conv_split`` sets it False) read below


def cpu_conv_wanted(config: Any) -> bool:
    """Whether models of this sweep get the batch-1 CPU convolution workaround (:mod:`utils.cpu_conv`): on
    unless ``config.deterministic`` or ``config.cpu_conv_split`` is False (a missing field counts as True)."""
    return bool(getattr(config, CPU_CONV_FIELD, True)) and not bool(getattr(config, "deterministic", False))


@dataclass(frozen=True)
class ModelSetup:
    """How one registry model is built and fed in this sweep (sizes in voxels)."""

    name: str
    info: ModelInfo
    modalities: tuple[str, ...]
    spatial_dims: int
    patch_size: tuple[int, ...]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    context_slices: int = 0  # 2D models: neighbouring slices on each side read as extra channels
    foreground_fraction: float | None = None  # --foreground_fraction; None: the model's own share
    cpu_conv: bool | None = None  # depth-split batch-1 CPU convs; None: on unless deterministic algorithms are on

    def build(self) -> nn.Module:
        """A freshly initialised model (seed the RNG first for reproducible weights).

        Its 3D convolutions take :func:`utils.cpu_conv.apply_depth_split_convs` (oneDNN instead of
        ``slow_conv3d`` for batch-1 CPU inputs; same parameters and ``state_dict``; decided per call, so a
        model moved to CUDA runs as before) when :attr:`cpu_conv` is True, or when it is None and
        ``torch.are_deterministic_algorithms_enabled()`` is False at build time. The split never runs while
        deterministic algorithms are enabled, whatever was decided here.
        """
        model = create_model(self.name, **self.model_kwargs)
        wanted = self.cpu_conv if self.cpu_conv is not None else not torch.are_deterministic_algorithms_enabled()
        if wanted:
            swapped = apply_depth_split_convs(model)
            log.debug("%s: %d convolutions take the depth split at batch 1 on the CPU", self.name, swapped)
        return model

    def sample_rules(self) -> SampleRules:
        """How this model's training samples are drawn: its foreground share and jitter, the context slices."""
        fraction = self.info.foreground_fraction if self.foreground_fraction is None else self.foreground_fraction
        return SampleRules(foreground_fraction=DEFAULT_FOREGROUND_FRACTION if fraction is None else float(fraction),
                           centre_jitter=self.info.centre_jitter if self.spatial_dims == 2 else 0,
                           context_slices=self.context_slices)

    @property
    def roi_size(self) -> tuple[int, ...]:
        """Sliding-window size: the patch (3D), or its in-plane part (2D)."""
        return self.patch_size

    @property
    def efficiency_input(self) -> tuple[int, ...]:
        """Input shape (batch 1) at which params/FLOPs/PAM/latency are measured."""
        return (1, self.model_kwargs["in_channels"], *self.patch_size)


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return int(math.ceil(value / multiple) * multiple)


def resolve_patch_size(info: ModelInfo, requested: tuple[int, ...] | None,
                       data_extent: tuple[int, int, int], tiny: bool = False) -> tuple[int, ...]:
    """Patch for this model: the requested (or the model's default, capped to the largest case extent),
    each axis rounded up to the divisibility of the build (``tiny``: the tiny build's,
    :meth:`ModelInfo.divisibility_for`). For 2D models the in-plane axes (D, H) are used."""
    if info.spatial_dims == 3:
        base = requested or tuple(min(p, e) for p, e in zip(info.default_patch_size, data_extent))
    else:
        default = info.default_patch_size[-2:]
        base = tuple(requested[:2]) if requested else tuple(min(p, e) for p, e in zip(default, data_extent[:2]))
    return tuple(round_up(int(b), info.divisibility_for(tiny)) for b in base)


@dataclass(frozen=True)
class InputChoices:
    """The user's choices of how models read the data (None: each model's own).

    Attributes:
        dim: ``--dim`` (``2d`` / ``3d``): must agree with each model's native dimensionality.
        context_slices: ``--context_slices``: neighbouring slices on each side that a 2D model reads as extra
            channels (``ModelInfo.context_slices`` when None); 3D models ignore it.
        foreground_fraction: ``--foreground_fraction``: share of training samples centred on a foreground voxel
            (``ModelInfo.foreground_fraction`` when None, else the sampler's 1/3).
        tiny: ``--tiny``: the model is its tiny build, so the patch is rounded to the tiny build's divisibility
            (:meth:`ModelInfo.divisibility_for`).
    """

    dim: str | None = None
    context_slices: int | None = None
    foreground_fraction: float | None = None
    tiny: bool = False


def setup_model(name: str, *, available_modalities: tuple[str, ...], n_classes: int,
                requested_patch: tuple[int, ...] | None, data_extent: tuple[int, int, int],
                inputs: InputChoices | None = None, overrides: dict[str, Any] | None = None,
                cpu_conv: bool | None = None) -> ModelSetup:
    """Validate that ``name`` can run on this data and decide how it is built.

    ``cpu_conv``: see :attr:`ModelSetup.cpu_conv` (pass :func:`cpu_conv_wanted` of the sweep's config).
    ``inputs``: ``--dim``, ``--context_slices`` and ``--tiny`` (:class:`InputChoices`).
    Input channels: the model's named modalities; a model with ``any_channels`` whose modalities the
    dataset lacks takes every channel of ``available_modalities`` instead (e.g. one CT channel).

    Raises:
        ValueError: the dataset lacks a modality the model needs, or ``--dim`` contradicts the model.
    """
    info = model_info(name)
    inputs = inputs or InputChoices()
    dim, context_slices = inputs.dim, inputs.context_slices
    modalities = tuple(info.modalities)
    missing = [m for m in modalities if m not in available_modalities]
    if missing and info.any_channels:  # not tied to MRI modalities: take every channel of the dataset
        modalities, missing = tuple(available_modalities), []
    if missing:
        raise ValueError(f"model {name!r} needs modalities {list(info.modalities)} but the dataset lacks "
                         f"{missing} (available: {list(available_modalities)})")
    if dim is not None and int(dim[0]) != info.spatial_dims:
        raise ValueError(f"model {name!r} is a {info.spatial_dims}D network; --dim {dim} does not apply to it "
                         f"(leave --dim unset to use each model's native dimensionality)")
    patch = resolve_patch_size(info, requested_patch, data_extent, inputs.tiny)
    context = 0 if info.spatial_dims == 3 else (info.context_slices if context_slices is None else int(context_slices))
    if context < 0:
        raise ValueError(f"--context_slices must be >= 0, got {context}")
    kwargs: dict[str, Any] = dict(in_channels=len(modalities) * (2 * context + 1), out_channels=n_classes)
    kwargs.update(overrides or {})
    if info.needs_fixed_input:  # e.g. UNETR: the network is built for exactly the window size
        kwargs["img_size"] = tuple(patch)
    return ModelSetup(name=name, info=info, modalities=modalities, spatial_dims=info.spatial_dims,
                      patch_size=patch, model_kwargs=kwargs, context_slices=context,
                      foreground_fraction=inputs.foreground_fraction, cpu_conv=cpu_conv)
