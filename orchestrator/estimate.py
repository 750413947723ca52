"""How long a sweep will take, before it starts: from earlier runs in its storage.

A trial's time is read from the run records (``dotsim_run.json``) of earlier runs with
the same time-relevant config (the data, model size, batch, epochs, workers, CPUs or GPU
and protocol; not the variant or seed, which barely change it): each launch that trained
a run from its first to its last epoch says how long it took, start to end, Ray Train's
start, data, epochs and final evaluations included. Needs neither Ray nor torch.
"""

from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass

import pyarrow.fs as pafs

from orchestrator.results import RECORD_FILE, RUNS_NAME
from workers import storage
from workers.config import RunConfig

# the config fields that set how long a run takes
TIME_FIELDS = ("data", "preset", "epochs", "batch_size", "clips_per_class", "workers",
               "cpus_per_worker", "threads_per_worker", "gpu", "bf16", "protocol",
               "episodes", "shots", "ways", "sessions", "base_classes", "frames_per_token")


@dataclass(frozen=True)
class TrialTime:
    """What earlier runs say a trial of this config takes."""

    seconds: float | None  # the median whole-run launch; None without earlier runs
    runs: int  # how many launches it is the median of
    where: str  # the storage searched


def trial_time(cfg: RunConfig) -> TrialTime:
    """The median time of whole-run launches of ``cfg``'s time-relevant config, among the
    runs in its storage path (runs of ``dotsim train`` and sweep trials)."""
    seconds = [s for record in _records(cfg.storage_path) if _same_cost(record, cfg)
               for s in _whole_launches(record)]
    return TrialTime(statistics.median(seconds) if seconds else None, len(seconds),
                     cfg.storage_path)


def _same_cost(record: dict, cfg: RunConfig) -> bool:
    saved = record.get("config", {})
    mine = cfg.to_dict()
    return all(saved.get(name) == mine.get(name) for name in TIME_FIELDS)


def _whole_launches(record: dict) -> list[float]:
    return [launch["seconds"] for launch in record.get("launches", [])
            if "seconds" in launch and launch.get("epochs_done_before") == 0
            and launch.get("epochs_done_after") == record["config"]["epochs"]]


def _records(root: str) -> list[dict]:
    """Run records at ``root/<run>/`` and ``root/<sweep>/runs/<trial>/``."""
    records = []
    for folder in _folders(root):
        for run in [folder, *_folders(storage.join(folder, RUNS_NAME))]:
            path = storage.join(run, RECORD_FILE)
            if storage.exists(path):
                records.append(storage.read_json(path))
    return records


def _folders(location: str) -> list[str]:
    fs, path = storage.filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [storage.join(location, info.base_name) for info in infos
            if info.type == pafs.FileType.Directory]


