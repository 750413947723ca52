"""Connecting to Ray, and the one path every run takes.

``launch`` starts a run for ``dotsim train`` and for every trial of a sweep alike: it binds
the run folder to the run's config (a folder is resumed only by the config that made it),
records the launch (config, code version, packages, cluster resources), fits Ray Train's
TorchTrainer and reads the results from the checkpoint's ``history.json``, never from
weights. A finished run is not trained again: its results are returned as they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator import trackers
from orchestrator.plan import check_address, concurrency, local_cpus, located
from orchestrator.progress import epoch_line, preemption_line
from orchestrator.results import RECORD_FILE
from orchestrator.versions import code_version, package_versions
from workers import checkpoints, lease, phases, preemption, storage
from workers.clock import utc_iso
from workers.config import RunConfig
from workers.errors import InputError, Interrupted
from workers.metrics import HISTORY_FILE, PREEMPTION_REPORT, is_finished
from workers.prepared import data_fingerprint
from workers.train import train_loop_per_worker

log = logging.getLogger("dotsim")
progress = logging.getLogger("dotsim.progress")


# GPU nodes of an autoscaling cluster take minutes to join (boot, pull the image, install
# torch): a Train worker group waits this long for them (Ray Train's default is 60 s). On a
# fixed cluster the resources are checked before anything starts, so it costs nothing.
START_TIMEOUT_S = 1800
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train reads it
# Ray Train's controller collects the workers' reports and sees their end when it polls
# them, every 2 s by default: a run's last epoch reached it up to 2 s late, and a sweep
# pays that per trial. A poll is one small actor call per worker.
POLL_INTERVAL_S = 0.5
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train reads it


# --- Ray connection ------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                dashboard: bool = False):
    """Connect to ``address`` (a running cluster), or start a private local Ray.

    Local: dashboard off unless asked (heavy on small machines), and then on 127.0.0.1
    only; Ray 2.60 turns token authentication on for a local cluster it starts. Remote:
    Ray sends the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) in
    token mode (``auth.token_mode_for_ray``). A Ray that this function started is shut down on
    exit. Yields Ray's context of the connection (its dashboard
    URL, ...), or None when Ray was connected already.
    """
    check_address(address)  # even when connected already: a wrong address is an error
    if ray.is_initialized():  # e.g. a test or a notebook already connected
        yield None
        return
    # Ray warns that it turned token auth on for the local Ray it starts: dotsim says so
    # where it matters (--dashboard), and the token is never needed otherwise
    with quiet("ray._private.authentication", logging.ERROR):
        if address:
            context = ray.init(address=address, logging_level=logging.WARNING)
        else:
            # Without the dashboard, Ray Train's placement-group cleaner cannot reach the
            # State API and logs a warning every few seconds: keep worker logs local then
            # (errors still reach the driver as exceptions; progress comes by queue).
            context = ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                               include_dashboard=dashboard, dashboard_host="127.0.0.1",
                               logging_level=logging.WARNING, log_to_driver=dashboard)
    if dashboard and not address:
        log.info(f"Ray Dashboard: http://{context.dashboard_url} (token: ~/.ray/auth_token)")
    try:
        yield context
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_train_settings():
    """The worker-group start timeout and the controller's poll interval for the Train run
    fitted inside: Ray Train hands the fitting process's values of its environment
    variables to its controller (a Tune trial fits in its own process, and gets the same).
    A value the user set stays; the process's environment is as it was afterwards."""
    ours = {name: str(value) for name, value in
            ((START_TIMEOUT_ENV, START_TIMEOUT_S), (POLL_INTERVAL_ENV, POLL_INTERVAL_S))
            if name not in os.environ}
    os.environ.update(ours)
    try:
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


# --- one run -------------------------------------------------------------------------


class RunInterrupted(Interrupted):
    """Ctrl-C stopped the run; its checkpoints are kept and the same config resumes it."""

    def __init__(self, cfg: RunConfig, epochs_done: int):
        super().__init__(f"run {cfg.run_name} interrupted after epoch {epochs_done} of "
                         f"{cfg.epochs} (its checkpoints are kept)")
        self.cfg, self.epochs_done = cfg, epochs_done


def run_location(cfg: RunConfig) -> str:
    """The run folder (local path or URI): storage path / run name."""
    cfg = located(cfg)
    return storage.join(cfg.storage_path, cfg.run_name)


