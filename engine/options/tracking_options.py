"""Flags of the experiment trackers: which trackers each job logs to, and where MLflow and W&B write.

Trackers only mirror what the job writes into its CSV rows (losses, validation metrics, learning rate, test
metrics); the CSV files stay the source of truth, so a resumed sweep may change these flags
(``engine.options.resume_check.FREE_FLAGS``).
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass

TRACKERS = ("tensorboard", "mlflow", "wandb")
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@dataclass
class TrackingOptions:
    """Settings of the experiment trackers.

    Attributes:
        tracker: trackers every job logs to, in order; default TensorBoard only (event files in
            ``jobs/<job>/tensorboard/``); ``("none",)`` on the command line gives ``()``.
        mlflow_uri: MLflow tracking URI (None: a SQLite store ``<output_dir>/mlflow.db``; a ``file:`` URI
            or a server URL also work).
        wandb_project: Weights & Biases project name; runs are written offline under ``<output_dir>/wandb``
            (upload later with ``wandb sync``).
    """

    tracker: tuple[str, ...] = ("tensorboard",)
    mlflow_uri: str | None = None
    wandb_project: str = "volbench"

    def tracking_errors(self) -> list[str]:
        """One message per tracker flag that is invalid or names a tracker whose package is missing."""
        errors = [f"--tracker {name!r} is not one of {(*TRACKERS, 'none')}" for name in self.tracker
                  if name not in TRACKERS]
        for name in self.tracker:
            package = TRACKER_PACKAGES.get(name)
            if package and importlib.util.find_spec(package) is None:
                errors.append(f"--tracker {name} needs the {package} package, which is not installed "
                              f"(pip install {package}, or --tracker none)")
        if not self.wandb_project.strip():
            errors.append("--wandb_project must not be empty")
        return errors

    def validate_tracking(self) -> None:
        """Raise ``ValueError`` (naming the flag) for the first invalid tracker flag."""
        for message in self.tracking_errors():
            raise ValueError(message)


def tracker_list(names: list[str] | None) -> tuple[str, ...]:
    """``--tracker`` values as the config holds them: ``none`` alone disables every tracker; duplicates dropped."""
    names = list(dict.fromkeys(names or ()))
    if "none" in names:
        if len(names) > 1:
            raise ValueError(f"--tracker none cannot be combined with other trackers, got {' '.join(names)}")
        return ()
    return tuple(names)


def add_tracking_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The ``tracking`` argument group of the sweep CLI."""
    g = parser.add_argument_group("tracking (mirrors of the CSV rows; the CSV files stay the source of truth)")
    g.add_argument("--tracker", nargs="+", default=["tensorboard"], metavar="NAME",
                   help=f"trackers every job logs losses, validation metrics, learning rate and test metrics to, "
                        f"from {', '.join(TRACKERS)}, or none (default: tensorboard: event files in "
                        "jobs/<job>/tensorboard/, view with tensorboard --logdir <output_dir>/jobs)")
    g.add_argument("--mlflow_uri", default=None, metavar="URI",
                   help="MLflow tracking URI for --tracker mlflow (default: sqlite:///<output_dir>/mlflow.db; "
                        "view with mlflow ui --backend-store-uri <that URI>)")
    g.add_argument("--wandb_project", default="volbench", metavar="NAME",
                   help="W&B project for --tracker wandb; runs are written offline under <output_dir>/wandb "
                        "(upload with wandb sync) (default: %(default)s)")
    return g
