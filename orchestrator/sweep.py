"""``dotsim sweep``: Ray Tune over loss variants x seeds (x any other config field).

Each trial is a Tune function that builds a TorchTrainer and calls ``fit()`` (Ray 2.60,
Train V2: a Tuner no longer takes a Trainer); ``TuneReportCallback`` forwards every
epoch's metrics to Tune. The Train run of a trial is named after the trial's fields, so
a restored sweep finds each trial's checkpoints and continues it.

Sweep folder::

    sweep.json        the sweep's definition (base config, trials, study)
    tune/             Tune's state (Tuner.restore) and TensorBoard event files per trial
    runs/<trial>/     each trial's Ray Train run (checkpoints with the epoch history)
    results.parquet   one row per trial and epoch: variant fields, seed, every metric
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray import tune

from orchestrator.variants import VARIANT_FIELDS, trial_name
from workers.config import RunConfig
from workers.train import load_checkpoint

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.parquet"
TUNE_NAME = "tune"
# The Tune function only waits on its TorchTrainer: it asks for no CPU (Tune needs some
# resource in the request, so a token of memory), leaving every CPU to the Train workers.
TRIAL_RESOURCES = {"CPU": 0, "memory": 2**20}


# --- running -------------------------------------------------------------------------


def _run_trial(config: dict) -> None:
    """One Tune trial: a TorchTrainer run of base config + this trial's fields."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.launch import make_trainer

    cfg = _trial_config(config["base"], config["trial"], config["sweep_dir"])
    make_trainer(cfg, callbacks=[TuneReportCallback()]).fit()


def _trial_config(base: dict, trial: dict, sweep_dir: str) -> RunConfig:
    cfg = RunConfig.from_dict({**base, **trial})
    return cfg.replace(run_name=trial_name(cfg, trial),
                       storage_path=str(Path(sweep_dir) / "runs"))


def concurrency(base: RunConfig, trials: list[dict], max_concurrent: int | None,
                elastic: bool = False) -> int:
    """Trials at once such that every trial's Train workers can be placed: Tune does
    not count them, so too many trials would wait on each other forever. An ``elastic``
    (autoscaling) cluster may not have the nodes yet: there, --max-concurrent or 1."""
    cpus = ray.cluster_resources().get("CPU", 1)
    gpus = ray.cluster_resources().get("GPU", 0)
    widest = max(t.get("workers", base.workers) for t in trials)
    fits = math.floor(cpus / (widest * base.cpus_per_worker) + 1e-9)
    if base.gpu:
        fits = min(fits, math.floor(gpus / widest))
    if elastic:
        return max(1, min(max_concurrent or max(fits, 1), len(trials)))
    if fits < 1:
        gpu_need = f" and {widest} GPUs (it has {gpus:g})" if base.gpu else ""
        raise ValueError(
            f"one trial needs {widest} workers x {base.cpus_per_worker} CPUs{gpu_need}, the "
            f"cluster has {cpus:g} CPUs: lower --workers or --cpus-per-worker")
    return min(fits, max_concurrent or fits, len(trials))


def build_tuner(sweep_dir: Path, base: RunConfig, trials: list[dict], *, scheduler: str,
                max_concurrent: int | None, elastic: bool = False) -> tune.Tuner:
    trainable = tune.with_resources(_run_trial, TRIAL_RESOURCES)
    return tune.Tuner(
        trainable,
        param_space={"base": base.to_dict(), "sweep_dir": str(sweep_dir),
                     "trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", scheduler=_scheduler(scheduler, base),
            max_concurrent_trials=concurrency(base, trials, max_concurrent, elastic),
            trial_dirname_creator=_dirname, trial_name_creator=_dirname,
        ),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(sweep_dir),
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  verbose=0),
    )


def _dirname(trial) -> str:
    config = trial.config
    cfg = RunConfig.from_dict({**config["base"], **config["trial"]})
    return trial_name(cfg, config["trial"])