def train(cfg: RunConfig, *, address: str | None = None, dashboard: bool = False) -> dict:
    """Connect to ``address`` (or start a local Ray), check that the run fits, and
    ``launch`` it: what ``dotsim train`` does with the config ``plan.plan_run`` gave."""
    with ray_session(address, num_cpus=local_cpus(cfg), dashboard=dashboard):
        # a cluster behind --address may autoscale: its resources now are not its limit
        concurrency(cfg, [{}], ray.cluster_resources(), elastic=bool(address))
        return launch(cfg)


def launch(cfg: RunConfig, *, loop: Callable[[dict], None] = train_loop_per_worker,
           callbacks=(), progress: bool = True, worker_env: dict | None = None) -> dict:
    """Run ``cfg`` to its last epoch (resuming its folder when the same config left it
    unfinished) and return its summary: run name, folder, config, final metrics, history.

    ``loop`` is what every Ray Train worker runs (tests wrap it to inject faults);
    ``callbacks`` are Ray Train callbacks (a Tune trial passes TuneReportCallback);
    ``worker_env``: extra environment variables for the workers (e.g. NCCL settings).
    The config's trackers get every epoch (``orchestrator.trackers``), the epochs they lack
    from an earlier launch first, a finished run's too. Raises ``InputError`` when the
    folder belongs to another config, and ``RunInterrupted`` on Ctrl-C.
    """
    assert cfg.data is not None, "resolve the data folder before launching"
    cfg = located(cfg)
    location = run_location(cfg)
    began = time.monotonic()
    # one launch per run folder at a time, from its record's first write to its last; a
    # finished run takes it too: its launch is recorded, and it may be finishing right now
    with lease.held(location, "run"):
        try:
            history, owner = bind_run(cfg, location)
            check_checkpoints(location)
            finished = is_finished(history, cfg.epochs)  # by the config it was trained with
            with trackers.tracking(cfg.trackers, storage.join(location, RECORD_FILE),
                                   history, finished=finished) as tracked:
                if not finished:
                    with _progress_printer(cfg, progress, tracked.send if tracked.active
                                           else None) as forward:
                        trainer = make_trainer(cfg, loop=loop,
                                               callbacks=[*callbacks, *forward],
                                               worker_env=worker_env)
                        history = checkpoint_history(_fit(trainer, cfg, location).checkpoint)
        except KeyboardInterrupt as stop:  # Ctrl-C before Ray Train's own handler is in place
            raise RunInterrupted(cfg, len(run_history(location))) from stop
        finally:  # a failed or interrupted launch's notices too (still under the lease)
            _record_preemptions(location)
        if not finished:
            _record_duration(location, time.monotonic() - began, len(history))
    return _summary(owner if finished else cfg, location, history, already_finished=finished,
                    tracked=tracked.outcome())


def _summary(cfg: RunConfig, location: str, history: list[dict], *,
             already_finished: bool = False, tracked: list[dict] = ()) -> dict:
    return {"run_name": cfg.run_name, "path": location, "variant": cfg.variant,
            "config": cfg.to_dict(), "metrics": history[-1] if history else {},
            "history": history, "already_finished": already_finished,
            "trackers": list(tracked)}


def make_trainer(cfg: RunConfig, *, loop: Callable[[dict], None] = train_loop_per_worker,
                 callbacks=(), worker_env: dict | None = None) -> TorchTrainer:
    """A TorchTrainer for ``cfg`` (named, with a prepared data folder every node sees)."""
    assert cfg.data is not None and cfg.run_name and cfg.storage_path, "plan the run first"
    return TorchTrainer(
        loop,
        train_loop_config=cfg.to_dict(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.gpu else {}),
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            # controller_failure_limit=0: a worker group that cannot be placed (too few
            # CPUs) fails with an error instead of retrying forever
            # a preempted node (drained for preemption) restarts the group apart from
            # max_failures; the loop saves the current step on the notice
            # (workers.preemption)
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.max_failures, controller_failure_limit=0,
                max_preemption_failures=cfg.max_preemptions),
            callbacks=list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
        ),
    )


