"""What both CLIs share in their argument parsing: one-line errors, help that never breaks a word, and
``--list_models [PATTERN]`` (print the registry and exit).

No torch import here: the registry is imported only when ``--list_models`` is given.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any, NoReturn, Sequence


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines wrapped at spaces only: paths and file patterns (``..._YYYYMMDD_HHMMSS``) stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


class CliParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line on stderr (``prog: error: message``), exit code 2.

    The full usage is left out (with 50 flags it buries the message); ``--help`` still prints it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def model_list_lines(pattern: str = "*") -> list[str]:
    """One line per registered model matching ``pattern`` (fnmatch): name, task, parameters, modalities.

    Parameters are those of the default build (4 output classes), in millions; "input-dependent" where
    the registry records none (UNETR: its position embedding depends on the input size). Modalities are
    the MRI channels the model consumes; "any" models take every channel of a dataset without them.
    """
    from models import list_models, model_info

    names = list_models(pattern)
    rows = [("name", "task", "params", "modalities")]
    for name in names:
        info = model_info(name)
        params = "input-dependent" if info.num_params is None else f"{info.num_params / 1e6:.2f}M"
        modalities = ",".join(info.modalities)
        rows.append((name, info.task, params, f"any (default {modalities})" if info.any_channels else modalities))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    lines.append(f"{len(names)} model(s) matching {pattern!r}")
    return lines


class ListModelsAction(argparse.Action):
    """``--list_models [PATTERN]``: print :func:`model_list_lines` and exit 0 (as ``--help`` does).

    A pattern that matches nothing is an error (exit 2) naming the pattern.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs="?", const="*", default=argparse.SUPPRESS, metavar="PATTERN")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        lines = model_list_lines(values or "*")
        if len(lines) == 2:  # header and count only
            parser.error(f"--list_models {values!r} matches no registered model")
        sys.stdout.write("\n".join(lines) + "\n")
        parser.exit(0)


def add_list_models_argument(group: argparse._ActionsContainer) -> None:
    """Add ``--list_models [PATTERN]`` to ``group``."""
    group.add_argument("--list_models", action=ListModelsAction,
                       help="print every registered model matching PATTERN (fnmatch, e.g. 'unet3d_*'; default: "
                            "all) with its task, parameters (millions, default build with 4 classes) and input "
                            "modalities, then exit")
