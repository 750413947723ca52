"""``dotsim sweep``: Ray Tune over loss variants x seeds (x any other config field).

Each trial is a Tune function that runs ``launch`` (the same path as ``dotsim train``)
with ``TuneReportCallback``, which forwards every epoch's metrics to Tune (Ray 2.60,
Train V2: a Tuner no longer takes a Trainer). The Train run of a trial is named after the
trial's fields, so a restored sweep finds each trial's checkpoints and continues it.

Sweep folder::

    sweep.json        the sweep's definition (base config, trials, study)
    tune/             Tune's state (Tuner.restore) and TensorBoard event files per trial
    runs/<trial>/     each trial's Ray Train run (checkpoints with the epoch history)
    results.parquet   one row per trial and epoch: variant fields, seed, status, metrics

A trial ends FINISHED (every epoch and the final metrics), STOPPED (ended early by the
ASHA scheduler), ERROR (its run failed; the error's last line is kept) or UNFINISHED
(interrupted). Every trial has rows in results.parquet, whatever its status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray import tune

from orchestrator.cluster import HEAD_RESOURCE
from orchestrator.launch import quiet, run_history
from orchestrator.variants import grid_point, trial_name
from workers import storage
from workers.config import RunConfig
from workers.errors import InputError
from workers.metrics import FSKIL_DETAIL, SELECTION_METRIC, SELECTION_MODE, is_finished

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.parquet"
TUNE_NAME = "tune"
STATUSES = ("FINISHED", "STOPPED", "ERROR", "UNFINISHED")


# --- running -------------------------------------------------------------------------


def _run_trial(config: dict) -> None:
    """One Tune trial: ``launch`` of base config + this trial's fields. A run that had
    finished already (the sweep's driver died before Tune recorded it) trains nothing:
    its last epoch is reported to Tune, which needs a result from every trial."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.launch import launch

    cfg = _trial_config(config["base"], config["trial"], config["sweep_dir"])
    summary = launch(cfg, callbacks=[TuneReportCallback()], progress=False)
    if summary["already_finished"]:
        tune.report({k: v for k, v in summary["metrics"].items() if k != FSKIL_DETAIL})


def _trial_config(base: dict, trial: dict, sweep_dir: str) -> RunConfig:
    cfg = RunConfig.from_dict({**base, **trial})
    return cfg.replace(run_name=trial_name(cfg, trial),
                       storage_path=storage.join(sweep_dir, "runs"))


def trial_resources() -> dict[str, float]:
    """What a trial, the driver of its Train run, asks for. It only waits on its
    TorchTrainer: no CPU (Tune needs some resource in the request, so a token of memory),
    leaving every CPU to the Train workers. On a cluster from cluster.yaml, one unit of the
    head's own resource too, so that the trial and its Train controller (which Ray pins to
    the driver's node) never sit on a GPU node the autoscaler removes."""
    resources = {"CPU": 0, "memory": 2**20}
    if ray.cluster_resources().get(HEAD_RESOURCE):
        resources[HEAD_RESOURCE] = 1
    return resources


def concurrency(base: RunConfig, trials: list[dict], max_concurrent: int | None,
                elastic: bool = False) -> int:
    """Trials at once such that every trial's Train workers can be placed: Tune does
    not count them, so too many trials would wait on each other until Ray Train gives up.
    A fixed-size cluster refuses a ``max_concurrent`` it cannot place. On an ``elastic``
    cluster (one behind --address, which may autoscale) the nodes may not be there yet:
    ``max_concurrent`` is taken as given, else as many as fit now (at least 1)."""
    cpus = ray.cluster_resources().get("CPU", 1)
    gpus = ray.cluster_resources().get("GPU", 0)
    widest = max(t.get("workers", base.workers) for t in trials)
    fits = math.floor(cpus / (widest * base.cpus_per_worker) + 1e-9)
    if base.gpu:
        fits = min(fits, math.floor(gpus / widest))
    if elastic:
        return max(1, min(max_concurrent or max(fits, 1), len(trials)))
    need = f"{widest} workers x {base.cpus_per_worker} CPUs" + (
        f" and {widest} GPUs" if base.gpu else "")
    have = f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if base.gpu else "")
    if fits < 1:
        raise InputError(f"one trial needs {need}, the cluster has {have}: lower --workers or "
                         "--cpus-per-worker")
    if max_concurrent and max_concurrent > fits:
        raise InputError(f"--max-concurrent {max_concurrent} cannot be placed: a trial needs "
                         f"{need} and the cluster has {have}, room for {fits} at once")
    return min(max_concurrent or fits, len(trials))


