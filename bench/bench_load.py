"""Load: a sweep of many short trials on one local Ray, checking that nothing leaks.

    .venv/bin/python bench/bench_load.py [--trials 20] [--epochs 2]

Reports, before and after the sweep (after a one-trial warm-up that fills Ray's worker
pool): processes under this driver, placement groups not removed, open file descriptors
of the driver, its RSS; and the peak RSS per epoch of the training workers. Goal: nothing
leaked, memory flat. ``tests/test_load.py`` runs the same check on a 3-trial sweep.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
from ray.util import placement_group_table

from orchestrator import sweep as sweeps
from orchestrator.launch import ray_session
from orchestrator.plan import SweepPlan
from orchestrator.prepare import ensure_synthetic
from orchestrator.results import RESULTS_FILE
from orchestrator.variants import trial_configs
from workers.config import RunConfig


def snapshot() -> dict:
    """What a leak would grow: processes, live placement groups, fds, driver RSS."""
    me = psutil.Process()
    return {
        "processes": len(me.children(recursive=True)),
        "placement_groups": sum(pg["state"] != "REMOVED"
                                for pg in placement_group_table().values()),
        "driver_fds": me.num_fds(),
        "driver_rss_mb": me.memory_info().rss / 2**20,
    }


def sweep(base: RunConfig, storage: Path, name: str, trials: int) -> pd.DataFrame:
    """``trials`` trials: the default variants over as many seeds as needed."""
    chosen = trial_configs(["cosine", "dot:minmax:global", "dot:minmax:local",
                            "dot:meanstd:global", "dot:meanstd:local"], trials, {})[:trials]
    sweeps.run_sweep(SweepPlan(folder=str(storage / name), base=base, trials=chosen))
    return pd.read_parquet(storage / name / RESULTS_FILE)


def run(base: RunConfig, trials: int) -> dict:
    """Warm up, snapshot, sweep ``trials`` trials, snapshot again (sweeps go under the
    config's storage path, else a new temporary folder)."""
    storage = Path(base.storage_path or tempfile.mkdtemp(prefix="dotsim-load-"))
    sweep(base, storage, "warm-up", 1)
    time.sleep(2)  # let Ray reap the warm-up's actors
    before = snapshot()
    start = time.perf_counter()
    results = sweep(base, storage, "load", trials)
    wall = time.perf_counter() - start
    time.sleep(2)
    after = snapshot()
    rss = results.groupby("epoch")["peak_rss_mb"].max()
    return {"before": before, "after": after, "wall_s": wall, "rss_by_epoch": rss,
            "trials": results["trial"].nunique()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    base = RunConfig(data=str(ensure_synthetic(progress=False)), epochs=args.epochs,
                     preset="tiny")
    print(f"# {platform.machine()}, {os.cpu_count()} cores; {args.trials} trials x "
          f"{args.epochs} epochs, preset tiny, {base.workers} workers")
    with ray_session(num_cpus=os.cpu_count()):
        out = run(base, args.trials)
    print(f"\n{out['trials']} trials in {out['wall_s']:.0f} s\n")
    print("| measure | before | after |\n| --- | ---: | ---: |")
    for key in out["before"]:
        print(f"| {key} | {out['before'][key]:.0f} | {out['after'][key]:.0f} |")
    print("\npeak worker RSS (MiB) by epoch: "
          + ", ".join(f"{e}: {v:.0f}" for e, v in out["rss_by_epoch"].items()))


if __name__ == "__main__":
    main()
