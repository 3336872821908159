"""Model registry in the style of timm / torchvision: one small registered builder per size.

A builder is a keyword-only function ``fn(*, in_channels, out_channels, **kwargs) -> nn.Module``
decorated with :func:`register_model`, which stores metadata (:class:`ModelInfo`) that the runner
reads without building the model.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch.nn as nn

MODALITY_ORDER: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class InputPreprocessing:
    """A model's own input preprocessing, applied to the dataset's preprocessed cases (``dataio.model_preprocess``).

    Attributes:
        target_spacing: voxel spacing in mm along the array axes 0, 1, 2 to resample to; ``None`` keeps the grid.
        intensity: ``none`` (keep) or ``zscore_nonzero`` (per channel, mean 0 / std 1 over the non-zero voxels).
    """

    target_spacing: tuple[float, float, float] | None = None
    intensity: str = "none"

    def params(self) -> dict[str, Any]:
        """The JSON form that keys the cache entries (and that checkpoints record)."""
        spacing = None if self.target_spacing is None else [float(s) for s in self.target_spacing]
        return {"target_spacing": spacing, "intensity": self.intensity}


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of one registered model, readable without building it.

    Attributes:
        name: registry name, e.g. ``"unet3d_s"``.
        family: file/family the entry belongs to, e.g. ``"unet3d"``.
        task: the model's kind of work, by name (e.g. ``segmentation``, ``detection``); not a closed list: the
            task registry (``engine.tasks``) says which task serves it, and refuses a kind that none serves.
        spatial_dims: 2 or 3 (native dimensionality of the network).
        modalities: input channels by name, in the order the model consumes them (for a model with
            ``any_channels``, the four BraTS modalities of its default build).
        any_channels: the model is not tied to MRI modalities (plain U-Nets, UNETR, Swin UNETR, Mobile
            UNETR): it gets its ``modalities`` when the dataset has all of them, else every channel of
            the dataset (e.g. one CT channel). True by default for entries that name no ``modalities``.
            Models that need their named modalities (dual-/quad-branch, modality comparisons) get
            exactly those or fail on a dataset without them.
        divisibility: every spatial input size must be a multiple of this.
        tiny_divisibility: the same for the ``tiny_kwargs`` build when it differs (``None``: ``divisibility``), e.g.
            mobile_unetr_3d downsamples by 64 but by 4 when tiny; :meth:`divisibility_for` picks.
        default_patch_size: training patch (voxels, D H W for 3D; H W for 2D).
        paper: reference the architecture follows.
        num_params: parameters of the default build (``in_channels=len(modalities)``, ``out_channels`` the
            default of its kind, :func:`default_out_channels`); ``None`` when not recorded. A test checks it against
            the built model.
        tiny_kwargs: overrides giving a tiny configuration for CPU tests.
        test_patch_size: spatial input size used with ``tiny_kwargs`` in tests.
        needs_fixed_input: the network is built for one input size (UNETR: ``img_size``), so the
            builder receives ``img_size`` and inference uses windows of exactly that size.
        returns_attention: ``forward(x, return_attention=True)`` also returns modality weights.
        context_slices: for 2.5D models, adjacent slices read on each side as extra channels.
        foreground_fraction: share of training samples centred on a foreground voxel; None: the sampler's 1/3
            (``dataio.sampling``); 1.0 trains on positive samples only (the LUNA chapter's positive slices).
        centre_jitter: 2D models: in-plane jitter of a foreground centre, voxels (the LUNA chapter's random
            64 x 64 crops of 96 x 96 chunks: 16).
        train_defaults: trainer settings this model trains with unless the user sets them on the command
            line (names of ``TrainerSettings`` fields, e.g. RetinaNet's SGD: ``optimizer``, ``lr``,
            ``momentum``, ``weight_decay``, ``scheduler``, ``lr_step_size``).
        tiny_train_defaults: trainer settings of the ``tiny_kwargs`` build over ``train_defaults`` (e.g. DetSeg3D's
            lr 1e-3: the seed's 1e-4 is meant for 100 epochs of the default build, and the tiny build does not learn
            its masks with it in a CPU budget; benchmarks/RESULTS.md); the user's flags still win.
        flag_kwargs: the sweep flags this model takes, flag name -> builder keyword (e.g. RetinaNet's
            ``anchor_shapes``); a flag's value reaches the builder whenever it is set (not None), so a flag with
            a default value (``min_lesion_size``) always does. Unset flags leave the builder's own default.
        preprocessing: the model's own input preprocessing on top of the dataset's (:class:`InputPreprocessing`,
            e.g. SAM-Med3D's 1.5 mm isotropic voxels and z-normalised foreground), cached under its own key and
            used in training, validation, testing and re-evaluation; ``None`` (default): the dataset's, shared.
        scratch_flags: for a model whose recipe is a fine-tuning recipe (meant for released weights), the flags
            a run from scratch needs to learn (e.g. ``--lr 1e-3 --grad_accum 1``); the sweep warns when the model
            starts without a checkpoint and the recipe's lr is in force. Empty: the recipe suits both.
        spacing_kwarg: the builder keyword that receives the dataset's voxel spacing (mm per array axis, the
            median over the sweep's cases) unless ``--model_kwargs`` gives it (DetSeg3D plans its detector grid
            from it); empty: the builder is not told the spacing.
    """

    name: str
    family: str
    task: str = "segmentation"
    spatial_dims: int = 3
    modalities: tuple[str, ...] = MODALITY_ORDER
    divisibility: int = 16
    tiny_divisibility: int | None = None
    default_patch_size: tuple[int, ...] = (128, 128, 128)
    paper: str = ""
    num_params: int | None = None
    tiny_kwargs: dict[str, Any] = field(default_factory=dict)
    test_patch_size: tuple[int, ...] = (32, 32, 32)
    needs_fixed_input: bool = False
    returns_attention: bool = False
    context_slices: int = 0
    foreground_fraction: float | None = None
    centre_jitter: int = 0
    any_channels: bool = False
    train_defaults: dict[str, Any] = field(default_factory=dict)
    tiny_train_defaults: dict[str, Any] = field(default_factory=dict)
    flag_kwargs: dict[str, str] = field(default_factory=dict)
    preprocessing: "InputPreprocessing | None" = None
    scratch_flags: str = ""
    spacing_kwarg: str = ""

    def train_defaults_for(self, tiny: bool) -> dict[str, Any]:
        """The recipe of the tiny build (``tiny``: ``train_defaults`` updated by ``tiny_train_defaults``) or of the
        default one."""
        return dict(self.train_defaults, **self.tiny_train_defaults) if tiny else dict(self.train_defaults)

    def divisibility_for(self, tiny: bool) -> int:
        """Divisibility of the tiny build (``tiny``) or of the default one."""
        return self.tiny_divisibility if tiny and self.tiny_divisibility is not None else self.divisibility

    @property
    def in_channels(self) -> int:
        """Default number of input channels: one per modality (times slices for 2.5D)."""
        return len(self.modalities) * (2 * self.context_slices + 1)


