"""Promptable segmentation (SAM-Med3D, VISTA3D): prompt-free like any model, plus interactive results per click.

- Training (``--train_prompts none``, the seed tool's mode and the default): prompt-free, no points and no mask
  prompt, one mask; the model's forward with ``with_iou=True`` gives two-class logits ``[0, z]`` and its IoU
  prediction, and the model's loss (``sam_med3d``: Dice + focal + IoU + IoU-head MSE, :mod:`losses.sam`) takes
  both. Other losses get the logits only.
- Prompt-free prediction: the model's forward over sliding windows, like every segmentation model: the ordinary
  columns (``dice_<region>``, HD95, precision, recall, the lesion metrics), which compare like for like with
  automatic models in every table, statistic and ranking.
- Interactive evaluation (test stage; ``--clicks`` counts, ``--click_mode`` rule): per labelled case, the target
  (the binary lesion) gets simulated clicks one at a time (:mod:`engine.tasks.interactive`); Dice and HD95 (mm)
  after k clicks fill ``dice_<region>_click<k>`` / ``hd95_<region>_click<k>`` (a case without a target: NaN).
  Never the best over click counts. These columns stay out of the paired tests and rankings
  (``utils.schema.is_per_click``). Every run and per-case row says ``prompt_mode`` (the prompts the model was
  trained with: ``none``, prompt-free, for every model here and for automatic models) and ``click_mode`` (the click
  rule of its per-click columns; ``none`` for automatic models).
Selection: validation ``dice_mean`` of the prompt-free prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from dataio.types import CachedCase, DatasetInfo
from metrics.regions import binary_spec
from metrics.surface import hd95
from metrics.overlap import dice

from engine.inference import InferenceSettings, case_logits
from engine.tasks.clicks import CLICK_MODES
from engine.tasks.flags import TaskFlag
from engine.tasks.interactive import ClickPlan, click_masks
from engine.tasks.lesion_metrics import LesionAccumulator, LesionSettings
from engine.tasks.registry import TaskEntry, meta_region, register_task
from engine.tasks.segmentation import SegmentationAccumulator, SegmentationTask, logits_of

DEFAULT_CLICKS: tuple[int, ...] = (1, 3, 5, 10)


@dataclass(frozen=True)
class PromptSettings:
    """Interactive evaluation: click counts reported (``--clicks``) and the click rule (``--click_mode``)."""

    clicks: tuple[int, ...] = DEFAULT_CLICKS
    click_mode: str = "random"

    @classmethod
    def of(cls, options: Any) -> "PromptSettings":
        """From the flags (a config or ``LesionOptions``-like object); defaults where absent or None."""
        clicks = getattr(options, "clicks", None)
        mode = getattr(options, "click_mode", None)
        return cls(clicks=tuple(sorted({int(k) for k in clicks})) if clicks else DEFAULT_CLICKS,
                   click_mode=str(mode) if mode else "random")


PROMPT_FLAGS: tuple[TaskFlag, ...] = (
    TaskFlag("clicks", None, "promptable models: click counts whose Dice and HD95 are reported "
             "(dice_<region>_click<k>); clicks are given one at a time and every count is its own column, never the "
             "best over counts", dict(type=int, nargs="+", metavar="K"), default_text="1 3 5 10"),
    TaskFlag("click_mode", "random", "promptable models: how clicks are simulated from the ground truth: random = "
             "SAM-Med3D's (a uniform voxel of the target, then of the previous mask's errors), center = the deepest "
             "voxel of the largest error component (deterministic)", dict(choices=CLICK_MODES)),
)


@dataclass
class PromptPrediction:
    """A promptable model's prediction of one case: the prompt-free logits (K, D, H, W) and, for interactive
    evaluation, ``interact(target, name) -> {k: mask}`` (the masks after k clicks)."""

    logits: torch.Tensor
    interact: Callable[[np.ndarray, str], dict[int, np.ndarray]]


class PromptableAccumulator(SegmentationAccumulator):
    """The segmentation accumulator of the prompt-free logits, plus the per-click metrics at test time."""

    def __init__(self, task: "PromptableTask", *, test: bool, with_loss: bool) -> None:
        super().__init__(task.spec, include_hd95=test, loss_fn=task.loss_fn if with_loss else None,
                         lesions=LesionAccumulator(task.lesions) if task.lesions is not None else None)
        self.region = next(iter(task.spec.regions))
        self.prompts = task.prompts if test else None
        self.clicks: dict[str, dict[str, float]] = {}

    def update(self, case: CachedCase, prediction: Any) -> None:
        super().update(case, prediction.logits if isinstance(prediction, PromptPrediction) else prediction)
        if self.prompts is None or not isinstance(prediction, PromptPrediction):
            return
        target = np.asarray(case.label) > 0
        masks = prediction.interact(target, self.region)
        row: dict[str, float] = {}
        for k in self.prompts.clicks:
            mask = masks.get(k)
            row[f"dice_{self.region}_click{k}"] = float("nan") if mask is None else dice(mask, target)
            row[f"hd95_{self.region}_click{k}"] = (float("nan") if mask is None else
                                                   hd95(mask, target, case.spacing, image_shape=case.original_shape))
        self.clicks[case.case_id] = row

    def per_case(self) -> list[dict[str, Any]]:
        return [dict(r, **self.clicks.get(r["case_id"], {})) for r in super().per_case()]

    def aggregate(self) -> dict[str, float]:
        out = super().aggregate()
        if self.prompts is not None:
            for column in next(iter(self.clicks.values()), {}):
                values = [row[column] for row in self.clicks.values() if not np.isnan(row[column])]
                out[column] = float(np.mean(values)) if values else float("nan")
        return out

    def share(self) -> tuple[Any, dict[str, dict[str, float]]]:
        return super().share(), dict(self.clicks)

    def merge(self, shares: list[tuple[Any, dict[str, dict[str, float]]]], order: list[str]) -> None:
        super().merge([base for base, _ in shares], order)
        for _, clicks in shares:
            for case_id, row in clicks.items():
                self.clicks.setdefault(case_id, row)


class PromptableTask(SegmentationTask):
    """Binary promptable segmentation of one region (see the module docstring)."""

    may_skip_parameters = True  # prompt-free training leaves the point and mask-prompt embeddings without gradient

    def __init__(self, region: str, *, loss: Any = "sam_med3d", lesions: LesionSettings | None = None,
                 prompts: PromptSettings | None = None) -> None:
        super().__init__(binary_spec(region), loss=loss, name="promptable_segmentation",
                         lesions=lesions or LesionSettings())
        self.prompts = prompts or PromptSettings()

    def train_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        if self.loss_name == "sam_med3d":  # the seed's loss also trains the IoU head
            logits, iou = model(image, with_iou=True)
            return {"loss": self.loss_fn(logits.float(), label, iou)}
        return {"loss": self.loss_fn(logits_of(model(image)).float(), label)}

    def predict_case(self, model: nn.Module, case: CachedCase, settings: InferenceSettings) -> PromptPrediction:
        plan = ClickPlan(counts=self.prompts.clicks, mode=self.prompts.click_mode, seed=settings.seed)

        def interact(target: np.ndarray, name: str) -> dict[int, np.ndarray]:
            return click_masks(model, case, target, settings, plan, name)

        return PromptPrediction(logits=case_logits(model, case, settings), interact=interact)

    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> PromptableAccumulator:
        return PromptableAccumulator(self, test=stage == "test", with_loss=with_loss)

    def result_columns(self) -> tuple[str, ...]:
        region = next(iter(self.spec.regions))
        return super().result_columns() + tuple(f"{m}_{region}_click{k}" for k in self.prompts.clicks
                                                for m in ("dice", "hd95"))

    def run_labels(self) -> dict[str, str]:
        return dict(prompt_mode="none", click_mode=self.prompts.click_mode)

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), clicks=list(self.prompts.clicks), click_mode=self.prompts.click_mode)

    def write_prediction(self, case: CachedCase, prediction: Any, out_dir: Any, **kwargs: Any) -> list[Any]:
        logits = prediction.logits if isinstance(prediction, PromptPrediction) else prediction
        return super().write_prediction(case, logits, out_dir, **kwargs)


def _build(dataset: DatasetInfo, loss: Any, options: Any) -> PromptableTask:
    return PromptableTask(dataset.region, loss=loss, lesions=LesionSettings.of(options),
                          prompts=PromptSettings.of(options))


def _rebuild(meta: dict[str, Any], options: Any) -> PromptableTask:
    recorded = PromptSettings(clicks=tuple(meta.get("clicks", DEFAULT_CLICKS)),
                              click_mode=str(meta.get("click_mode", "random")))
    given = PromptSettings.of(options)
    prompts = PromptSettings(clicks=given.clicks if getattr(options, "clicks", None) else recorded.clicks,
                             click_mode=given.click_mode if getattr(options, "click_mode", None) else recorded.click_mode)
    return PromptableTask(meta_region(meta), lesions=LesionSettings.of(options), prompts=prompts)


register_task(TaskEntry(
    name="promptable_segmentation", model_kinds=("promptable",), label_kinds=("binary",), build=_build,
    rebuild=_rebuild, default_outputs=2, flags=PROMPT_FLAGS))
