"""Planning a run or a sweep before anything trains: where it runs, on which data, in which
folder, with which trials, and whether the cluster can hold it.

The CLI and a Python caller go through these same functions, so both get the same run and
the same sweep. The order is the user's cheapest check first: the cluster address is
checked before any data is prepared, and nothing is written before every check passed
(the synthetic corpus's one-time cache aside).

    cfg = plan_run(RunConfig(scope="local"), address=None)          # then launch.train(cfg)
    sweep = plan_sweep(RunConfig(epochs=3), variants=["cosine"], seeds=2)
                                                                     # then sweep.start(sweep)
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator import variants as names
from orchestrator.race import RaceSpec
from orchestrator.results import check_new_sweep
from workers import lease, storage
from workers.config import RunConfig
from workers.errors import InputError
from workers.metrics import comparison_metrics
from workers.node_cache import copies_to_keep

STUDIES = ("world-size",)
SCHEDULERS = ("fifo", "asha")


# --- where --------------------------------------------------------------------------


def default_storage() -> str:
    """DOTSIM_STORAGE (a cluster sets it to shared storage), else ~/dotsim_results."""
    return storage.resolve(os.environ.get("DOTSIM_STORAGE") or "~/dotsim_results")


def with_storage(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its storage path resolved (the given one, or ``default_storage``)."""
    return cfg.replace(storage_path=storage.resolve(cfg.storage_path or default_storage()))


def located(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its storage path resolved and its run name (the given one, or the
    default derived from the config)."""
    return with_storage(cfg).replace(run_name=cfg.run_name or cfg.default_run_name())


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nobody answers at (``ray.init`` would retry for minutes)."""
    if not address or address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        raise InputError(f"{address}: Ray Client (ray://) is not supported, as Ray's docs "
                         "advise for Train and Tune; send the command as a job instead: "
                         "dotsim submit --address http://HEAD:8265 -- train ...")
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"bad Ray address {address!r}; write HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise InputError(f"cannot reach Ray at {address} ({err.strerror or err}); is the "
                         "cluster up, and are --address / RAY_ADDRESS right?") from err


# --- trackers -----------------------------------------------------------------------


def plan_trackers(words: Sequence[str] = (), specs: Sequence[dict] = ()) -> list[dict]:
    """The experiment trackers ``words`` name (``--tracker mlflow[:URI]``, ``wandb``), or
    ``specs`` resolved before (a sweep being resumed), each reached now: a tracker that
    cannot be used is an InputError before Ray starts and anything trains."""
    from orchestrator import trackers

    resolved = trackers.resolve(words) if words else list(specs)
    for spec in resolved:
        trackers.check(spec)
    return resolved


# --- data ---------------------------------------------------------------------------


def resolve_data(cfg: RunConfig, class_order_file: Path | None = None,
                 trials: Sequence[dict] = ({},)) -> RunConfig:
    """``cfg`` with its data folder resolved and checked (the synthetic corpus, prepared
    once, when none is given), a class-order file read against its words, and the needs
    of ``cfg`` changed by each of ``trials`` checked against its training labels (words
    for a batch, FSKIL shots): a --grid or a world size may change the batch, the
    workers or the shots, and a trial that fails on them in Tune would fail the sweep an
    hour in."""
    import torch

    from workers.fskil import read_class_order
    from workers.prepared import read_labels, read_meta
    from workers.train import check_data

    cfg = cfg.replace(data=_data_folder(cfg.data))
    meta = read_meta(cfg.data)
    if class_order_file is not None:
        if cfg.protocol != "fskil":
            raise InputError("--class-order orders the words of --protocol fskil; add it")
        cfg = cfg.replace(class_order=read_class_order(class_order_file, meta["labels"],
                                                       cfg.fskil))
    train = torch.from_numpy(read_labels(cfg.data, meta, "train"))
    for trial in trials:
        check_data(cfg.replace(**trial), meta["labels"], train)
    return cfg


def _synthetic_prepared() -> bool:
    from orchestrator.prepare import synthetic_cache

    return (synthetic_cache() / "meta.json").is_file()


def _data_folder(data: str | None) -> str:
    """An absolute, checked prepared folder; the synthetic cache when none is given."""
    from orchestrator.prepare import ensure_synthetic
    from workers.prepared import check_prepared

    if data is None:
        return str(ensure_synthetic())
    location = storage.resolve(data)
    storage.check_reachable(location)
    check_prepared(location)  # PreparedDataError (an InputError) names what is wrong
    return location


# --- a run --------------------------------------------------------------------------


def plan_run(cfg: RunConfig, *, address: str | None = None,
             class_order_file: Path | None = None, trackers: Sequence[str] = ()) -> RunConfig:
    """The run ``cfg`` describes, checked and located: address first, then the GPU, the
    trackers (``--tracker`` words), the storage and the data, which may take minutes to
    prepare, then that no other live launch holds the run folder (nothing is written
    before all of them passed)."""
    check_address(address)
    if cfg.gpu and not address and not _local_gpu():
        raise InputError("--gpu asked for, but this machine has no CUDA GPU; use --cpu or "
                         "--address of a GPU cluster")
    cfg = cfg.replace(trackers=plan_trackers(trackers, cfg.trackers))
    copies_to_keep()  # read by the workers, which a local Ray starts with this environment
    storage.check_writable(with_storage(cfg).storage_path)
    cfg = located(resolve_data(cfg, class_order_file))
    # refused now, not after Ray has started; launch takes the lease itself
    lease.check_free(storage.join(cfg.storage_path, cfg.run_name), "run")
    return cfg


