"""Fine-tuning options for models that declare the parts they need (promptable models: ``models.promptable``).

- ``--freeze_encoder [MODEL ...]``: the named models' image encoder (``encoder_parameters()``) gets no gradient
  (``requires_grad`` False) and stays in eval mode while the rest trains (a forward pre-hook puts the encoder's
  modules back into eval mode before every forward pass, whatever ``model.train()`` did); a named model without
  a declared encoder is an error.
- ``--lr_decoder LR``: the learning rate of every parameter outside the encoder (the encoder keeps ``--lr``);
  models without a declared encoder train everything at ``--lr``.
- ``--gradient_checkpointing [MODEL ...]`` (alias ``--use_gradient_checkpointing``, the seed tool's name): the
  named models (none named: every model of the sweep) recompute their encoder's activations in the backward pass
  (``set_gradient_checkpointing(True)``); a model that does not support it is an error.
- ``--train_prompts clicks`` (``engine.tasks.promptable`` trains with it): applies to the models that take prompts
  (their ``prompted`` method, ``models.promptable``); automatic models of the sweep ignore it with a warning that
  names them; a sweep with no model that takes prompts is an error.
- Export: a model with ``encoder_export_name`` (SAM-Med3D: ``sam_encoder``) also gets its best checkpoint's
  image encoder alone, ``{checkpoint stem}_{name}.pth`` holding ``{"image_encoder_state_dict": ...}`` (read with
  ``torch.load(weights_only=True)``), as the seed tool exports it for downstream use.

All of these work with gradient accumulation, clipping, the schedulers and early stopping unchanged: they only
change which parameters get gradients and at which learning rate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn

from utils.atomic import atomic_path

log = logging.getLogger(__name__)


def named(flag_value: list[str] | None, model: str) -> bool:
    """Whether a ``[MODEL ...]`` flag applies to ``model``: given with no names (every model) or naming it."""
    return flag_value is not None and (not flag_value or model in flag_value)


def _encoder_modules(model: nn.Module) -> list[nn.Module]:
    names = {p.rstrip(".") for p in getattr(model, "encoder_prefixes", ())}
    return [m for name, m in model.named_modules() if name in names]


def freeze_encoder(model: nn.Module, name: str) -> int:
    """Freeze ``model``'s declared encoder (see the module docstring); returns the frozen parameter count.

    Raises:
        ValueError: the model declares no encoder.
    """
    if not hasattr(model, "encoder_parameters") or not getattr(model, "encoder_prefixes", ()):
        raise ValueError(f"--freeze_encoder {name}: model {name!r} declares no encoder (only models with "
                         "encoder_prefixes, e.g. sam_med3d and vista3d, can freeze one)")
    frozen = 0
    for param in model.encoder_parameters():
        param.requires_grad_(False)
        frozen += param.numel()
    modules = _encoder_modules(model)

    def keep_eval(module: nn.Module, args: Any) -> None:
        for encoder in modules:
            encoder.eval()

    model.register_forward_pre_hook(keep_eval)
    log.info("%s: encoder frozen (%d parameters, eval mode)", name, frozen)
    return frozen


def enable_gradient_checkpointing(model: nn.Module, name: str) -> None:
    """``model.set_gradient_checkpointing(True)``; ``ValueError`` naming the model when it does not support it."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"--gradient_checkpointing: model {name!r} does not support gradient checkpointing "
                         "(promptable models such as sam_med3d and vista3d do); name the models that do")
    model.set_gradient_checkpointing(True)


def parameter_groups(model: nn.Module, lr_decoder: float | None) -> Iterable[Any]:
    """The optimiser's parameters: all trainable ones, or with ``lr_decoder`` two groups, the encoder's (at the
    optimiser's ``lr``) and the rest (at ``lr_decoder``); frozen parameters are left out."""
    bare = getattr(model, "module", model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if lr_decoder is None or not hasattr(bare, "encoder_parameters"):
        return trainable
    encoder = {id(p) for p in bare.encoder_parameters()}
    groups = [{"params": [p for p in trainable if id(p) in encoder]},
              {"params": [p for p in trainable if id(p) not in encoder], "lr": float(lr_decoder)}]
    return [g for g in groups if g["params"]]


def export_encoder(model: nn.Module, checkpoint: Path) -> Path | None:
    """Write the encoder of a model with ``encoder_export_name`` beside ``checkpoint``; None for other models."""
    bare = getattr(model, "module", model)
    export = getattr(bare, "encoder_export_name", None)
    if not export:
        return None
    prefixes = tuple(getattr(bare, "encoder_prefixes", ()))
    state = {k[len(p):]: v.detach().cpu() for k, v in bare.state_dict().items() for p in prefixes if k.startswith(p)}
    path = Path(checkpoint).with_name(f"{Path(checkpoint).stem}_{export}.pth")
    with atomic_path(path) as tmp:
        torch.save({"image_encoder_state_dict": state}, tmp)
    return path


def check_fine_tuning(models: list[str], freeze: list[str] | None, checkpointing: list[str] | None,
                      build: Any) -> None:
    """Refuse, before any job trains, a ``--freeze_encoder`` / ``--gradient_checkpointing`` name that is not a model
    of the sweep, or a model that lacks what the flag needs; ``build(name)`` gives a model (e.g. on the meta
    device) to inspect."""
    for flag, value in (("--freeze_encoder", freeze), ("--gradient_checkpointing", checkpointing)):
        unknown = [m for m in value or [] if m not in models]
        if unknown:
            raise ValueError(f"{flag} names {unknown}, which are not models of this sweep ({', '.join(models)})")
    for name in models:
        if not (named(freeze, name) or named(checkpointing, name)):
            continue
        model = build(name)
        if named(freeze, name) and not getattr(model, "encoder_prefixes", ()):
            raise ValueError(f"--freeze_encoder {name}: model {name!r} declares no encoder (only models with "
                             "encoder_prefixes, e.g. sam_med3d and vista3d, can freeze one)")
        if named(checkpointing, name) and not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"--gradient_checkpointing: model {name!r} does not support gradient checkpointing "
                             "(promptable models such as sam_med3d and vista3d do); name the models that do")


def check_train_prompts(models: list[str], train_prompts: str | None, build: Any) -> list[str]:
    """``--train_prompts``: returns the models that ignore it (automatic models, with a warning); ``build(name)``
    gives a model to inspect (e.g. on the meta device).

    Raises:
        ValueError: clicks were asked for and no model of the sweep takes prompts.
    """
    if train_prompts in (None, "none"):
        return []
    ignoring = [name for name in models if not callable(getattr(build(name), "prompted", None))]
    if len(ignoring) == len(models):
        raise ValueError(f"--train_prompts {train_prompts}: no model of this sweep takes prompts "
                         f"({', '.join(models)}); it applies to promptable models such as sam_med3d and vista3d")
    if ignoring:
        log.warning("--train_prompts %s applies to promptable models only; %s train prompt-free as usual",
                    train_prompts, ", ".join(ignoring))
    return ignoring