_BUILDERS: dict[str, ModelBuilder] = {}
_INFO: dict[str, ModelInfo] = {}
_DEFAULT_OUTPUTS: dict[str, int] = {}  # model kind -> create_model's default out_channels, set by the task registry


def register_model(*, family: str, **meta: Any) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``fn`` under its own name with :class:`ModelInfo` metadata.

    Raises:
        ValueError: if the name is already registered or ``spatial_dims`` is not 2 or 3.
    """

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(
                f"model {name!r} is already registered (by {_BUILDERS[name].__module__}); "
                f"names must be unique"
            )
        info = ModelInfo(name=name, family=family, **dict(dict(any_channels="modalities" not in meta), **meta))
        if info.spatial_dims not in (2, 3):
            raise ValueError(f"model {name!r}: spatial_dims must be 2 or 3, got {info.spatial_dims}")
        _BUILDERS[name] = fn
        _INFO[name] = info
        return fn

    return decorator


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_BUILDERS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown model {name!r}{hint} (--list_models or list_models() shows all {len(_BUILDERS)} names)")


def list_models(include: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
    """Sorted registered names matching any fnmatch pattern in ``include`` and none in ``exclude``."""
    inc = [include] if isinstance(include, str) else list(include)
    exc = [exclude] if isinstance(exclude, str) else list(exclude)
    names = {n for n in _BUILDERS for p in inc if fnmatch.fnmatchcase(n, p)}
    names = {n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exc)}
    return sorted(names)


def resolve_model_names(patterns: Iterable[str]) -> list[str]:
    """Expand CLI names/wildcards into registry names, keeping the user's order, without repeats.

    Raises:
        ValueError: for a plain name that is not registered or a wildcard matching nothing.
    """
    resolved: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = list_models(pattern)
            if not matches:
                raise ValueError(f"--models pattern {pattern!r} matches no registered model")
        else:
            if pattern not in _BUILDERS:
                raise _unknown(pattern)
            matches = [pattern]
        resolved.extend(m for m in matches if m not in resolved)
    return resolved


def model_info(name: str) -> ModelInfo:
    """Metadata of ``name``; raises ``ValueError`` with close names when unknown."""
    if name not in _INFO:
        raise _unknown(name)
    return _INFO[name]


def set_default_outputs(kind: str, out_channels: int) -> None:
    """Make ``out_channels`` :func:`create_model`'s default for models of ``kind``.

    The task registry (``engine.tasks``) calls this for the kinds its tasks serve, so models/ names no kind.

    Raises:
        ValueError: ``kind`` already has another default, or ``out_channels`` < 1.
    """
    if out_channels < 1:
        raise ValueError(f"default out_channels of {kind!r} models must be >= 1, got {out_channels}")
    if _DEFAULT_OUTPUTS.get(kind, out_channels) != out_channels:
        raise ValueError(f"{kind!r} models already default to out_channels={_DEFAULT_OUTPUTS[kind]}, "
                         f"not {out_channels}")
    _DEFAULT_OUTPUTS[kind] = out_channels


def default_out_channels(kind: str) -> int | None:
    """:func:`create_model`'s default ``out_channels`` for models of ``kind``; None until a task sets one."""
    return _DEFAULT_OUTPUTS.get(kind)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build registered model ``name``; ``kwargs`` override the entry's defaults.

    ``in_channels`` defaults to the entry's channel count, ``out_channels`` to the default of the model's kind
    (:func:`default_out_channels`: BraTS's 4 labels for segmentation, one foreground class for the lesion
    detectors), which the task registry sets when ``engine.tasks`` is imported.

    Raises:
        ValueError: unknown name, or no ``out_channels`` given and none set for the model's kind.
    """
    info = model_info(name)
    kwargs.setdefault("in_channels", info.in_channels)
    if "out_channels" not in kwargs:
        default = default_out_channels(info.task)
        if default is None:
            raise ValueError(f"create_model({name!r}): no default out_channels for {info.task!r} models; pass "
                             "out_channels, or import engine.tasks, whose task registry sets the default of each "
                             "kind a task serves")
        kwargs["out_channels"] = default
    return _BUILDERS[name](**kwargs)