def _fit(trainer: TorchTrainer, cfg: RunConfig, location: str) -> ray.train.Result:
    """``trainer.fit()`` in the calling thread. In the main thread Ray Train handles Ctrl-C:
    it aborts the run (checkpoints already written stay) and leaves ``fit`` through
    ``sys.exit`` from its signal handler; that becomes ``RunInterrupted`` here. Its handler
    outlives the run, so the previous one is put back."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    phases.mark("fit start")
    try:
        with ray_train_settings():
            return trainer.fit()
    except SystemExit as stop:  # raised only by Ray Train's SIGINT handler
        raise RunInterrupted(cfg, len(run_history(location))) from stop
    finally:
        phases.mark("fit end")
        if main:
            signal.signal(signal.SIGINT, previous)


# --- the run folder and its record ----------------------------------------------------


def bind_run(cfg: RunConfig, location: str) -> tuple[list[dict], RunConfig]:
    """Check that the run folder at ``location`` is new or belongs to ``cfg``, record this
    launch in its ``dotsim_run.json``, and return the epochs it holds already with the
    config that started it (``cfg`` for a new run).

    The folder belongs to the config that created it: a config that differs in a field
    that changes results is refused, except the number of workers for a run whose numbers
    do not depend on it (``RunConfig.world_size_independent``), which may resume on more
    or fewer workers (after losing GPUs, say).
    """
    record_path = storage.join(location, RECORD_FILE)
    history = run_history(location)
    fingerprint = data_fingerprint(cfg.data)
    if storage.exists(record_path):
        record = storage.read_json(record_path)
        owner = RunConfig.from_dict(record["config"])
        _check_same_run(owner, cfg, location, finished=is_finished(history, owner.epochs))
        if "data_fingerprint" not in record:
            raise InputError(f"run {cfg.run_name} was started by an older dotsim that did not "
                             "record its data; start a new run with another --run-name")
        if record["data_fingerprint"] != fingerprint:
            raise InputError(
                f"the prepared data in {cfg.data} changed since run {cfg.run_name} started "
                "(its meta.json differs); start a new run with another --run-name")
    elif history:
        raise InputError(f"{location} holds a Ray Train run that dotsim did not record; "
                         "choose another --run-name")
    else:
        owner = cfg
        record = {"run_name": cfg.run_name, "run_key": cfg.run_key(), "config": cfg.to_dict(),
                  "data_fingerprint": fingerprint, "launches": []}
    record["launches"].append(_launch_facts(cfg, epochs_done=len(history)))
    storage.write_json(record_path, record)
    return history, owner


def _check_same_run(saved: RunConfig, cfg: RunConfig, location: str, *,
                    finished: bool) -> None:
    changed = saved.differences(cfg)
    if changed == ["workers"] and saved.world_size_independent:
        if finished:  # nothing to resume: its results are those of its own workers
            log.info(f"{cfg.run_name} finished on {saved.workers} workers; --workers "
                     f"{cfg.workers} changes nothing")
            return
        exact = ("exactly, up to round-off" if saved.dropout == 0 else
                 "with other dropout masks (drawn per rank) but the same batches")
        log.info(f"resuming {cfg.run_name} on {cfg.workers} workers (it ran on "
                 f"{saved.workers}): its batches and {saved.variant} loss do not depend on "
                 f"the world size, so it continues {exact}")
        return
    if changed:
        fields = ", ".join(f"{name} {getattr(saved, name)!r} -> {getattr(cfg, name)!r}"
                           for name in changed)
        why = (" (its local batch statistics depend on the number of workers)"
               if "workers" in changed and not saved.world_size_independent else "")
        raise InputError(
            f"run folder {location} belongs to another config ({fields}){why}: start a new "
            "run with another --run-name, or resume this one with the options it was started "
            f"with (see its {RECORD_FILE})")


def _record_duration(location: str, seconds: float, epochs_done: int) -> None:
    """How long this launch took, start to end, and where it left the run: what a sweep's
    time estimate reads from earlier runs (``orchestrator.estimate``)."""
    record_path = storage.join(location, RECORD_FILE)
    record = storage.read_json(record_path)
    record["launches"][-1] |= {"seconds": round(seconds, 1), "epochs_done_after": epochs_done}
    storage.write_json(record_path, record)


def _record_preemptions(location: str) -> None:
    """The notices the workers answered (``workers.preemption``) into the run record, and
    one line for each that is complete now and was not before."""
    try:
        preemptions = preemption.read_record(location)
        record_path = storage.join(location, RECORD_FILE)
        if not preemptions or not storage.exists(record_path):
            return
    except OSError as err:  # the storage failed the launch already: say, do not hide it
        log.warning(f"could not read the run's {preemption.PREEMPTIONS_FILE}: {err}")
        return
    record = storage.read_json(record_path)
    before = record.get("preemptions", [])
    record["preemptions"] = preemptions
    storage.write_json(record_path, record)
    for i, entry in enumerate(preemptions):
        if "steps_redone" in entry and (i >= len(before) or "steps_redone" not in before[i]):
            log.info(preemption.handled_line(record["run_name"], entry))


def _launch_facts(cfg: RunConfig, *, epochs_done: int) -> dict:
    """What a launch ran on: when, from which process (the host and pid its lease names),
    which code and packages, which cluster."""
    return {"started": utc_iso(),
            "host": socket.gethostname(), "pid": os.getpid(),
            "epochs_done_before": epochs_done, "workers": cfg.workers,
            "code_version": code_version(), "packages": package_versions(),
            "cluster_resources": ray.cluster_resources() if ray.is_initialized() else {}}


def run_history(location: str) -> list[dict]:
    """The epoch history in the newest intact checkpoint of the Ray Train run at
    ``location`` ([] when there is none): a damaged newer one (``workers.checkpoints``)
    holds no epochs, since the run resumes from the intact one."""
    fs, path = storage.filesystem(location)
    with quiet("ray.train"):  # it logs "A run snapshot was found" at INFO every time
        newest, _ = checkpoints.newest_intact(checkpoints.registered(fs, path))
    return checkpoint_history(newest) if newest else []


def check_checkpoints(location: str) -> None:
    """Before a launch trains (under its lease, so no other launch is uploading): remove
    the checkpoint folders Ray uploaded but never registered, and when the newest
    registered checkpoint is damaged, say in one line which intact one the workers resume
    from (``checkpoints.read_newest_intact`` makes the same choice there); with none
    intact, ``DamagedCheckpoint`` (exit 1) naming the damaged files."""
    fs, path = storage.filesystem(location)
    with quiet("ray.train"):
        kept = checkpoints.registered(fs, path)
    checkpoints.remove_unregistered(fs, path, kept)  # never a checkpoint of the run: quietly
    newest, damaged = checkpoints.newest_intact(kept)
    if damaged and newest is None:
        raise checkpoints.DamagedCheckpoint(checkpoints.none_intact_line(damaged))
    if damaged:
        epochs = len(checkpoint_history(newest))
        log.warning(checkpoints.fallback_line(damaged, checkpoints.name_of(newest), epochs))


@contextlib.contextmanager
def quiet(logger_name: str, level: int = logging.WARNING):
    """Only records of ``level`` and above from ``logger_name`` while inside (Ray's readers
    log every file they look at)."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def checkpoint_history(checkpoint: ray.train.Checkpoint) -> list[dict]:
    """A checkpoint's ``history.json`` (small: no weights are read)."""
    with checkpoint.filesystem.open_input_stream(
            storage.join(checkpoint.path, HISTORY_FILE)) as stream:
        return json.loads(stream.read())


