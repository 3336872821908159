"""A resumed sweep must produce the same kind of results as its first start.

``config.json`` keeps the first start's flags and lists every later start (time, models, seeds, flags
that changed). Resuming with a flag that changes results is refused with one line per difference;
adding models or seeds extends the grid; flags that only change how the work runs may change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.options.data_options import effective_hu_window

# flags whose change would make a resumed sweep's rows incomparable with its finished rows
RESULT_FLAGS = ("data_path", "dataset_version", "synthetic_cases", "synthetic_size", "synthetic_seed", "max_samples",
                "epochs", "global_batch", "dim", "use_pretrained", "pretrained_checkpoint", "loss", "use_5fold",
                "split_seed", "splits_file", "lr", "weight_decay", "optimizer", "scheduler", "amp", "grad_accum",
                "max_grad_norm", "patience", "patch_size", "samples_per_volume", "val_overlap", "val_every",
                "deterministic", "cpu_conv_split", "tiny", "sync_bn", "momentum", "lr_step_size", "explicit_flags",
                "min_lesion_size", "lesion_labels", "lesion_hit", "lesion_score_threshold", "lesionwise_dilation",
                "lesionwise_min_size",
                "anchor_shapes", "max_rois", "roi_batch_size", "roi_size", "seg_lambda", "neg_ratio",
                "test_image_dir", "test_label_dir", "patient_regex", "manifest", "mask_dir", "spacing", "hu_window",
                "target_spacing", "context_slices", "fn_weight", "foreground_fraction", "annotations",
                "nodule_hu_threshold", "use_subset_folds", "clicks", "click_mode", "lr_decoder",
                "freeze_encoder", "train_prompts", "train_clicks", "nnunet_splits", "datalist")
# flags that may change between starts: how the work runs, not what it computes
FREE_FLAGS = ("models", "seeds", "num_workers", "sharing_strategy", "output_dir", "resume", "keep_latest", "device",
              "parallel", "shard", "pam_runs", "latency_runs", "skip_efficiency", "cache_dir", "allow_pickle",
              "allow_pickle_checkpoint", "gradient_checkpointing",  # whether a checkpoint may be unpickled, not what it holds
              "baseline", "stats_seed", "bootstrap_resamples",  # statistics only (the reducer recomputes them)
              "tracker", "mlflow_uri", "wandb_project",  # trackers mirror the CSV rows
              "external_predictions", "external_label_map",  # rows added beside the jobs, scored at each start
              "ensemble", "postprocess")  # ensemble and post-processed rows, computed from the jobs at each start


def _value(record: dict[str, Any], flag: str) -> Any:
    """A recorded flag as compared: ``hu_window`` as the window the run applied (records made before it defaulted
    to the dataset's own hold [0, 120] for every version); ``pretrained_checkpoint`` as a sorted list of entries
    (records made before ``MODEL=PATH`` entries hold one string)."""
    value = record.get(flag)
    if flag == "pretrained_checkpoint" and value is not None:
        return sorted([value] if isinstance(value, str) else value)  # the entries' order means nothing
    if flag == "hu_window":
        window = effective_hu_window(str(record.get("dataset_version")), value)
        return None if window is None else list(window)
    return value


def resume_differences(first: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per result-changing flag that differs between the first start's record and ``now``
    (both as in ``config.json``); per-model build overrides are compared for the models both name."""
    lines = [f"--{k}: {first.get(k)!r} at the first start, {now.get(k)!r} now"
             for k in RESULT_FLAGS if k in first and _value(first, k) != _value(now, k)]
    before, after = first.get("model_kwargs") or {}, now.get("model_kwargs") or {}
    shared = set(first.get("resolved_models", [])) & set(now.get("resolved_models", []))
    for model in sorted(shared):
        if before.get(model, {}) != after.get(model, {}):
            lines.append(f"--model_kwargs for {model}: {before.get(model, {})} at the first start, "
                         f"{after.get(model, {})} now")
    return lines


def merged_record(first: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` content: the first start's record with this start appended to ``starts``."""
    start = dict(time=datetime.now().isoformat(timespec="seconds"), models=now.get("resolved_models"),
                 seeds=now.get("seeds"))
    if first is None:
        return dict(now, starts=[start])
    changed = {k: now.get(k) for k in FREE_FLAGS if k in now and first.get(k) != now.get(k)}
    models = list(dict.fromkeys([*first.get("resolved_models", []), *now.get("resolved_models", [])]))
    return dict(first, resolved_models=models, starts=[*first.get("starts", []), dict(start, changed=changed)])