def duration(seconds: float | None) -> str:
    """``42 s``, ``7 min``, ``2.5 h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def wall_time(trials: float, at_once: int, per_trial: float) -> float:
    """Trials of ``per_trial`` seconds, ``at_once`` at a time: whole rounds of them."""
    return math.ceil(trials / max(at_once, 1)) * per_trial


def time_lines(counts: dict[str, float], at_once: int, time: TrialTime) -> list[str]:
    """The trial counts (``{"at least": 15, "expected": 31.2, "at most": 100}``, or
    ``{"": 12}`` for a grid) and, when
    earlier runs say how long a trial takes, the time each needs ``at_once`` at a time."""
    trials = ", ".join(f"{label} {math.ceil(n)}".strip() for label, n in counts.items())
    if time.seconds is None:
        return [f"trials: {trials}",
                f"time: no earlier run of this config in {time.where} says how long a trial "
                "takes; one `dotsim train` with the same options (any variant) gives it"]
    spans = ", ".join(f"{label} {duration(wall_time(n, at_once, time.seconds))}".strip()
                      for label, n in counts.items())
    return [f"trials: {trials}",
            f"time at {at_once} at a time: {spans} (a trial takes about "
            f"{duration(time.seconds)}: the median of {time.runs} earlier "
            f"run{'s' if time.runs != 1 else ''} of this config in {time.where})"]


def seed_spread(cfg: RunConfig, metric: str) -> tuple[float | None, int]:
    """The spread of ``metric`` across seeds in earlier sweeps of ``cfg``'s time-relevant
    config in its storage: the pooled standard deviation over seeds within each variant
    (and grid point), and the number of trials it rests on. (None, 0) without any."""
    import pandas as pd

    from orchestrator.results import RESULTS_FILE, SWEEP_FILE

    squares, df, trials = 0.0, 0, 0
    for folder in _folders(cfg.storage_path):
        definition, results = (storage.join(folder, SWEEP_FILE),
                               storage.join(folder, RESULTS_FILE))
        if not (storage.exists(definition) and storage.exists(results)):
            continue
        if not _same_cost({"config": storage.read_json(definition)["base"]}, cfg):
            continue
        frame = pd.read_parquet(io.BytesIO(storage.read_bytes(results)))
        if metric not in frame:
            continue
        # each finished trial's last epoch (some metrics are in every epoch's row)
        finals = frame[frame["status"] == "FINISHED"].sort_values("epoch") \
            .groupby("trial").tail(1).dropna(subset=[metric])
        for _, group in finals.groupby(["variant", "grid"]):
            values = group[metric]
            if len(values) >= 2:
                squares += float(values.var(ddof=1)) * (len(values) - 1)
                df += len(values) - 1
                trials += len(values)
    return (math.sqrt(squares / df), trials) if df else (None, 0)


def estimate(plan, at_once: int) -> dict:
    """What a sweep will run and how long it will take ``at_once`` trials at a time:
    ``{"trials": {label: count}, "trial_seconds", "runs", "seconds": {label: wall
    seconds} (empty without earlier runs), "lines": the words}``."""
    time = trial_time(plan.base)
    race, lines = plan.race, []
    if race is None:
        counts = {"": len(plan.trials)}
    else:
        counts, lines = _race_counts(plan)
    seconds = ({label: wall_time(n, at_once, time.seconds) for label, n in counts.items()}
               if time.seconds is not None else {})
    return {"trials": counts, "trial_seconds": time.seconds, "runs": time.runs,
            "seconds": seconds, "lines": lines + time_lines(counts, at_once, time)}


def _race_counts(plan) -> tuple[dict[str, float], list[str]]:
    from orchestrator.decide import expected_trials
    from orchestrator.race import arm_label

    race = plan.race
    arms = [arm_label(race, a, plan.base) + (" (baseline)" if a == 0 else "")
            for a in range(len(race.arms))]
    counts = {"at least": len(race.arms) * race.min_seeds}
    spread, trials = seed_spread(plan.base, race.metric)
    lines = [f"arms: {', '.join(arms)}"]
    if spread is None:
        lines.append(f"expected trials: no earlier sweep of this config in "
                     f"{plan.base.storage_path} shows how {race.metric} varies across seeds")
    else:
        # per-seed differences of two arms spread sqrt(2) times one arm's values when
        # their seeds are unrelated; shared seeds make them closer, so this errs long
        expected = expected_trials(race.rule(), [0.0] * (len(race.arms) - 1),
                                   math.sqrt(2) * spread)
        counts["expected"] = expected["mean"]
        lines.append(f"expected: if no variant differs from the baseline, with the spread "
                     f"of {race.metric} across seeds in {trials} earlier trials of this "
                     f"config (sd {spread:.3g}); trials still running when a comparison is "
                     "decided come on top")
    counts["at most"] = len(race.arms) * race.max_seeds
    return counts, lines


def dry_run_lines(plan, address: str | None) -> list[str]:
    """``dotsim sweep --dry-run``: the plan and its estimate, with no Ray started and
    nothing written. The concurrency is this machine's (a local Ray would get its CPUs);
    a cluster's is not known before connecting, so --max-concurrent (else 1) is taken."""
    from orchestrator.plan import concurrency, local_cpus
    from orchestrator.progress import plan_line

    if address:
        at_once = plan.max_concurrent or 1
        note = [] if plan.max_concurrent else [
            "a cluster's concurrency is known once connected: times assume 1 trial at a "
            "time; give --max-concurrent to plan with more"]
    else:
        resources = {"CPU": local_cpus(plan.base), "GPU": _local_gpus(plan.base)}
        at_once, note = concurrency(plan.base, plan.possible_trials(), resources,
                                    plan.max_concurrent), []
    head = plan_line(len(plan.possible_trials()), at_once, plan.folder, race=plan.race)
    data = [] if plan.base.data else [
        "data: the synthetic corpus, prepared when the sweep starts (about a minute)"]
    return ["dry run: nothing started, nothing written", head.splitlines()[0], *data,
            *estimate(plan, at_once)["lines"], *note]


def _local_gpus(cfg: RunConfig) -> int:
    if not cfg.gpu:
        return 0
    import torch

    return torch.cuda.device_count()
