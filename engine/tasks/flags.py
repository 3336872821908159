"""Flags that tasks own: declared once beside the settings they fill, added to both CLIs from the task registry.

``engine.options.lesion_options`` turns every :class:`TaskFlag` of the registered tasks into an ``argparse``
argument of ``integrated_experiment.py`` and ``evaluate_experiment.py``; each flag is also a field of the sweep
configuration (``engine.options.lesion_options.LesionOptions``) with the same name and default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class TaskFlag:
    """One flag, ``--<name>``.

    Attributes:
        name: flag and destination name, e.g. ``min_lesion_size``.
        default: value when the flag is not given; the help ends with ``(default: <default>)``. The evaluation
            CLI's default is None instead: the value the sweep or checkpoint recorded, else this one.
        help: what the flag does, without its default.
        options: further ``argparse`` keywords (``type``, ``choices``, ``metavar``).
        default_text: what the help says of a default that the data decide (``default`` is None then).
    """

    name: str
    default: Any
    help: str
    options: Mapping[str, Any] = field(default_factory=dict)
    default_text: str | None = None  # the help's words for a default that depends on the data (default None)