def _scheduler(name: str, base: RunConfig):
    if name == "fifo":
        return tune.schedulers.FIFOScheduler()
    if name == "asha":
        # exploratory grids only: stopped trials are marked and left out of comparisons
        return tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=base.epochs,
                                             grace_period=max(1, base.epochs // 4))
    raise ValueError(f"unknown scheduler {name!r}; allowed: fifo, asha")


def run_sweep(sweep_dir: Path, base: RunConfig, trials: list[dict], *, scheduler: str = "fifo",
              max_concurrent: int | None = None, study: str | None = None,
              elastic: bool = False) -> Path:
    """Start a new sweep in ``sweep_dir`` and run it to the end; returns results.parquet."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if (sweep_dir / SWEEP_FILE).exists():
        raise ValueError(f"{sweep_dir} already holds a sweep; pass --resume to continue it "
                         "or choose another --name")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    definition = {"base": base.to_dict(), "trials": trials, "scheduler": scheduler,
                  "max_concurrent": max_concurrent, "study": study}
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(definition, indent=2) + "\n")
    tuner = build_tuner(sweep_dir, base, trials, scheduler=scheduler,
                        max_concurrent=max_concurrent, elastic=elastic)
    return _fit(tuner, sweep_dir, len(trials))


def resume_sweep(sweep_dir: Path) -> Path:
    """Continue an interrupted sweep: finished trials stay, unfinished ones continue from
    their last checkpoint (their Train run names are stable)."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    read_definition(sweep_dir)  # a clear error for a folder that is not a sweep
    tune_dir = sweep_dir / TUNE_NAME
    if not tune.Tuner.can_restore(str(tune_dir)):
        raise ValueError(f"{tune_dir} holds no Tune state to resume; start the sweep again")
    # the restored Tuner carries the trials' configs; errored trials continue too
    tuner = tune.Tuner.restore(str(tune_dir), tune.with_resources(_run_trial, TRIAL_RESOURCES),
                               resume_unfinished=True, resume_errored=True)
    return _fit(tuner, sweep_dir, len(read_definition(sweep_dir)["trials"]))


class SweepInterrupted(Exception):
    """The sweep stopped before every trial ended (Ctrl-C); it can be resumed."""


def _fit(tuner: tune.Tuner, sweep_dir: Path, trials: int) -> Path:
    """Run the Tuner; write results.parquet; SweepInterrupted when trials are left over
    (Tune stops gracefully on SIGINT and saves its state first)."""
    with _tune_output_to_stderr():
        tuner.fit()
    path = collect_results(sweep_dir)
    unfinished = unfinished_trials(sweep_dir)
    if unfinished:
        raise SweepInterrupted(f"sweep interrupted with {len(unfinished)} of {trials} trials "
                               f"unfinished; continue it: dotsim sweep --resume {sweep_dir}")
    return path


def trial_statuses(sweep_dir: Path) -> dict[str, str]:
    """Trial folder name -> status in Tune's latest saved experiment state ({} before any)."""
    states = sorted((Path(sweep_dir) / TUNE_NAME).glob("experiment_state-*.json"))
    if not states:
        return {}
    trials = [json.loads(t[0]) for t in json.loads(states[-1].read_text())["trial_data"]]
    return {t.get("custom_dirname") or t["trial_id"]: t["status"] for t in trials}


def unfinished_trials(sweep_dir: Path) -> list[str]:
    """Trials that Tune's saved experiment state does not record as ended (TERMINATED,
    which includes ASHA's early stops, or ERROR). After Ctrl-C, Tune saves the state
    before it stops the running trials, so this is what a resume would continue."""
    return [name for name, status in trial_statuses(sweep_dir).items()
            if status not in ("TERMINATED", "ERROR")]


def _tune_output_to_stderr():
    """Tune prints its progress tables on stdout; stdout is for results (--json)."""
    return contextlib.redirect_stdout(sys.stderr)


def read_definition(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise ValueError(f"{sweep_dir} is not a dotsim sweep folder (no {SWEEP_FILE})")
    return json.loads(path.read_text())


# --- results -------------------------------------------------------------------------


def collect_results(sweep_dir: Path) -> Path:
    """Write results.parquet from each trial's latest checkpoint (its full epoch history).

    A trial's row set says whether it finished (``finished``: it reached its last epoch
    and has a test accuracy) or was stopped early (ASHA) or is incomplete.
    """
    sweep_dir = Path(sweep_dir)
    definition = read_definition(sweep_dir)
    rows = []
    for trial in definition["trials"]:
        cfg = _trial_config(definition["base"], trial, str(sweep_dir))
        history = run_history(Path(cfg.storage_path) / cfg.run_name)
        finished = bool(history) and "test_acc" in history[-1]
        for epoch_metrics in history:
            rows.append({
                "trial": cfg.run_name, "variant": cfg.variant, "similarity": cfg.similarity,
                "norm": cfg.norm, "scope": cfg.scope, "detach_stats": cfg.detach_stats,
                "seed": cfg.seed, "workers": cfg.workers, "epochs": cfg.epochs,
                "grid": json.dumps({k: v for k, v in trial.items()
                                    if k not in (*VARIANT_FIELDS, "seed")}, sort_keys=True),
                "finished": finished, **epoch_metrics,
            })
    # the last epoch adds test metrics: every column must be in every row (None elsewhere)
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["trial"]
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows],
                                 schema=None if rows else pa.schema([("trial", pa.string())]))
    tmp = sweep_dir / (RESULTS_FILE + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, sweep_dir / RESULTS_FILE)
    return sweep_dir / RESULTS_FILE


def run_history(run_dir: Path) -> list[dict]:
    """The epoch history in a Train run folder's newest checkpoint ([] when none)."""
    # Ray names checkpoints checkpoint_<fixed-width timestamp>: the last in order is newest
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if (p / "state.pt").is_file())
    if not checkpoints:
        return []
    return load_checkpoint(checkpoints[-1])["history"]