# --- progress ------------------------------------------------------------------------


RAY_GROUP_SHUTDOWN_LOGGER = "ray.train.v2._internal.callbacks.backend_setup"


class ForwardMetrics(ray.train.UserCallback):
    """Sends rank 0's metrics of every report to a Ray queue the driver reads.

    The callback runs in the Train controller actor; a queue (not print) brings the
    progress to the driver's terminal without Ray's per-process log prefixes.
    """

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        # Ray logs a traceback when it shuts down a worker group whose node is gone (a
        # preemption it then handles, or a failure the run reports itself): noise on the
        # terminal, kept in the controller's log file. Set here: this runs in the
        # controller, before any restart. The logger's name is Ray's module path (not a
        # public API): if it moves, the traceback is back, nothing else changes
        # (tests/test_preemption_ray.py looks for it).
        logging.getLogger(RAY_GROUP_SHUTDOWN_LOGGER).setLevel(logging.ERROR)
        self.queue.put(metrics[0])


@contextlib.contextmanager
def _progress_printer(cfg: RunConfig, enabled: bool, send: Callable[[dict], None] | None = None):
    """Yields the callbacks that bring each epoch's metrics to a thread here, which prints
    one line per epoch on stderr (when ``enabled``) and hands the metrics to ``send`` (the
    trackers, which never wait on their own); the thread drains the queue after the run
    ends. The Train controller only puts each report into the queue: a callback that called
    a tracker there would hold the controller's loop, and an error in it would fail the run."""
    if not enabled and send is None:
        yield []
        return
    # on the driver's node: losing another node must not take the progress queue with it
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    done = threading.Event()

    def pump():
        while True:
            try:
                metrics = queue.get(timeout=0.5)
            except Empty:
                if done.is_set():
                    return
                continue
            if PREEMPTION_REPORT in metrics:  # not an epoch: one line, no tracker
                if enabled:
                    progress.info(preemption_line(cfg.run_name, metrics[PREEMPTION_REPORT]))
                continue
            if enabled:
                progress.info(epoch_line(cfg.run_name, cfg.epochs, metrics))
            if send is not None:
                send(metrics)

    thread = threading.Thread(target=pump, name="dotsim-progress", daemon=True)
    thread.start()
    try:
        yield [ForwardMetrics(queue)]
    finally:
        done.set()
        thread.join()
        queue.shutdown()
