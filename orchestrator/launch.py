"""Connecting to Ray and launching one training run with Ray Train's TorchTrainer."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.auth import ray_auth_token
from workers.config import RunConfig
from workers.train import load_checkpoint, train_loop_per_worker

PACKAGES = ("dotsim", "torch", "torchaudio", "ray", "pyarrow", "numpy", "click", "soundfile")


def default_storage() -> Path:
    """DOTSIM_STORAGE (a cluster sets it to shared storage), else ~/dotsim_results."""
    return Path(os.environ.get("DOTSIM_STORAGE") or os.path.expanduser("~/dotsim_results"))


# --- Ray connection ------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                dashboard: bool = False):
    """Connect to ``address`` (a running cluster), or start a private local Ray.

    Local: dashboard off unless asked (heavy on small machines), and then on 127.0.0.1
    only; Ray 2.60 turns token authentication on for a local cluster it starts. Remote:
    a token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token is sent. A Ray
    that this function started is shut down on exit.
    """
    if address:
        check_reachable(address)  # even when connected already: a wrong address is an error
    if ray.is_initialized():  # e.g. a test or a notebook already connected
        yield
        return
    if address:
        # GPU nodes of an autoscaling cluster take minutes to join: wait for the worker
        # group that long (Ray Train's default is 60 s); workers inherit the driver's env
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "1200")
        if ray_auth_token():  # Ray sends it only in token mode
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # Without the dashboard, Ray Train's placement-group cleaner cannot reach the
        # State API and logs a warning every few seconds: keep worker logs local then
        # (errors still reach the driver as exceptions; progress comes by queue).
        context = ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                           include_dashboard=dashboard, dashboard_host="127.0.0.1",
                           logging_level=logging.WARNING, log_to_driver=dashboard)
        if dashboard:
            click.echo(f"Ray Dashboard: http://{context.dashboard_url} (token: "
                       "~/.ray/auth_token)", err=True)
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nobody answers at (ray.init would retry for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad Ray address {address!r}; write HOST:PORT (e.g. 10.0.0.5:6379) "
                         "or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"cannot reach Ray at {address} ({err.strerror or err}); is the "
                              "cluster up, and are --address / RAY_ADDRESS right?") from err


# --- one run -------------------------------------------------------------------------


class ForwardMetrics(ray.train.UserCallback):
    """Sends rank 0's metrics of every report to a Ray queue the driver reads.

    The callback runs in the Train controller actor; a queue (not print) brings the
    progress to the driver's terminal without Ray's per-process log prefixes.
    """

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put(metrics[0])


def progress_line(run_name: str, epochs: int, m: dict) -> str:
    line = (f"[{run_name}] epoch {m['epoch']}/{epochs} "
            f"loss {m['train_loss']:.4f} (ce {m['train_ce']:.3f} lpc {m['train_lpc']:.3f} "
            f"shuf {m['train_shuffled']:.3f}) val_acc {m['val_acc']:.3f} "
            f"cos_rec {m['val_cos_rec']:.3f} {m['samples_per_second']:.0f} samples/s "
            f"{m['epoch_seconds']:.1f}s")
    if "test_acc" in m:
        line += (f" | test_acc {m['test_acc']:.3f} probes: word<-formant "
                 f"{m['probe_word_from_formant']:.3f} speaker<-residual "
                 f"{m['probe_speaker_from_residual']:.3f}")
    return line


def run_name_for(cfg: RunConfig) -> str:
    return cfg.run_name or f"{cfg.variant.replace(':', '-')}-seed{cfg.seed}"


def make_trainer(cfg: RunConfig, *, callbacks=(), worker_env: dict | None = None) -> TorchTrainer:
    """A TorchTrainer for ``cfg`` (``cfg.data`` must be a prepared folder every node sees).
    ``worker_env``: extra environment variables for the workers (e.g. NCCL settings)."""
    assert cfg.data is not None, "resolve the data folder before launching"
    storage = Path(cfg.storage_path or default_storage()).expanduser().resolve()
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.gpu else {}),
        ),
        run_config=ray.train.RunConfig(
            name=run_name_for(cfg),
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            # controller_failure_limit=0: a worker group that cannot be placed (too few
            # CPUs) fails with an error instead of retrying forever
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures,
                                                   controller_failure_limit=0),
            callbacks=list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
        ),
    )


def write_run_record(cfg: RunConfig) -> Path:
    """Save the full config, code version and package versions beside the run."""
    storage = Path(cfg.storage_path or default_storage()).expanduser().resolve()
    folder = storage / run_name_for(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"config": cfg.to_dict(), "code_version": code_version(),
              "packages": package_versions()}
    tmp = folder / "dotsim_run.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, folder / "dotsim_run.json")
    return folder


def run_training(cfg: RunConfig, *, progress: bool = True,
                 worker_env: dict | None = None) -> dict:
    """Fit one run (resuming it if its folder holds a checkpoint); return its summary."""
    folder = write_run_record(cfg)
    # on the driver's node: losing another node must not take the progress queue with it
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    trainer = make_trainer(cfg, callbacks=[ForwardMetrics(queue)], worker_env=worker_env)
    with ThreadPoolExecutor(1) as pool:
        fitting = pool.submit(trainer.fit)
        while not (fitting.done() and queue.empty()):
            try:
                metrics = queue.get(timeout=0.5)
            except Empty:
                continue
            if progress:
                click.echo(progress_line(run_name_for(cfg), cfg.epochs, metrics), err=True)
        result = fitting.result()
    with result.checkpoint.as_directory() as directory:
        history = load_checkpoint(directory)["history"]
    return {"run_name": run_name_for(cfg), "path": str(folder), "variant": cfg.variant,
            "config": cfg.to_dict(), "metrics": result.metrics, "history": history}


def code_version() -> str:
    """The git commit of the dotsim source (with -dirty), or the package version."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                                cwd=here, capture_output=True, text=True, timeout=5, check=True)
        return commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "dotsim " + importlib.metadata.version("dotsim")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = sys.version.split()[0]
    return versions