def build_tuner(sweep_dir: str, base: RunConfig, trials: list[dict], *, scheduler: str,
                max_concurrent: int | None, elastic: bool = False) -> tune.Tuner:
    trainable = tune.with_resources(_run_trial, trial_resources())
    return tune.Tuner(
        trainable,
        param_space={"base": base.to_dict(), "sweep_dir": sweep_dir,
                     "trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(
            metric=SELECTION_METRIC, mode=SELECTION_MODE, scheduler=_scheduler(scheduler, base),
            max_concurrent_trials=concurrency(base, trials, max_concurrent, elastic),
            trial_dirname_creator=_dirname, trial_name_creator=_dirname,
        ),
        # max_failures=0: a trial whose Train run failed (after its own restarts) is an
        # ERROR at once, reported and re-run by --resume, not silently retried
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=sweep_dir,
                                  failure_config=tune.FailureConfig(max_failures=0),
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
    raise InputError(f"unknown scheduler {name!r}; allowed: fifo, asha")


def run_sweep(sweep_dir: str, base: RunConfig, trials: list[dict], *, scheduler: str = "fifo",
              max_concurrent: int | None = None, study: str | None = None,
              elastic: bool = False) -> list[TrialOutcome]:
    """Start a new sweep in ``sweep_dir`` and run it to the end; returns every trial's
    outcome (results.parquet is written). Raises ``SweepInterrupted`` or ``SweepFailed``
    after writing the results when trials are left over or failed."""
    sweep_dir = storage.resolve(sweep_dir)
    if storage.exists(storage.join(sweep_dir, SWEEP_FILE)):
        raise InputError(f"{sweep_dir} already holds a sweep; pass --resume to continue it "
                         "or choose another --name")
    definition = {"base": base.to_dict(), "trials": trials, "scheduler": scheduler,
                  "max_concurrent": max_concurrent, "study": study}
    tuner = build_tuner(sweep_dir, base, trials, scheduler=scheduler,
                        max_concurrent=max_concurrent, elastic=elastic)
    storage.write_json(storage.join(sweep_dir, SWEEP_FILE), definition)
    return _fit(tuner, sweep_dir)


def resume_sweep(sweep_dir: str) -> list[TrialOutcome]:
    """Continue a sweep: finished trials stay; unfinished and errored ones continue from
    their last checkpoint (their Train run names are stable)."""
    sweep_dir = storage.resolve(sweep_dir)
    read_definition(sweep_dir)  # a clear error for a folder that is not a sweep
    tune_dir = storage.join(sweep_dir, TUNE_NAME)
    if not tune.Tuner.can_restore(tune_dir):
        raise InputError(f"{tune_dir} holds no Tune state to resume; start the sweep again")
    tuner = tune.Tuner.restore(tune_dir, tune.with_resources(_run_trial, trial_resources()),
                               resume_unfinished=True, resume_errored=True)
    return _fit(tuner, sweep_dir)


class SweepInterrupted(Exception):
    """The sweep stopped before every trial ended (Ctrl-C); it can be resumed. ``trials``:
    those that had failed by then."""

    def __init__(self, message: str, trials: list[TrialOutcome]):
        super().__init__(message)
        self.trials = trials


class SweepFailed(Exception):
    """Some trials failed; everything else is written, and --resume re-runs them."""

    def __init__(self, message: str, trials: list[TrialOutcome]):
        super().__init__(message)
        self.trials = trials


def _fit(tuner: tune.Tuner, sweep_dir: str) -> list[TrialOutcome]:
    """Run the Tuner (Tune stops gracefully on SIGINT, saving its state first); write
    results.parquet; then say what did not finish."""
    with _tune_output_to_stderr():
        tuner.fit()
    outcomes = trial_outcomes(sweep_dir)
    write_results(sweep_dir, outcomes)
    left = [o.name for o in outcomes if o.status == "UNFINISHED"]
    failed = [o for o in outcomes if o.status == "ERROR"]
    if left:
        raise SweepInterrupted(f"sweep interrupted with {len(left)} of {len(outcomes)} trials "
                               f"unfinished; continue it: dotsim sweep --resume {sweep_dir}",
                               failed)
    if failed:
        raise SweepFailed(f"{len(failed)} of {len(outcomes)} trials failed; their errors are "
                          f"in {RESULTS_FILE} and the report; after fixing the cause, re-run "
                          f"them: dotsim sweep --resume {sweep_dir}", failed)
    return outcomes


def _tune_output_to_stderr():
    """Tune prints its progress tables on stdout; stdout is for results (--json)."""
    return contextlib.redirect_stdout(sys.stderr)


def read_definition(sweep_dir: str) -> dict:
    path = storage.join(sweep_dir, SWEEP_FILE)
    if not storage.exists(path):
        raise InputError(f"{sweep_dir} is not a dotsim sweep folder (no {SWEEP_FILE})")
    return storage.read_json(path)


# --- outcomes and results -------------------------------------------------------------


@dataclass(frozen=True)
class TrialOutcome:
    name: str
    cfg: RunConfig
    trial: dict  # the trial's own fields (variant, seed, grid values)
    status: str  # one of STATUSES
    error: str | None  # the last line of the trial's error, when it failed
    history: list[dict]


def trial_outcomes(sweep_dir: str) -> list[TrialOutcome]:
    """Every trial of the sweep's definition with its status and epoch history: the
    status from Tune's saved experiment state (``ExperimentAnalysis``), the history from
    the trial's Train run (``history.json`` of its newest checkpoint)."""
    definition = read_definition(sweep_dir)
    tune_states = _tune_states(sweep_dir)
    outcomes = []
    for trial in definition["trials"]:
        cfg = _trial_config(definition["base"], trial, sweep_dir)
        history = run_history(storage.join(cfg.storage_path, cfg.run_name))
        tune_status, error = tune_states.get(cfg.run_name, ("PENDING", None))
        status, error = _status(tune_status, error, history, cfg.epochs,
                                definition["scheduler"])
        outcomes.append(TrialOutcome(cfg.run_name, cfg, trial, status, error, history))
    return outcomes


def _status(tune_status: str, error: str | None, history: list[dict], epochs: int,
            scheduler: str) -> tuple[str, str | None]:
    """(status, error) of a trial from Tune's status and its run's history."""
    if tune_status == "ERROR":
        return "ERROR", error
    if is_finished(history, epochs):
        return "FINISHED", None
    if tune_status == "TERMINATED":  # ended without its last epoch
        if scheduler == "asha":
            return "STOPPED", None  # the scheduler stopped it early
        return "ERROR", (f"the trial ended after {len(history)} of {epochs} epochs without an "
                         "error, and no scheduler stops trials early in this sweep")
    return "UNFINISHED", None


def _tune_states(sweep_dir: str) -> dict[str, tuple[str, str | None]]:
    """Trial name -> (Tune status, last line of its error) from Tune's latest saved state,
    read with Ray's public ``ExperimentAnalysis`` ({} before Tune saved any)."""
    fs, path = storage.filesystem(storage.join(sweep_dir, TUNE_NAME))
    try:
        # quiet: it warns of every trial that has reported no metrics yet
        with quiet("ray.tune", logging.ERROR):
            analysis = tune.ExperimentAnalysis(path, storage_filesystem=fs)
    except ValueError as err:
        # Tune has not saved its state yet (Ray says so only in this ValueError's text);
        # any other problem with the state is not "no trials yet"
        if "No experiment snapshot" not in str(err):
            raise
        return {}
    states = {}
    for trial in analysis.trials:
        cfg = RunConfig.from_dict({**trial.config["base"], **trial.config["trial"]})
        error = trial.get_error() if trial.status == "ERROR" else None
        states[trial_name(cfg, trial.config["trial"])] = (trial.status, last_line(error))
    return states


def last_line(text) -> str | None:
    """The last non-empty line of an error's text (where Python names the exception)."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def write_results(sweep_dir: str, outcomes: list[TrialOutcome]) -> str:
    """results.parquet: one row per trial and epoch (one row with no epoch for a trial
    that has none), tagged with the variant fields, seed, grid point, status and error."""
    rows = []
    for o in outcomes:
        tags = {"trial": o.name, "variant": o.cfg.variant, "similarity": o.cfg.similarity,
                "norm": o.cfg.norm, "scope": o.cfg.scope, "detach_stats": o.cfg.detach_stats,
                "seed": o.cfg.seed, "workers": o.cfg.workers, "epochs": o.cfg.epochs,
                "grid": json.dumps(grid_point(o.cfg, o.trial)), "status": o.status,
                "error": o.error}
        epochs = [{k: v for k, v in epoch.items() if k != FSKIL_DETAIL} for epoch in o.history]
        rows += [{**tags, **epoch} for epoch in epochs] or [{**tags, "epoch": None}]
    # the last epoch adds the final metrics: every column must be in every row (None else)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    path = storage.join(sweep_dir, RESULTS_FILE)
    storage.write_bytes(path, buffer.getvalue().to_pybytes())
    return path
