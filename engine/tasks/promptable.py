"""Promptable segmentation (SAM-Med3D, VISTA3D): prompt-free like any model, plus interactive results per click.

Targets: the binary lesion on the lesion track; on BraTS the regions WT, TC and ET, each a binary target. The
network gives one prompt-free mask per target (``out_channels = 1 + R``; SAM-Med3D: one decoder mask token per
region, VISTA3D: one class prompt per region; ``models.promptable``), channel ``1 + r`` the sigmoid logit of region
r in the task's region order (WT, TC, ET), and one mask per click prompt.

- Training, ``--train_prompts none`` (the seed tool's mode and the default): prompt-free, no points and no mask
  prompt. The loss is applied to each region's two-class logits ``[0, z_r]`` and binary target, and averaged over
  the regions (one region on the lesion track: exactly the loss of the two-class output); ``sam_med3d``'s loss
  (Dice + focal + IoU + IoU-head MSE, :mod:`losses.sam`) also takes the region's IoU prediction.
- Training, ``--train_prompts clicks``: each step adds to that prompt-free loss (``loss_prompt_free``) the sum over
  ``--train_clicks`` N simulated clicks (``loss_clicks``): per sample one target (a region drawn uniformly among
  those present in the patch, else among all), encoded once; click k is drawn by the ``random`` rule of
  :mod:`engine.tasks.clicks` from the errors of the previous click's mask (the first from the target), all clicks
  so far are decoded with the previous low-res logits as the mask prompt, detached, and the loss of that mask is
  added. The click generator is seeded from torch's global generator, which the runner seeds per job, so a job's
  clicks are reproducible. Unlike SAM-Med3D's train.py, every decoding gets all clicks so far (its default passes
  only the newest) and none is mask-only (it inserts two); the prompt-free term keeps the prompt-free output, on
  which the best epoch is selected, trained.
- Prompt-free prediction: the model's forward over sliding windows, like every segmentation model. One region:
  the two-class logits ``[0, z]`` as they are. Several (BraTS): the region logits are mapped to label scores
  whose argmax is nnU-Net's region-to-label rule (``regions_class_order``: the innermost positive region's own
  label wins: ET if ``z_et > 0``, else NCR if ``z_tc > 0``, else ED if ``z_wt > 0``, else background; a logit of
  exactly 0 is negative): the score of a region's own label is ``min(z_r, -z_inner...)``, background's
  ``min(-z)``; their softmax is not a probability. The ordinary columns (``dice_<region>``, HD95, precision,
  recall, the lesion or lesion-wise metrics) compare like for like with automatic models in every table,
  statistic and ranking.
- Interactive evaluation (test stage; ``--clicks`` counts, ``--click_mode`` rule): per labelled case and target
  region, simulated clicks one at a time (:mod:`engine.tasks.interactive`: windows centred on the first click,
  extended where the prediction reaches a window's edge); Dice and HD95 (mm) after k clicks fill
  ``dice_<region>_click<k>`` / ``hd95_<region>_click<k>`` (a case without that target: NaN). Never the best over
  click counts. These columns stay out of the paired tests and rankings (``utils.schema.is_per_click``). Every
  run and per-case row says ``prompt_mode`` (the prompts the model was trained with: ``none`` or ``clicks``) and
  ``click_mode`` (the click rule of its per-click columns; ``none`` for automatic models).
- A model's own preprocessing (``ModelInfo.preprocessing``, SAM-Med3D's 1.5 mm isotropic and z-normalised
  foreground): training samples, prompt-free windows and clicks use the model's own cached cases; logits and click
  masks are resampled back onto the dataset's grid and scored there like every other model's
  (:mod:`engine.tasks.own_inputs`). A target too small to keep a voxel on the model's grid gets empty masks
  (Dice 0), not NaN: the model was given the case and could not be clicked on it.
Selection: validation ``dice_mean`` of the prompt-free prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from dataio.types import CachedCase, DatasetInfo
from metrics.regions import BRATS_SPEC, MetricSpec, binary_spec, region_mask
from metrics.surface import hd95
from metrics.overlap import dice

from engine.inference import InferenceSettings, case_logits
from engine.tasks.clicks import CLICK_MODES
from engine.tasks.flags import TaskFlag
from engine.tasks.interactive import ClickPlan, TrainingClicks, click_masks
from engine.tasks.lesion_metrics import LesionAccumulator, LesionSettings
from engine.tasks.lesionwise import LesionwiseAccumulator, LesionwiseSettings
from engine.tasks.own_inputs import OwnInputs
from engine.tasks.registry import TaskEntry, meta_region, register_task
from engine.tasks.segmentation import SegmentationAccumulator, SegmentationTask

DEFAULT_CLICKS: tuple[int, ...] = (1, 3, 5, 10)
TRAIN_PROMPTS: tuple[str, ...] = ("none", "clicks")
# SAM-Med3D's train.py (uni-medical/SAM-Med3D, every version to commit f3de1fa, 2025-09): each step calls
# interaction(..., num_clicks=11), 11 decodings (its --num_clicks 5 belongs to validation.py, not training)
TRAIN_CLICKS = 11


@dataclass(frozen=True)
class PromptSettings:
    """Interactive evaluation (``--clicks`` counts reported, ``--click_mode`` rule) and click training
    (``--train_prompts`` none|clicks, ``--train_clicks`` clicks per step)."""

    clicks: tuple[int, ...] = DEFAULT_CLICKS
    click_mode: str = "random"
    train_prompts: str = "none"
    train_clicks: int = TRAIN_CLICKS

    @classmethod
    def of(cls, options: Any) -> "PromptSettings":
        """From the flags (a config or ``LesionOptions``-like object); defaults where absent or None."""
        clicks = getattr(options, "clicks", None)
        mode = getattr(options, "click_mode", None)
        train = getattr(options, "train_prompts", None)
        count = getattr(options, "train_clicks", None)
        return cls(clicks=tuple(sorted({int(k) for k in clicks})) if clicks else DEFAULT_CLICKS,
                   click_mode=str(mode) if mode else "random", train_prompts=str(train) if train else "none",
                   train_clicks=int(count) if count else TRAIN_CLICKS)


PROMPT_FLAGS: tuple[TaskFlag, ...] = (
    TaskFlag("clicks", None, "promptable models: click counts whose Dice and HD95 are reported "
             "(dice_<region>_click<k>); clicks are given one at a time and every count is its own column, never the "
             "best over counts", dict(type=int, nargs="+", metavar="K"), default_text="1 3 5 10"),
    TaskFlag("click_mode", "random", "promptable models: how clicks are simulated from the ground truth: random = "
             "SAM-Med3D's (a uniform voxel of the target, then of the previous mask's errors), center = the deepest "
             "voxel of the largest error component (deterministic)", dict(choices=CLICK_MODES)),
)


def region_order(spec: MetricSpec) -> list[int]:
    """The own label of each region of ``spec`` in order (a region's labels minus the next region's): the regions
    must be nested, outermost first, each with exactly one own label (BraTS WT, TC, ET: ED, NCR, ET).

    Raises:
        ValueError: the regions are not such a chain.
    """
    regions = [set(m) for m in spec.regions.values()]
    own = []
    for outer, inner in zip(regions, regions[1:] + [set()]):
        if not inner <= outer or len(outer - inner) != 1:
            raise ValueError(f"promptable segmentation needs nested regions, outermost first, each with one label "
                             f"of its own; {spec.name} has {dict(spec.regions)}")
        own.append(next(iter(outer - inner)))
    return own


def label_scores(logits: torch.Tensor, spec: MetricSpec) -> torch.Tensor:
    """Label scores (n_classes, *S) of region logits ``logits`` (1 + R, *S) = ``[0, z_1 .. z_R]``: unchanged for
    one region; else argmax = the innermost positive region's own label (module docstring)."""
    if logits.shape[0] == 2:
        return logits
    z = logits[1:].float()
    scores = torch.empty((spec.n_classes, *z.shape[1:]), dtype=z.dtype)
    inner = torch.full_like(z[0], float("inf"))  # min of -z over the regions inside the current one
    for r, label in reversed(list(enumerate(region_order(spec)))):
        scores[label] = torch.minimum(z[r], inner)
        inner = torch.minimum(inner, -z[r])
    scores[0] = inner
    return scores