def _local_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def local_cpus(cfg: RunConfig) -> int:
    """A local Ray gets this machine's CPUs, and never fewer than the workers need."""
    return max(os.cpu_count() or 1, math.ceil(cfg.workers * cfg.cpus_per_worker))


def concurrency(base: RunConfig, trials: list[dict], resources: dict[str, float],
                max_concurrent: int | None = None, *, elastic: bool = False) -> int:
    """Runs at once such that every run's Train workers can be placed on a cluster with
    ``resources`` (``ray.cluster_resources()``): Tune does not count them, so too many
    trials would wait on each other until Ray Train gives up.

    A fixed-size cluster refuses a run it cannot place, and a ``max_concurrent`` above
    what fits. On an ``elastic`` cluster (one behind --address, which may autoscale) the
    nodes may not be there yet: ``max_concurrent`` is taken as given, else as many as fit
    now (at least 1).
    """
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    widest = max(t.get("workers", base.workers) for t in trials)
    fits = math.floor(cpus / (widest * base.cpus_per_worker) + 1e-9)
    if base.gpu:
        fits = min(fits, math.floor(gpus / widest))
    if elastic:
        return max(1, min(max_concurrent or max(fits, 1), len(trials)))
    need = f"{widest} workers x {base.cpus_per_worker:g} CPUs" + (
        f" and {widest} GPUs" if base.gpu else "")
    have = f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if base.gpu else "")
    if fits < 1:
        raise InputError(f"a run of {need} does not fit: the cluster has {have}; lower "
                         "--workers or --cpus-per-worker")
    if max_concurrent and max_concurrent > fits:
        raise InputError(f"--max-concurrent {max_concurrent} cannot be placed: a trial needs "
                         f"{need} and the cluster has {have}, room for {fits} at once")
    return min(max_concurrent or fits, len(trials))


# --- a sweep ------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """A sweep as it is started and saved (``sweep.json``): its folder, the base config,
    the trials (each a dict of the fields it changes), the scheduler, the concurrency
    asked for, and the study it belongs to. A race (``--until-decided``) has no fixed
    trials: its ``race`` says which arms it runs seeds of, and until when."""

    folder: str
    base: RunConfig
    trials: list[dict]
    scheduler: str = "fifo"
    max_concurrent: int | None = None
    study: str | None = None
    race: RaceSpec | None = None

    def definition(self) -> dict:
        return {"base": self.base.to_dict(), "trials": self.trials,
                "scheduler": self.scheduler, "max_concurrent": self.max_concurrent,
                "study": self.study, "race": self.race.to_dict() if self.race else None}

    def possible_trials(self) -> list[dict]:
        """Every trial the sweep may run: a race's arms at every seed of its budget."""
        if self.race is None:
            return self.trials
        return [self.race.trial(arm, seed) for arm in range(len(self.race.arms))
                for seed in range(self.race.max_seeds)]


@dataclass(frozen=True)
class Until:
    """``--until-decided``: race the arms over seeds until each comparison with the
    baseline is decided (``orchestrator.race``)."""

    max_seeds: int = 20
    margin: float = 0.01
    alpha: float = 0.05
    metric: str | None = None  # default: the protocol's first comparison metric
    baseline: str | None = None  # a variant; default: cosine if raced, else the first


