"""Soak: a sweep of many tiny jobs killed with SIGKILL at seeded random moments and resumed until it completes.

    python benchmarks/bench_soak.py --quick     # 20 jobs (4 min on 2 shared cores, 2026-12-05)
    python benchmarks/bench_soak.py             # 100 jobs (19 min on 2 shared cores, 2026-12-05)

The sweep: ``unet3d_xs`` and ``unet3d_stride_xs`` at base 2 (the tests' tiny build), seeds 1..N/2 (``--jobs`` is
rounded up to a multiple of the model count), ``--epochs 2``, 7 synthetic 32^3 phantoms, one patch per volume, no
efficiency figures, no tracker, ``--num_workers 0``, ``--deterministic``, 1 torch thread per process (``--threads``);
the phantom cache is built once beforehand. First the reference: the sweep uninterrupted, timed. Then the soak: the
same sweep in a fresh folder, started as a subprocess (its own process group) and sent SIGKILL after a delay drawn
uniformly from [``--min_delay``, ``--max_delay``] s by a ``random.Random(--seed)``; restarted with ``--resume`` (same
flags) until an attempt exits 0 (after ``--max_kills`` kills the next attempt runs to its end).

Checks on the soaked folder: every expected job has exactly one row in ``integrated_experiment_results.csv`` with
status ok (jobs lost = missing keys); rows duplicated on their keys in every sweep table (runs: model, seed, fold;
epochs: + epoch; per case: + case_id; ...) and rows missing against the reference's keys; corrupt files = CSVs that
fail to parse, JSON files that fail to load, checkpoints (``*.pth``) that fail ``torch.load(weights_only=True)``, PNGs
that fail PIL's verify, and leftover ``*.tmp``; leftover ``latest.pth`` (every job ended, so none should remain).
Temporaries that killed writes leave in the results root are kept by design while younger than an hour (a running
shard may be writing one), so before the checks they are counted, aged past that limit with ``os.utime`` and one more
``--resume`` start (not timed) must remove them all; job folders clean theirs when a job starts.
Metric values against the reference, timing and path columns left out: bit-identical expected under
``--deterministic`` on one machine with the same thread count; reported as the count of differing values at
tolerance 0 and at rtol 1e-6 (the tests' tolerance), and every best checkpoint tensor compared with ``torch.equal``.
Printed: kills by phase (the last log line before the kill), restarts, wall and CPU seconds of both runs and the
overhead ratios. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workdir import run_in_workdir  # noqa: E402
from engine.results.sweep_files import STALE_TMP_AGE_S  # noqa: E402
from utils.schema import (CONFUSION_CSV, EPOCHS_CSV, JOBS_DIR, LATEST_CHECKPOINT, PER_CASE_CSV,  # noqa: E402
                          RUNS_CSV, VAL_PER_CASE_CSV)

MODELS = ("unet3d_xs", "unet3d_stride_xs")
TINY = json.dumps({m: {"base": 2} for m in MODELS})
KEYS = ("model", "seed", "fold")
# sweep table -> the columns that identify one row
TABLE_KEYS = {RUNS_CSV: KEYS, EPOCHS_CSV: (*KEYS, "epoch"), PER_CASE_CSV: (*KEYS, "case_id"),
              VAL_PER_CASE_CSV: (*KEYS, "epoch", "case_id"), CONFUSION_CSV: (*KEYS, "reference", "prediction")}
TIMING = ("train_time_s", "epoch_time_s", "latency_ms", "checkpoint", "eval_time_s")
RTOL = 1e-6


def sweep_flags(out: Path, cache: Path, seeds: int, epochs: int) -> list[str]:
    return ["--models", *MODELS, "--seeds", *[str(s) for s in range(1, seeds + 1)], "--epochs", str(epochs),
            "--synthetic_cases", "7", "--synthetic_size", "32", "32", "32", "--cache_dir", str(cache),
            "--output_dir", str(out), "--samples_per_volume", "1", "--num_workers", "0", "--model_kwargs", TINY,
            "--skip_efficiency", "--deterministic", "--tracker", "none"]


@dataclass
class Attempt:
    """One start of the sweep: how it ended and what it had done."""

    rc: int
    wall_s: float
    cpu_s: float
    phase: str = ""
    jobs_done: int = 0


@dataclass
class Soak:
    attempts: list[Attempt] = field(default_factory=list)
    tmp_ages: list[float] = field(default_factory=list)  # s, temporaries left in the results root at the end
    tmp_removed: int = 0  # of those, removed by the clean-up start once aged past STALE_TMP_AGE_S

    @property
    def kills(self) -> list[Attempt]:
        return [a for a in self.attempts if a.rc == -signal.SIGKILL]

    def total(self, name: str) -> float:
        return sum(getattr(a, name) for a in self.attempts)


def start(flags: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), VOLBENCH_PROGRESS="0",
               PYTHONWARNINGS="ignore")
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, str(ROOT / "integrated_experiment.py"), *flags], cwd=ROOT, env=env,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(flags: list[str], log: Path, threads: int, delay: float | None) -> Attempt:
    """Start the sweep; SIGKILL its process group after ``delay`` s (None: let it end)."""
    cpu, wall = children_cpu(), time.perf_counter()
    proc = start(flags, log, threads)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return Attempt(proc.returncode, time.perf_counter() - wall, children_cpu() - cpu)


def phase_of(log: Path) -> str:
    """Where the sweep was when it was killed, from its last log lines."""
    text = log.read_text(errors="replace")
    if "jobs finished" in text:
        return "final tables and charts"
    events = re.findall(r"(job \d+/\d+:|resuming after epoch \d+|epoch \d+/\d+ )", text)
    if not events:
        return "start-up (imports, cache, config)"
    last = events[-1]
    if last.startswith("job"):
        return "a job's epoch 1"
    if last.startswith("resuming"):
        return f"a job's epoch {int(last.split()[-1]) + 1} (resumed)"
    done, total = (int(x) for x in re.findall(r"\d+", last))
    return f"a job's epoch {done + 1}" if done < total else "a job's test, rows and reduce"


def jobs_done(out: Path) -> int:
    return sum(1 for _ in (out / JOBS_DIR).glob("*/run.csv")) if (out / JOBS_DIR).is_dir() else 0


def soak(flags: list[str], out: Path, logs: Path, args: argparse.Namespace) -> Soak:
    rng, result = random.Random(args.seed), Soak()
    logs.mkdir(parents=True, exist_ok=True)
    while True:
        n = len(result.attempts)
        delay = rng.uniform(args.min_delay, args.max_delay) if len(result.kills) < args.max_kills else None
        log = logs / f"attempt_{n:03d}.log"
        attempt = run_once([*flags, "--resume"] if n else flags, log, args.threads, delay)
        attempt.phase, attempt.jobs_done = phase_of(log), jobs_done(out)
        result.attempts.append(attempt)
        state = "killed" if attempt.rc == -signal.SIGKILL else f"exit {attempt.rc}"
        print(f"  attempt {n}: {state} after {attempt.wall_s:.1f} s (delay {delay or 0:.1f} s) in {attempt.phase}; "
              f"{attempt.jobs_done} jobs done", flush=True)
        if attempt.rc == 0:
            return result
        if attempt.rc != -signal.SIGKILL:
            raise RuntimeError(f"the sweep failed by itself (exit {attempt.rc}); see {log}:\n"
                               + log.read_text(errors="replace")[-3000:])


def clean_up_start(flags: list[str], out: Path, logs: Path, threads: int) -> tuple[list[float], int]:
    """Ages of the temporaries that killed writes left in the results root (kept by design while younger than
    STALE_TMP_AGE_S), then those files aged past it and one more ``--resume`` start, which must remove them; returns
    the ages and how many the start removed."""
    now, leftovers = time.time(), sorted(out.glob(".*.tmp"))
    ages = [now - p.stat().st_mtime for p in leftovers]
    for path in leftovers:
        os.utime(path, (now - 2 * STALE_TMP_AGE_S, now - 2 * STALE_TMP_AGE_S))
    attempt = run_once([*flags, "--resume"], logs / "clean_up_start.log", threads, None)
    if attempt.rc != 0:
        raise RuntimeError(f"the clean-up start failed ({attempt.rc}); see {logs / 'clean_up_start.log'}")
    found = re.search(r"removed (\d+) stale temporary", (logs / "clean_up_start.log").read_text(errors="replace"))
    return ages, int(found.group(1)) if found else 0


def read_table(path: Path, **kwargs: Any) -> pd.DataFrame:
    """The CSV at ``path``; an empty frame when it is missing or does not parse (counted by ``corrupt_files``)."""
    try:
        return pd.read_csv(path, **kwargs)
    except Exception:  # noqa: BLE001 - a missing or corrupt table then counts as all its rows missing
        return pd.DataFrame()


def keyed(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.Series:
    if frame.empty or not set(keys) <= set(frame.columns):
        return pd.Series([], dtype=str)
    return frame[list(keys)].astype(str).agg("|".join, axis=1)


def check_rows(out: Path, reference: Path, expected: set[str]) -> dict[str, Any]:
    """Jobs lost and failed, rows duplicated and missing per sweep table."""
    runs = read_table(out / RUNS_CSV, keep_default_na=False)
    keys = keyed(runs, KEYS)
    not_ok = int((runs["status"] != "ok").sum()) if "status" in runs else 0
    found: dict[str, Any] = dict(jobs_lost=len(expected - set(keys)), jobs_unexpected=len(set(keys) - expected),
                                 jobs_not_ok=not_ok, tables={})
    for name, cols in TABLE_KEYS.items():
        got, want = (keyed(read_table(folder / name, keep_default_na=False), cols) for folder in (out, reference))
        found["tables"][name] = dict(rows=len(got), duplicated=int(got.duplicated().sum()),
                                     missing=len(set(want) - set(got)), extra=len(set(got) - set(want)))
    found["rows_duplicated"] = sum(t["duplicated"] for t in found["tables"].values())
    found["rows_missing"] = sum(t["missing"] for t in found["tables"].values())
    found["leftover_latest"] = len(list((out / JOBS_DIR).glob(f"*/{LATEST_CHECKPOINT}")))
    return found


def corrupt_files(out: Path) -> dict[str, list[str]]:
    """Files of the folder that fail to load, by kind, and leftover temporaries."""
    import torch
    from PIL import Image

    def opens(path: Path) -> bool:
        try:
            if path.suffix == ".csv":
                pd.read_csv(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".pth":
                torch.load(path, weights_only=True, map_location="cpu")
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    image.verify()
            return True
        except Exception:  # noqa: BLE001 - any failure to load is what is counted
            return False

    bad: dict[str, list[str]] = {kind: [] for kind in ("csv", "json", "pth", "png", "tmp")}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        kind = path.suffix.lstrip(".")
        if kind == "tmp":
            bad["tmp"].append(str(path.relative_to(out)))
        elif kind in bad and not opens(path):
            bad[kind].append(str(path.relative_to(out)))
    return bad


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in frame.columns if not c.startswith(TIMING)]
    keys = [k for k in ("model", "seed", "fold", "epoch", "case_id", "reference", "prediction") if k in keep]
    return frame[keep].sort_values(keys).reset_index(drop=True)


def differing_values(got: pd.DataFrame, want: pd.DataFrame) -> tuple[int, int, float]:
    """(values not bit-equal, values beyond rtol 1e-6, largest absolute difference) of two aligned frames."""
    if list(got.columns) != list(want.columns) or len(got) != len(want):
        return max(got.size, want.size), max(got.size, want.size), math.inf
    exact = loose = 0
    worst = 0.0
    for col in got.columns:
        a, b = got[col], want[col]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(float), b.to_numpy(float)
            same_nan = pd.isna(x) & pd.isna(y)
            diff = abs(x - y)
            exact += int(((x != y) & ~same_nan).sum())
            loose += int(((diff > RTOL * abs(y)) & ~same_nan).sum() + (pd.isna(x) != pd.isna(y)).sum())
            worst = max(worst, float(pd.Series(diff).max(skipna=True) or 0.0))
        else:
            n = int((a.astype(str) != b.astype(str)).sum())
            exact, loose = exact + n, loose + n
    return exact, loose, worst


def same_checkpoint(path: Path, reference: Path) -> bool:
    """Whether ``path`` exists and holds the same keys, bit-equal tensors and metadata as ``reference``."""
    import torch

    if not path.is_file():
        return False
    try:
        a = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - unreadable: not the same (and counted by ``corrupt_files``)
        return False
    b = torch.load(reference, weights_only=True, map_location="cpu")
    weights_a, weights_b = a["state_dict"], b["state_dict"]
    return (a.keys() == b.keys() and weights_a.keys() == weights_b.keys() and a["meta"] == b["meta"]
            and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_b))


def check_values(out: Path, reference: Path) -> dict[str, Any]:
    """Metric values and best checkpoints of the soaked sweep against the reference."""
    import torch

    tables = {}
    for name in (*TABLE_KEYS, "model_comparison.csv"):
        got, want = read_table(out / name), comparable(pd.read_csv(reference / name))
        tables[name] = differing_values(comparable(got) if not got.empty else got, want)
    same = differ = 0
    for ref in sorted(reference.glob("*_best.pth")):
        if same_checkpoint(out / ref.name, ref):
            same += 1
        else:
            differ += 1
    return dict(tables=tables, checkpoints_equal=same, checkpoints_differ=differ)


def report(args: argparse.Namespace, jobs: int, reference: Attempt, soaked: Soak, rows: dict[str, Any],
           bad: dict[str, list[str]], values: dict[str, Any]) -> bool:
    kills = soaked.kills
    print(f"\n## Soak: {jobs} jobs, seed {args.seed}, delays U({args.min_delay:g}, {args.max_delay:g}) s\n")
    print("| run | starts | kills | wall s | CPU s (children) | wall / reference | CPU / reference |")
    print("|---|---|---|---|---|---|---|")
    print(f"| reference, uninterrupted | 1 | 0 | {reference.wall_s:.1f} | {reference.cpu_s:.1f} | 1.00 | 1.00 |")
    wall, cpu = soaked.total("wall_s"), soaked.total("cpu_s")
    print(f"| soak (SIGKILL + --resume) | {len(soaked.attempts)} | {len(kills)} | {wall:.1f} | {cpu:.1f} | "
          f"{wall / reference.wall_s:.2f} | {cpu / reference.cpu_s:.2f} |")
    phases: dict[str, int] = {}
    for attempt in kills:
        phases[attempt.phase] = phases.get(attempt.phase, 0) + 1
    by_phase = ", ".join(f"{p} {n}" for p, n in sorted(phases.items(), key=lambda x: -x[1]))
    print(f"\nkills by phase: {by_phase or 'none'}")
    resumed = sum(len(re.findall(r"resuming after epoch", p.read_text(errors="replace")))
                  for p in sorted((args.logs).glob("attempt_*.log")))
    print(f"jobs continued from latest.pth (killed mid-job, resumed after an epoch): {resumed}")
    if kills:
        print(f"mean time between kills: {sum(a.wall_s for a in kills) / len(kills):.1f} s")
    corrupt = sum(len(v) for v in bad.values())
    print("\n| check | count |\n|---|---|")
    print(f"| jobs lost (expected key without a row) | {rows['jobs_lost']} |")
    print(f"| jobs not ok / unexpected keys | {rows['jobs_not_ok']} / {rows['jobs_unexpected']} |")
    print(f"| rows duplicated (all sweep tables) | {rows['rows_duplicated']} |")
    print(f"| rows missing against the reference (all sweep tables) | {rows['rows_missing']} |")
    print(f"| corrupt files (csv {len(bad['csv'])}, json {len(bad['json'])}, pth {len(bad['pth'])}, png "
          f"{len(bad['png'])}, leftover tmp {len(bad['tmp'])}) | {corrupt} |")
    print(f"| leftover latest.pth | {rows['leftover_latest']} |")
    ages = f", {min(soaked.tmp_ages):.0f}-{max(soaked.tmp_ages):.0f} s old" if soaked.tmp_ages else ""
    print(f"| temporaries of killed writes in the results root after the soak (kept by design while younger than "
          f"{STALE_TMP_AGE_S:.0f} s{ages}) / removed by a start once aged past it | {len(soaked.tmp_ages)} / "
          f"{soaked.tmp_removed} |")
    print(f"| best checkpoints bit-identical to the reference | {values['checkpoints_equal']} of "
          f"{values['checkpoints_equal'] + values['checkpoints_differ']} |")
    print("\n| table | rows | duplicated | missing | values not bit-equal | beyond rtol 1e-6 | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, (exact, loose, worst) in values["tables"].items():
        t = rows["tables"].get(name, dict(rows="", duplicated="", missing=""))
        print(f"| {name} | {t['rows']} | {t['duplicated']} | {t['missing']} | {exact} | {loose} | {worst:.3g} |")
    for kind, paths in bad.items():
        for path in paths[:10]:
            print(f"corrupt {kind}: {path}")
    loose = sum(v[1] for v in values["tables"].values())
    counts = (rows["jobs_lost"], rows["jobs_not_ok"], rows["jobs_unexpected"], rows["rows_duplicated"],
              rows["rows_missing"], corrupt, rows["leftover_latest"], loose, values["checkpoints_differ"])
    ok = not any(counts) and len(soaked.tmp_ages) == soaked.tmp_removed
    print(f"\nresult: {'PASS' if ok else 'FAIL'}")
    return ok


def run(args: argparse.Namespace, work: Path) -> None:
    seeds = math.ceil(args.jobs / len(MODELS))
    jobs, cache = seeds * len(MODELS), work / "cache"
    import torch

    work.mkdir(parents=True, exist_ok=True)
    print(f"# bench_soak  {datetime.now().isoformat(timespec='seconds')}  ({jobs} jobs, seed {args.seed})")
    print(f"machine: {platform.platform()} | cpu_count {os.cpu_count()} | torch {torch.__version__} | "
          f"python {platform.python_version()} | threads per sweep {args.threads} | work {work}")
    warm = run_once(sweep_flags(work / "warmup", cache, 1, 1), work / "warmup.log", args.threads, None)
    if warm.rc != 0:
        raise RuntimeError(f"the cache warm-up failed; see {work / 'warmup.log'}")
    flags = sweep_flags(work / "reference", cache, seeds, args.epochs)
    load = os.getloadavg()[0]
    reference = run_once(flags, work / "reference.log", args.threads, None)
    if reference.rc != 0:
        raise RuntimeError(f"the reference sweep failed ({reference.rc}); see {work / 'reference.log'}")
    print(f"reference: {reference.wall_s:.1f} s wall, {reference.cpu_s:.1f} s CPU (load before {load:.2f})")
    out, args.logs = work / "soak", work / "soak_logs"
    load = os.getloadavg()[0]
    soaked = soak(sweep_flags(out, cache, seeds, args.epochs), out, args.logs, args)
    print(f"soak done (load before {load:.2f}, after {os.getloadavg()[0]:.2f}); one clean-up start, then the checks")
    soaked.tmp_ages, soaked.tmp_removed = clean_up_start(sweep_flags(out, cache, seeds, args.epochs), out, args.logs,
                                                         args.threads)
    expected = {f"{m}|{s}|" for m in MODELS for s in range(1, seeds + 1)}
    ok = report(args, jobs, reference, soaked, check_rows(out, work / "reference", expected), corrupt_files(out),
                check_values(out, work / "reference"))
    if not ok:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs of the sweep (rounded up to a multiple of 2)")
    parser.add_argument("--quick", action="store_true", help="20 jobs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--min_delay", type=float, default=5.0, help="shortest delay before a kill, s")
    parser.add_argument("--max_delay", type=float, default=45.0, help="longest delay before a kill, s")
    parser.add_argument("--max_kills", type=int, default=150, help="after this many kills the sweep runs to its end")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per job")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each sweep process")
    parser.add_argument("--workdir", default=None, help="keep the folders here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs = 20
    if not 0 < args.min_delay <= args.max_delay:
        parser.error("need 0 < --min_delay <= --max_delay")
    run_in_workdir(run, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