def _region_target(label: torch.Tensor, members: tuple[int, ...]) -> torch.Tensor:
    """Integer (0/1) mask of the voxels of ``label`` in ``members``."""
    target = torch.zeros_like(label, dtype=torch.int64)
    for m in members:
        target |= (label == m).long()
    return target


@dataclass
class PromptPrediction:
    """A promptable model's prediction of one case: the prompt-free label scores (K, D, H, W), the region logits
    ``[0, z_1 .. z_R]`` they come from, and ``interact(target, name) -> {k: mask}`` (the masks after k clicks)."""

    logits: torch.Tensor
    interact: Callable[[np.ndarray, str], dict[int, np.ndarray]]
    region_logits: torch.Tensor | None = None


class PromptableAccumulator(SegmentationAccumulator):
    """The segmentation accumulator of the prompt-free labels, plus the per-click metrics of every target region
    at test time; the loss (``with_loss``) is the task's region loss of the region logits."""

    def __init__(self, task: "PromptableTask", *, test: bool, with_loss: bool) -> None:
        lesionwise = LesionwiseAccumulator(task.spec, task.lesionwise) if task.lesionwise is not None and test else None
        super().__init__(task.spec, include_hd95=test, loss_fn=None, lesionwise=lesionwise,
                         lesions=LesionAccumulator(task.lesions) if task.lesions is not None else None)
        self.task = task
        self.with_loss = with_loss
        self.prompts = task.prompts if test else None
        self.clicks: dict[str, dict[str, float]] = {}

    def update(self, case: CachedCase, prediction: Any) -> None:
        if not isinstance(prediction, PromptPrediction):
            super().update(case, prediction)
            return
        if self.with_loss:
            label = torch.from_numpy(np.asarray(case.label, dtype=np.int64))[None]
            with torch.no_grad():
                raw = prediction.region_logits if prediction.region_logits is not None else prediction.logits
                self.losses.setdefault(case.case_id, float(self.task.region_loss(raw[None].float(), label)))
        super().update(case, prediction.logits)
        if self.prompts is not None:
            self.clicks[case.case_id] = self._click_row(case, prediction)

    def _click_row(self, case: CachedCase, prediction: PromptPrediction) -> dict[str, float]:
        row: dict[str, float] = {}
        for region, members in self.task.spec.regions.items():
            target = region_mask(case.label, members)
            masks = prediction.interact(target, region)
            for k in self.prompts.clicks:  # type: ignore[union-attr]
                mask = masks.get(k)
                row[f"dice_{region}_click{k}"] = float("nan") if mask is None else dice(mask, target)
                row[f"hd95_{region}_click{k}"] = (float("nan") if mask is None else
                                                  hd95(mask, target, case.spacing, image_shape=case.original_shape))
        return row

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
    """Promptable segmentation of the regions of ``spec`` (see the module docstring): one binary region
    (``binary_spec``, lesion metrics ``lesions``, default settings) or BraTS's nested WT, TC, ET (``BRATS_SPEC``,
    lesion-wise metrics ``lesionwise``, default settings)."""

    may_skip_parameters = True  # prompt-free training leaves the point and mask-prompt embeddings without gradient

    def __init__(self, spec: MetricSpec, *, loss: Any = "sam_med3d", lesions: LesionSettings | None = None,
                 lesionwise: LesionwiseSettings | None = None, prompts: PromptSettings | None = None) -> None:
        region_order(spec)
        # the loss sees one region's two-class logits at a time: check it as a binary task's
        several = len(spec.regions) > 1  # defaults as the automatic tasks: lesion metrics or BraTS's lesion-wise ones
        super().__init__(binary_spec(next(iter(spec.regions))), loss=loss, name="promptable_segmentation",
                         lesions=None if several else lesions or LesionSettings(),
                         lesionwise=lesionwise or LesionwiseSettings() if several else None)
        self.spec = spec
        self.prompts = prompts or PromptSettings()
        self.own: OwnInputs | None = None  # the model's own preprocessing, when its registry entry declares one
        if self.prompts.train_prompts not in TRAIN_PROMPTS:
            raise ValueError(f"--train_prompts {self.prompts.train_prompts!r} is not one of {TRAIN_PROMPTS}")
        if self.prompts.train_clicks < 1:
            raise ValueError(f"--train_clicks must be >= 1, got {self.prompts.train_clicks}")

    def binary_loss(self, logits: torch.Tensor, target: torch.Tensor, iou: torch.Tensor | None) -> torch.Tensor:
        """The loss of two-class logits (B, 2, *S) against an integer 0/1 target; ``iou`` (B, 1) goes to
        ``sam_med3d``'s loss only."""
        if self.loss_name == "sam_med3d":
            return self.loss_fn(logits, target, iou)
        return self.loss_fn(logits, target)

    def region_loss(self, logits: torch.Tensor, label: torch.Tensor, iou: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the regions r of the loss of ``[0, z_r]`` (``logits`` (B, 1 + R, *S)) against region r of the
        internal ``label``, with the IoU prediction ``iou[:, r]`` when given."""
        terms = []
        for r, members in enumerate(self.spec.regions.values()):
            z = logits[:, 1 + r:2 + r]
            two = torch.cat([torch.zeros_like(z), z], dim=1)
            terms.append(self.binary_loss(two, _region_target(label, members),
                                          None if iou is None else iou[:, r:r + 1]))
        return terms[0] if len(terms) == 1 else torch.stack(terms).mean()

    def train_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        if self.prompts.train_prompts == "clicks":
            return self._click_step(model, image, label)
        logits, iou = model(image, with_iou=True)
        return {"loss": self.region_loss(logits.float(), label, iou)}

    def _click_step(self, model: nn.Module, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """``--train_prompts clicks``: the prompt-free loss and the sum of the losses after each click."""
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
        labels = label.detach().cpu().numpy().reshape(image.shape[0], *image.shape[2:])
        targets = np.stack([self._click_target(sample, rng) for sample in labels])
        prompter = TrainingClicks(targets, self.prompts.train_clicks, rng, image.device)
        free, outputs = model(image, prompter=prompter)
        free_logits = torch.cat([torch.zeros_like(free.logits[:, :1]), free.logits], dim=1)
        target = torch.from_numpy(targets.astype(np.int64)).reshape(label.shape).to(image.device)
        clicks = [self.binary_loss(torch.cat([torch.zeros_like(out.logits), out.logits], dim=1).float(), target,
                                   out.iou) for out in outputs]
        return {"prompt_free": self.region_loss(free_logits.float(), label, free.iou),
                "clicks": torch.stack(clicks).sum()}

    def _click_target(self, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One sample's click target: a region drawn uniformly among those present in ``label``, else all."""
        masks = [region_mask(label, members) for members in self.spec.regions.values()]
        present = [m for m in masks if m.any()] or masks
        return present[int(rng.integers(len(present)))]

    def use_input_preprocessing(self, params: dict[str, Any]) -> None:
        self.own = OwnInputs(params)

    def train_dataset(self, cases: list[CachedCase], **kwargs: Any) -> Any:
        return super().train_dataset(self.own.cases(cases) if self.own is not None else cases, **kwargs)

    def predict_case(self, model: nn.Module, case: CachedCase, settings: InferenceSettings) -> PromptPrediction:
        plan = ClickPlan(counts=self.prompts.clicks, mode=self.prompts.click_mode, seed=settings.seed)
        own = self.own.case(case) if self.own is not None else case

        def interact(target: np.ndarray, name: str) -> dict[int, np.ndarray]:
            if self.own is None:
                return click_masks(model, case, target, settings, plan, name)
            masks = click_masks(model, own, region_mask(own.label, self.spec.regions[name]), settings, plan, name)
            if not masks and np.any(target):  # the target has no voxel left on the model's grid: empty masks
                return {k: np.zeros(target.shape, dtype=bool) for k in plan.counts}
            return {k: self.own.mask_back(m, own, case) for k, m in masks.items()}

        logits = case_logits(model, own, settings)
        if self.own is not None:
            logits = self.own.logits_back(logits, own, case)
        return PromptPrediction(logits=label_scores(logits, self.spec), interact=interact, region_logits=logits)

    def new_accumulator(self, *, stage: str, with_loss: bool = False) -> PromptableAccumulator:
        return PromptableAccumulator(self, test=stage == "test", with_loss=with_loss)

    def result_columns(self) -> tuple[str, ...]:
        return super().result_columns() + tuple(f"{m}_{region}_click{k}" for region in self.spec.regions
                                                for k in self.prompts.clicks for m in ("dice", "hd95"))

    def run_labels(self) -> dict[str, str]:
        return dict(prompt_mode=self.prompts.train_prompts, click_mode=self.prompts.click_mode)

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), clicks=list(self.prompts.clicks), click_mode=self.prompts.click_mode,
                    train_prompts=self.prompts.train_prompts, train_clicks=self.prompts.train_clicks,
                    input_preprocessing=None if self.own is None else self.own.params)

    def write_prediction(self, case: CachedCase, prediction: Any, out_dir: Any, **kwargs: Any) -> list[Any]:
        logits = prediction.logits if isinstance(prediction, PromptPrediction) else prediction
        return super().write_prediction(case, logits, out_dir, **kwargs)