def plan_sweep(base: RunConfig, *, variants: list[str] | None = None,
               seeds: int | None = None, grid: list[str] = (), with_detached: bool = False,
               study: str | None = None, world_sizes: str | list[int] = (1, 2, 4),
               scheduler: str = "fifo", max_concurrent: int | None = None,
               name: str | None = None, address: str | None = None,
               class_order_file: Path | None = None, trackers: Sequence[str] = (),
               until: Until | None = None, dry_run: bool = False) -> SweepPlan:
    """The sweep of ``variants`` x ``seeds`` (default 3) (x ``grid`` items ``KEY=V1,V2``)
    over ``base``; with ``until``, a race of those arms over seeds instead.

    ``study="world-size"`` runs the same global batch at ``world_sizes`` with dropout off
    (so the distance from world size 1 is the variant's, not dropout's), over
    ``variants.STUDY_VARIANTS`` unless variants are given. Checks everything a trial would
    fail on, the address before the trackers (``--tracker`` words), the trackers before the
    data. ``dry_run`` writes nothing: the storage is not probed, and without ``--data``
    the synthetic corpus is checked only if it was prepared before.
    """
    check_address(address)
    _choice("scheduler", scheduler, SCHEDULERS)
    if study is not None:
        _choice("study", study, STUDIES)
    if seeds is not None and seeds < 1:
        raise InputError(f"--seeds must be >= 1; got {seeds}")
    if max_concurrent is not None and max_concurrent < 1:
        raise InputError(f"--max-concurrent must be >= 1; got {max_concurrent}")
    chosen = list(variants or (names.STUDY_VARIANTS if study else names.DEFAULT_VARIANTS))
    if with_detached:
        chosen += [v + ":detached" for v in chosen if v.count(":") == 2]
    sizes = parse_world_sizes(world_sizes) if study == "world-size" else None
    race = None
    if until is not None:
        _check_race(seeds, study, scheduler)
        arms = names.trial_configs(chosen, 1, names.parse_grid(list(grid)), None, base)
        race = race_spec(base, arms, until)
        trials = [race.trial(arm, 0) for arm in range(len(race.arms))]  # checked below
    else:
        trials = names.trial_configs(chosen, seeds or 3, names.parse_grid(list(grid)), sizes,
                                     base)
    base = base.replace(trackers=plan_trackers(trackers, base.trackers))
    if sizes:
        base = base.replace(dropout=0.0)
    copies_to_keep()
    base = with_storage(base)
    if not dry_run:
        storage.check_writable(base.storage_path)
    folder = storage.join(base.storage_path,
                          name or "sweep-" + time.strftime("%Y-%m-%d_%H-%M-%S"))
    lease.check_free(folder, "sweep")  # a live sweep there: who holds it, not "--resume"
    check_new_sweep(folder)
    if not (dry_run and base.data is None and not _synthetic_prepared()):
        base = resolve_data(base, class_order_file, trials)
    return SweepPlan(folder=folder, base=base, trials=[] if race else trials,
                     scheduler=scheduler, max_concurrent=max_concurrent, study=study,
                     race=race)


def _check_race(seeds: int | None, study: str | None, scheduler: str) -> None:
    if seeds is not None:
        raise InputError("--seeds fixes the seeds per variant; --until-decided chooses them "
                         "(its budget per arm is --max-seeds): give one of the two")
    if study is not None:
        raise InputError("--until-decided compares variants; --study measures one effect "
                         "at fixed seeds: give one of the two")
    if scheduler != "fifo":
        raise InputError("--until-decided needs every trial's final metric: use --scheduler "
                         "fifo (asha stops trials before it)")


def race_metrics(protocol: str) -> tuple[str, ...]:
    """What a race may compare on (each higher-is-better, in every trial's last result and
    in the report's table of trials): the protocol's comparison metrics, accuracy, and how
    well emb_rec matches emb."""
    return tuple(dict.fromkeys([*comparison_metrics(protocol), "test_acc", "val_acc",
                                "train_cos_rec"]))


def race_spec(base: RunConfig, trials: list[dict], until: Until) -> RaceSpec:
    """The race over the arms of ``trials`` (seed 0 each), the baseline's first."""
    arms = [{k: v for k, v in t.items() if k != "seed"} for t in trials]
    variants = [base.replace(**arm).variant for arm in arms]
    baseline = until.baseline or ("cosine" if "cosine" in variants else variants[0])
    if baseline not in variants:
        raise InputError(f"--baseline {baseline!r} is not among the raced variants: "
                         f"{', '.join(dict.fromkeys(variants))}")
    if len(arms) < 2:
        raise InputError("--until-decided compares arms with a baseline: give at least two "
                         "variants (or grid points)")
    first = variants.index(baseline)  # with a --grid, the baseline's first grid point
    arms.insert(0, arms.pop(first))
    metric = until.metric or comparison_metrics(base.protocol)[0]
    _choice("metric", metric, race_metrics(base.protocol))
    spec = RaceSpec(arms=arms, metric=metric, margin=until.margin, alpha=until.alpha,
                    max_seeds=until.max_seeds)
    try:
        return spec.calibrated()
    except ValueError as err:  # the rule names the allowed range of the value
        raise InputError(str(err)) from err


def fit_study(plan: SweepPlan, resources: dict[str, float]) -> SweepPlan:
    """A world-size study with CPUs per worker such that its widest world size fits the
    cluster (fractions allowed); any other sweep as it is."""
    if plan.study != "world-size":
        return plan
    widest = max(t["workers"] for t in plan.trials)
    cpus = min(plan.base.cpus_per_worker,
               round((resources.get("CPU", 1) - 0.05) / widest, 3))
    return dataclasses.replace(plan, base=plan.base.replace(cpus_per_worker=cpus))


def parse_world_sizes(sizes: str | list[int]) -> list[int]:
    """``"1,2,4"`` (or a list) -> sorted distinct sizes, which must include 1."""
    try:
        parsed = sorted({int(x) for x in (sizes.split(",") if isinstance(sizes, str)
                                          else sizes)})
    except ValueError as err:
        raise InputError(f"--world-sizes {sizes!r}: write numbers like 1,2,4") from err
    if not parsed or parsed[0] != 1:
        raise InputError("--world-sizes must include 1 (the reference) and be >= 1")
    return parsed


def _choice(kind: str, value: str, allowed) -> None:
    if value not in allowed:
        raise InputError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")
