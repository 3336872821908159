"""volbench main job: train and compare models over seeds and folds.

    python integrated_experiment.py --models unet3d_xs swin_unetr --seeds 24 42 --epochs 10 [--use_5fold]

Without --data_path the embedded synthetic BraTS phantoms are generated (deterministically) and used.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

if __name__ == "__main__":  # before torch loads: --deterministic pins portable CPU kernels (utils.portable_kernels)
    from utils.portable_kernels import pin_for_argv

    pin_for_argv(sys.argv[1:])

from engine.options.config import parse_config  # noqa: E402

EXIT_WRITE_FAILED = 74  # sysexits.h EX_IOERR: a result file could not be written (e.g. disk full)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run the sweep, return the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    config = parse_config(argv)
    from experiment_runner import run_integrated_experiment  # heavy imports after flag checks

    from utils.atomic import OutputWriteError
    from utils.signals import SweepStopped, exit_code, stop_on_signals

    try:
        with stop_on_signals():
            output_dir = run_integrated_experiment(config)
    except OutputWriteError as exc:  # disk full, folder not writable: nothing half-written, every job resumable
        logging.getLogger("volbench").error("%s; no file was left half-written and every job keeps its last "
                                            "completed epoch: fix it, then continue with --resume and the same flags",
                                            exc.strerror)
        return EXIT_WRITE_FAILED
    except ValueError as exc:  # bad input found while preparing (data, models, splits)
        logging.getLogger("volbench").error("%s", exc)
        return 2
    except (SweepStopped, KeyboardInterrupt) as exc:
        logging.getLogger("volbench").error("%s: every job keeps its last completed epoch; continue with --resume "
                                            "and the same flags", str(exc) or "stopped by signal SIGINT")
        return exit_code(exc)
    print(f"results: {output_dir}")
    return 0 if _any_ok(output_dir) else 1


def _any_ok(output_dir: object) -> bool:
    """Whether the sweep's runs table holds at least one ok run (exit code 1 when every job failed)."""
    from pathlib import Path

    import pandas as pd

    from utils.schema import RUNS_CSV

    path = Path(str(output_dir)) / RUNS_CSV
    if not path.is_file():
        return True  # this process had no job to run (e.g. an empty shard)
    ok = (pd.read_csv(path, usecols=["status"])["status"] == "ok").any()
    if not ok:
        logging.getLogger("volbench").error("every job failed: see the error column of %s", path)
    return bool(ok)


if __name__ == "__main__":
    sys.exit(main())
