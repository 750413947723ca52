"""Sweep start-up overhead: a dotsim trial's time to its first reported metric against a
bare TorchTrainer no-op with the same workers, and the share of a sweep's wall time spent
training.

    .venv/bin/python bench/bench_sweep.py [--variants cosine,dot:minmax:global] [--epochs 3]

Both measurements run on one local Ray in the same process. Prints a Markdown table;
copy it with the machine into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import ray.train
from ray.train.torch import TorchTrainer

from orchestrator import sweep as sweeps
from orchestrator.launch import ray_session
from orchestrator.plan import SweepPlan
from orchestrator.prepare import ensure_synthetic
from orchestrator.results import RESULTS_FILE, TUNE_NAME
from orchestrator.variants import parse_grid, trial_configs
from workers.config import RunConfig


def _noop(config):
    ray.train.report({"ready": 1.0})


def bare_noop(workers: int, cpus_per_worker: float, storage: str) -> float:
    """Seconds of TorchTrainer.fit() whose workers report once and return."""
    start = time.perf_counter()
    TorchTrainer(
        _noop,
        scaling_config=ray.train.ScalingConfig(num_workers=workers,
                                               resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(name=f"noop-{time.time_ns()}", storage_path=storage),
    ).fit()
    return time.perf_counter() - start


def first_metric_seconds(sweep_dir: Path) -> pd.Series:
    """Per trial: Tune's time from the trial's start to its first result."""
    from ray import tune

    analysis = tune.ExperimentAnalysis(str(sweep_dir / TUNE_NAME))
    return pd.Series({trial: float(frame["time_this_iter_s"].iloc[0])
                      for trial, frame in analysis.trial_dataframes.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="cosine,dot:minmax:global")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    storage = tempfile.mkdtemp(prefix="dotsim-bench-sweep-")
    base = RunConfig(data=str(ensure_synthetic(progress=False)), epochs=args.epochs,
                     storage_path=storage)
    trials = trial_configs(args.variants.split(","), args.seeds, parse_grid([]))
    print(f"# {platform.machine()}, {os.cpu_count()} cores; {len(trials)} trials x "
          f"{args.epochs} epochs, {base.workers} workers x {base.cpus_per_worker} CPU")
    with ray_session(num_cpus=os.cpu_count()):
        noop = [bare_noop(base.workers, base.cpus_per_worker, storage) for _ in range(2)]
        start = time.perf_counter()
        sweeps.run_sweep(SweepPlan(folder=str(Path(storage) / "sweep"), base=base,
                                   trials=trials))
        wall = time.perf_counter() - start
    first = first_metric_seconds(Path(storage) / "sweep")
    results = pd.read_parquet(Path(storage) / "sweep" / RESULTS_FILE)
    epoch1 = results[results["epoch"] == 1].set_index("trial")["epoch_seconds"]
    startup = first - epoch1.reindex(first.index)
    training = results["epoch_seconds"].sum()
    print("\n| measure | seconds |\n| --- | ---: |")
    print(f"| bare TorchTrainer no-op fit (fastest of {len(noop)}) | {sorted(noop)[0]:.1f} |")
    print(f"| dotsim trial: start -> first metric (median) | {first.median():.1f} |")
    print(f"| of which epoch 1 training (median) | {epoch1.median():.1f} |")
    print(f"| dotsim trial start-up before training (median) | {startup.median():.1f} |")
    print(f"| sweep wall time | {wall:.1f} |")
    print(f"| summed epoch time of all trials | {training:.1f} |")
    print(f"\nstart-up / bare no-op: {startup.median() / sorted(noop)[0]:.2f} (goal <= 1.3)")
    print(f"share of the sweep's wall time spent training: {training / wall:.1%}")


if __name__ == "__main__":
    main()
