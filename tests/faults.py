"""Faults the tests inject from outside the production code: a training step that fails
(the training loop takes the step function as a parameter), and a kill of a Ray Train
worker process (found by its process title, as an operator would)."""

import functools
import sys
import threading
import time

import psutil
from ray import cloudpickle

from workers.train import train_loop_per_worker, train_step

# Ray workers cannot import this test-only module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _failing_step(at_epoch, model, optimizer, batch, cfg, ctx, where, **kwargs):
    if where[0] == at_epoch:
        raise RuntimeError(f"injected failure at the start of epoch {at_epoch + 1}")
    return train_step(model, optimizer, batch, cfg, ctx, where, **kwargs)


def failing_loop(epoch: int):
    """The training loop, failing on every rank at the first step of ``epoch`` (0-based):
    the epochs before it are done and checkpointed."""
    return functools.partial(train_loop_per_worker,
                             step=functools.partial(_failing_step, epoch))


def train_workers() -> list[psutil.Process]:
    """The Ray Train worker processes of this test session's Ray (the local Ray that this
    process started runs them as its descendants), never those of another Ray here."""
    mine = psutil.Process().children(recursive=True)
    return [p for p in mine
            if any("RayTrainWorker" in part for part in (_cmdline(p) or []))]


def _cmdline(process: psutil.Process) -> list[str] | None:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def holds(condition) -> bool:
    """``condition()``, False while it cannot be evaluated: Ray writes a run's checkpoint
    snapshot in place, so a reader can catch it half-written."""
    try:
        return bool(condition())
    except Exception:
        return False


def kill_a_worker_when(condition, timeout_s: float = 300.0) -> threading.Thread:
    """In the background: once ``condition()`` holds, kill one Ray Train worker process
    (SIGKILL, as the kernel's OOM killer would). The thread's ``killed`` list holds its pid."""
    def watch():
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if holds(condition) and (workers := train_workers()):
                workers[-1].kill()
                thread.killed.append(workers[-1].pid)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.killed = []
    thread.start()
    return thread