def _build(dataset: DatasetInfo, loss: Any, options: Any) -> PromptableTask:
    prompts = PromptSettings.of(options)
    if dataset.label_kind == "brats":
        return PromptableTask(BRATS_SPEC, loss=loss, lesionwise=LesionwiseSettings.of(options), prompts=prompts)
    return PromptableTask(binary_spec(dataset.region), loss=loss, lesions=LesionSettings.of(options), prompts=prompts)


def _rebuild(meta: dict[str, Any], options: Any) -> PromptableTask:
    """The task of a checkpoint: its regions, the prompts it was trained with; ``--clicks`` / ``--click_mode`` of
    the evaluation where given, else the recorded ones."""
    given = PromptSettings.of(options)
    prompts = PromptSettings(
        clicks=given.clicks if getattr(options, "clicks", None) else tuple(meta.get("clicks", DEFAULT_CLICKS)),
        click_mode=given.click_mode if getattr(options, "click_mode", None) else str(meta.get("click_mode", "random")),
        train_prompts=str(meta.get("train_prompts", "none")), train_clicks=int(meta.get("train_clicks", TRAIN_CLICKS)))
    regions = {k: tuple(v) for k, v in (meta.get("regions") or {}).items()}
    if regions == dict(BRATS_SPEC.regions):
        task = PromptableTask(BRATS_SPEC, lesionwise=LesionwiseSettings.of(options), prompts=prompts)
    else:
        task = PromptableTask(binary_spec(meta_region(meta)), lesions=LesionSettings.of(options), prompts=prompts)
    if meta.get("input_preprocessing"):  # the checkpoint's model was trained on its own preprocessing
        task.use_input_preprocessing(meta["input_preprocessing"])
    return task


register_task(TaskEntry(
    name="promptable_segmentation", model_kinds=("promptable",), label_kinds=("binary", "brats"), build=_build,
    rebuild=_rebuild, default_outputs=2, flags=PROMPT_FLAGS))
