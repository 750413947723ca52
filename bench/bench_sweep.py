"""Where a sweep's trials spend their time besides training: phase by phase, per trial,
and the sweep's wall time against its summed epoch time (goal: at most 1.3x for a laptop
FSKIL sweep).

    .venv/bin/python bench/bench_sweep.py            # 3 variants x 3 seeds, 15 epochs, FSKIL
    .venv/bin/python bench/bench_sweep.py --seeds 1 --epochs 3     # a quick look

Runs ``dotsim sweep`` as a user does (a subprocess, its own local Ray) into a fresh
storage folder with ``DOTSIM_PHASES`` set, so every process of the sweep marks its phases
(``workers.phases``); then reads the marks and the trials' histories and prints Markdown
tables. Trials must run one at a time (``--max-concurrent 1``), so that each worker's
marks belong to the one trial being fitted. Epoch time is the trials' ``epoch_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from orchestrator.results import RESULTS_FILE
from workers.phases import PHASES_ENV

BIN = Path(sys.executable).parent

# (phase, from mark, to mark): one row of the table; marks are rank 0's or the trial's
PHASES = [
    ("Tune between trials (sweep start or the last trial's end -> trial start)",
     "before", "trial start"),
    ("launch before the fit (lease, run record, checkpoint checks)",
     "trial start", "fit start"),
    ("Ray Train start (controller, worker group, process group)",
     "fit start", "loop start"),
    ("data in the workers (the node's copy, the feature statistics)",
     "loop start", "data ready"),
    ("model in the workers (build, DDP wrap, checkpoint restore)",
     "data ready", "set up"),
    ("training epochs (the marks; epoch_seconds are summed below)", "epochs", None),
    ("validation passes", "validation", None),
    ("checkpoint reports (write, Ray's persisting and registering)", "reports", None),
    ("test pass (sharded over the ranks)", "last validated", "test pass"),
    ("probes (rank 0) and FSKIL sessions + log-mel baseline (rank 1), in parallel",
     "test pass", "final parts exchanged"),
    ("Ray Train end (the controller sees the end, stops the group)",
     "loop end", "fit end"),
    ("launch after the fit (run record, lease released)", "fit end", "trial end"),
]
# what rank 1 does in parallel with rank 0's probes, for the detail table
PARALLEL = [("probes, rank 0", 0, "test pass", "own final parts"),
            ("FSKIL sessions, rank 1", 1, "test pass", "fskil sessions"),
            ("log-mel baseline, rank 1", 1, "fskil sessions", "own final parts")]


def run_sweep(args, storage: Path, marks: Path) -> float:
    """``dotsim sweep`` with the marks file set; returns its wall time in seconds."""
    command = [str(BIN / "dotsim"), "sweep", "--protocol", args.protocol,
               "--variants", args.variants, "--seeds", str(args.seeds),
               "--epochs", str(args.epochs), "--workers", str(args.workers),
               "--max-concurrent", "1", "--storage-path", str(storage)]
    print("# " + " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | {PHASES_ENV: str(marks)},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def read_marks(path: Path) -> list[dict]:
    marks = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(marks, key=lambda m: m["t"])


def trials_of(marks: list[dict]) -> list[dict]:
    """Per trial: the first time of each of its marks, by whose they are ("trial", "rank0",
    "rank1"). Worker marks go to the trial whose fit started last before them."""
    trials, current, ranks = [], None, {}
    sweep_start = next(m["t"] for m in marks if m["phase"] == "sweep start")
    for m in marks:
        if m["phase"] == "trial start":
            if current is not None and "trial end" not in current["trial"]:
                raise SystemExit("two trials overlap: the bench needs --max-concurrent 1")
            before = trials[-1]["trial"]["trial end"] if trials else sweep_start
            current = {"trial": {"before": before}, "rank0": {}, "rank1": {}, "lists": {}}
            trials.append(current)
        if current is None:
            continue
        if m["rank"] is not None:
            ranks[m["pid"]] = m["rank"]
        rank = ranks.get(m["pid"])  # None: the Tune trial's process (or the driver's)
        who = "trial" if rank is None else f"rank{rank}"
        current[who].setdefault(m["phase"], m["t"])
        if who == "rank0":
            current["lists"].setdefault(m["phase"], []).append(m["t"])
    return trials


def phase_seconds(trial: dict) -> dict[str, float]:
    """Seconds of each row of PHASES in one trial."""
    r0, tr, lists = trial["rank0"], trial["trial"], trial["lists"]
    trained, validated, reported = (lists["epoch trained"], lists["validated"],
                                    lists["reported"])
    starts = [r0["set up"], *reported[:-1]]  # an epoch starts after the last report
    marks = {**tr, **r0, "last validated": validated[-1],
             "final parts exchanged": lists["final parts exchanged"][-1]}
    out = {}
    for name, start, end in PHASES:
        if start == "epochs":
            out[name] = sum(t - s for s, t in zip(starts, trained, strict=True))
        elif start == "validation":
            out[name] = sum(v - t for t, v in zip(trained, validated, strict=True))
        elif start == "reports":
            # an epoch's report follows its validation; the last follows the final parts
            after = [*validated[:-1], marks["final parts exchanged"]]
            out[name] = sum(r - a for a, r in zip(after, reported, strict=True))
        else:
            out[name] = marks[end] - marks[start]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="cosine,dot:minmax:global,ce-only")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--protocol", default="fskil")
    parser.add_argument("--keep", action="store_true", help="keep the storage folder")
    args = parser.parse_args()

    storage = Path(tempfile.mkdtemp(prefix="dotsim-bench-sweep-"))
    marks_file = storage / "phases.jsonl"
    command_wall = run_sweep(args, storage, marks_file)
    marks = read_marks(marks_file)
    trials = trials_of(marks)
    sweep = next(storage.glob("sweep-*"))
    results = pd.read_parquet(sweep / RESULTS_FILE)
    epochs = results.groupby("trial")["epoch_seconds"].sum()
    tune_wall = (next(m["t"] for m in marks if m["phase"] == "sweep end")
                 - next(m["t"] for m in marks if m["phase"] == "sweep start"))

    per_trial = [phase_seconds(t) for t in trials]
    print(f"\n{platform.machine()}, {os.cpu_count()} cores; {len(trials)} trials x "
          f"{args.epochs} epochs, {args.workers} workers, --protocol {args.protocol}\n")
    print("| phase, per trial | median s | min s | max s |\n| --- | ---: | ---: | ---: |")
    for name, *_ in PHASES:
        values = [p[name] for p in per_trial]
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{max(values):.2f} |")
    trial_wall = [t["trial"]["trial end"] - t["trial"]["before"] for t in trials]
    print(f"| whole trial, Tune's gap before it included | {statistics.median(trial_wall):.2f} "
          f"| {min(trial_wall):.2f} | {max(trial_wall):.2f} |")
    print(f"| summed epoch_seconds of a trial | {epochs.median():.2f} | {epochs.min():.2f} | "
          f"{epochs.max():.2f} |")

    print("\nIn parallel during the final evaluation (median s):\n")
    print("| part | median s |\n| --- | ---: |")
    for name, rank, start, end in PARALLEL:
        values = [t[f"rank{rank}"][end] - t[f"rank{rank}"][start] for t in trials]
        print(f"| {name} | {statistics.median(values):.2f} |")

    summed = epochs.sum()
    print("\n| measure | seconds | / summed epochs (goal <= 1.3) |\n| --- | ---: | ---: |")
    print(f"| summed epoch_seconds, all trials | {summed:.1f} | 1.00 |")
    print(f"| Tune: sweep start -> sweep end | {tune_wall:.1f} | {tune_wall / summed:.2f} |")
    print(f"| the whole `dotsim sweep` command (Ray start, report) | {command_wall:.1f} | "
          f"{command_wall / summed:.2f} |")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(storage)], check=False)
    else:
        print(f"\nkept: {storage}")


if __name__ == "__main__":
    main()
