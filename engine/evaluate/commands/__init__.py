"""The work of each ``evaluate_experiment.py`` subcommand: one module per subcommand, named after it, with
``run(options) -> EvaluationOutput`` (options: its dataclass in ``engine.options.evaluate_options``).

A handler writes files and draws nothing: it returns what it wrote and what the CLI draws from those files
(``visualization`` is the CLI's to import, never the engine's). The CLI imports a handler only after the flags
are checked, so each module imports what it needs (torch, models) at its top. Adding a subcommand is its options
class, its module here, and one line in the CLI's table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.evaluate.pictures import GradcamJob, OverlayCase, remove_folder


@dataclass
class EvaluationOutput:
    """What a subcommand wrote (``path``: the CLI prints ``results: PATH``) and what is drawn from it: the charts
    of the tables in ``charts_dir`` (None: no charts), slice overlays and a Grad-CAM job; ``temporary`` (predictions
    written only for the overlays) is removed once they are drawn."""

    path: Path
    charts_dir: Path | None = None
    overlays: list[OverlayCase] = field(default_factory=list)
    gradcam: GradcamJob | None = None
    temporary: Path | None = None

    def discard_temporary(self) -> None:
        """Remove ``temporary`` (after drawing, or when drawing failed)."""
        remove_folder(self.temporary)
