"""A sweep folder's own files, readable without Ray or torch (``dotsim report`` reads them).

Sweep folder::

    sweep.json        the sweep's definition (base config, trials, scheduler, study)
    tune/             Tune's state (Tuner.restore) and TensorBoard event files per trial
    runs/<trial>/     each trial's Ray Train run (checkpoints with the epoch history)
    results.parquet   one row per trial and epoch: variant fields, seed, status, metrics
    timing.json       the time estimated when the sweep started, and each session's span

A trial ends FINISHED (every epoch and the final metrics), STOPPED (ended early by the
ASHA scheduler), ERROR (its run failed; the error's last line is kept) or UNFINISHED
(interrupted). Every trial has rows in results.parquet, whatever its status.
"""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.variants import grid_point
from workers import storage
from workers.clock import utc_iso
from workers.config import RunConfig
from workers.errors import InputError
from workers.metrics import FSKIL_DETAIL

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.parquet"
TUNE_NAME = "tune"
RUNS_NAME = "runs"
TIMING_FILE = "timing.json"
RECORD_FILE = "dotsim_run.json"  # in every run folder: its config and launches
STATUSES = ("FINISHED", "STOPPED", "ERROR", "UNFINISHED")


def read_definition(sweep_dir: str) -> dict:
    path = storage.join(sweep_dir, SWEEP_FILE)
    if not storage.exists(path):
        raise InputError(f"{sweep_dir} is not a dotsim sweep folder (no {SWEEP_FILE})")
    return storage.read_json(path)


def check_new_sweep(sweep_dir: str) -> None:
    """A sweep starts only in a folder that holds none: another sweep's state would be
    mixed into it."""
    if storage.exists(storage.join(sweep_dir, SWEEP_FILE)):
        raise InputError(f"{sweep_dir} already holds a sweep; pass --resume to continue it "
                         "or choose another --name")


def sweep_base(sweep_dir: str) -> RunConfig:
    """The base config a sweep was started with (its trackers among it)."""
    return RunConfig.from_dict(read_definition(sweep_dir)["base"])


def session_started(sweep_dir: str, estimate: dict | None = None) -> None:
    """A driver starts (or resumes) the sweep: a new session in timing.json; the first
    one keeps the estimate printed at the start."""
    path = storage.join(sweep_dir, TIMING_FILE)
    timing = storage.read_json(path) if storage.exists(path) else {"sessions": []}
    if estimate is not None:
        timing["estimate"] = {k: v for k, v in estimate.items() if k != "lines"}
    timing["sessions"].append({"started": utc_iso(), "ended": None})
    storage.write_json(path, timing)


def session_ended(sweep_dir: str) -> None:
    path = storage.join(sweep_dir, TIMING_FILE)
    timing = storage.read_json(path)
    timing["sessions"][-1]["ended"] = utc_iso()
    storage.write_json(path, timing)


def read_timing(sweep_dir: str) -> dict | None:
    """timing.json with ``seconds``: the sum of the sessions that ended (None if the sweep
    has none: one started before dotsim kept it)."""
    path = storage.join(sweep_dir, TIMING_FILE)
    if not storage.exists(path):
        return None
    timing = storage.read_json(path)
    spans = [(datetime.datetime.fromisoformat(s["ended"])
              - datetime.datetime.fromisoformat(s["started"])).total_seconds()
             for s in timing["sessions"] if s["ended"]]
    return timing | {"seconds": sum(spans) if spans else None}


@dataclass(frozen=True)
class TrialOutcome:
    name: str
    cfg: RunConfig
    trial: dict  # the trial's own fields (variant, seed, grid values)
    status: str  # one of STATUSES
    error: str | None  # the last line of the trial's error, when it failed
    history: list[dict]


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


def load_results(sweep_dir: str):
    """results.parquet as a pandas DataFrame (one row per trial and epoch)."""
    read_definition(sweep_dir)
    path = storage.join(sweep_dir, RESULTS_FILE)
    if not storage.exists(path):
        raise InputError(f"{sweep_dir} has no {RESULTS_FILE} yet; run or resume the sweep")
    return pq.read_table(io.BytesIO(storage.read_bytes(path))).to_pandas()
