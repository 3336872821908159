"""Experiment trackers of one job: TensorBoard event files (default), MLflow and Weights & Biases (offline).

A :class:`JobTracking` hook mirrors each epoch row (``train_loss``, ``val_loss``, ``val_dice_*``, ``val_map``,
``lr``, ``epoch_time_s``; step = epoch) and, once tested, the job's test metrics (``test/<column>``) into every
tracker of ``--tracker``. The CSV files stay the source of truth: a tracker that fails is logged and dropped,
never failing the job. Only the rank that writes the job's files tracks (one run per job under DDP). A resumed
job continues its runs: TensorBoard purges the events after the last finished epoch, MLflow and W&B reopen the
run ids kept in ``jobs/<job>/trackers.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

from engine.options.tracking_options import TrackingOptions
from engine.trainer import TrainerHooks
from utils.atomic import atomic_write_text

log = logging.getLogger("volbench.tracking")

TRACKERS_JSON = "trackers.json"  # run ids of MLflow / W&B, so a resumed job logs into the same runs
TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    """What a tracker does for a job: log scalars at a step, then close with the job's status."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self, status: str) -> None: ...


def numeric_items(row: dict[str, Any], prefix: str = "", skip: tuple[str, ...] = ("epoch",)) -> dict[str, float]:
    """The finite numeric entries of ``row`` (booleans and ``skip`` left out), keys prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in row.items() if k not in skip and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardTracker:
    """Event files in ``<job>/tensorboard/`` (``torch.utils.tensorboard``); params as a text summary."""

    def __init__(self, job_dir: Path, params: dict[str, Any], resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: needs the tensorboard package

        # purge_step drops events a killed run wrote after its last finished epoch
        self.writer = SummaryWriter(log_dir=str(job_dir / TENSORBOARD_DIR),
                                    purge_step=resume_step + 1 if resume_step else None)
        if not resume_step:
            table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
            self.writer.add_text("params", f"| param | value |\n|---|---|\n{table}", 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class MLflowTracker:
    """One MLflow run per job in the experiment named after the sweep folder (client API: no global run state)."""

    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, Any], run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient  # lazy: needs the mlflow package

        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(experiment_id, run_name=run_name, tags={"volbench.job": run_name})
            run_id = run.info.run_id
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k.replace("/", "_"), v, now, step)
                                                    for k, v in metrics.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "ok" else "FAILED")


class WandbTracker:
    """One offline W&B run per job under ``<output_dir>/wandb`` (upload later with ``wandb sync``)."""

    def __init__(self, output_dir: Path, project: str, group: str, run_name: str, params: dict[str, Any],
                 run_id: str | None) -> None:
        import wandb  # lazy: needs the wandb package

        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True)
        self.run = wandb.init(mode="offline", dir=str(output_dir), project=project, group=group, name=run_name,
                              config=params, id=run_id, resume="allow" if run_id else None, reinit="create_new",
                              settings=settings)
        self.run_id = self.run.id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "ok" else 1)


class JobTracking(TrainerHooks):
    """Trainer hook that opens the job's trackers at the start of training and mirrors every epoch row.

    ``params``: what the job was run with (model, seed, fold, trainer settings), logged once per run.
    """

    def __init__(self, options: TrackingOptions, job_dir: Path, output_dir: Path, run_name: str,
                 params: dict[str, Any]) -> None:
        self.options, self.job_dir, self.output_dir = options, Path(job_dir), Path(output_dir)
        self.run_name, self.params = run_name, params
        self.trackers: dict[str, Tracker] = {}
        self.step = 0

    def on_train_start(self, state: Any) -> None:
        self.step = int(getattr(state, "epoch", 0) or 0)
        ids = self._recorded_ids() if self.step else {}
        for name in self.options.tracker:
            try:
                self.trackers[name] = self._open(name, ids.get(name))
            except Exception:  # noqa: BLE001 - a tracker must never cost the job
                log.exception("%s: tracker %s could not start; the CSV files still hold every value", self.run_name,
                              name)
        self._record_ids()

    def _open(self, name: str, run_id: str | None) -> Tracker:
        if name == "tensorboard":
            return TensorBoardTracker(self.job_dir, self.params, self.step)
        if name == "mlflow":
            uri = self.options.mlflow_uri or f"sqlite:///{(self.output_dir / 'mlflow.db').resolve()}"
            return MLflowTracker(uri, self.output_dir.resolve().name, self.run_name, self.params, run_id)
        return WandbTracker(self.output_dir, self.options.wandb_project, self.output_dir.resolve().name,
                            self.run_name, self.params, run_id)

    def _recorded_ids(self) -> dict[str, str]:
        path = self.job_dir / TRACKERS_JSON
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            return {}

    def _record_ids(self) -> None:
        ids = {n: t.run_id for n, t in self.trackers.items() if getattr(t, "run_id", None)}
        if ids:
            atomic_write_text(self.job_dir / TRACKERS_JSON, json.dumps(ids, indent=2))

    def _log(self, metrics: dict[str, float], step: int) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.log_metrics(metrics, step)
            except Exception:  # noqa: BLE001
                log.exception("%s: tracker %s failed and is dropped for this job", self.run_name, name)
                del self.trackers[name]

    def on_epoch_end(self, state: Any, row: dict[str, Any]) -> None:
        self.step = int(row["epoch"])
        self._log(numeric_items(row), self.step)

    def log_test(self, aggregate: dict[str, Any]) -> None:
        """The job's test metrics (``test/<column>``) at the last epoch's step."""
        self._log(numeric_items(aggregate, prefix="test/", skip=()), self.step)

    def close(self, status: str) -> None:
        """Close every tracker with the job's status (``ok`` marks the run finished, anything else failed)."""
        for name, tracker in self.trackers.items():
            try:
                tracker.close(status)
            except Exception:  # noqa: BLE001
                log.exception("%s: tracker %s did not close cleanly", self.run_name, name)
        self.trackers = {}
