"""Answering a preemption notice: train while the deadline allows, then save the current
step and take no further step on the doomed worker group (docs/reliability.md).

Ray Train learns of a node being drained for preemption (``ray drain-node``, or
``dotsim cluster watch-spot`` turning a spot instance's notice into a drain) and hands the
notice to every worker through ``ray.train.get_preemption_info()``: a barrier that every
rank must call the same number of times. ``PreemptionWatch`` asks every ``every`` steps,
``every`` chosen from what an ask costs against a step (at most ``CHECK_BUDGET`` of a
step, and a notice seen within ``MAX_NOTICE_DELAY_S``), and every rank counts the same
steps, so every rank asks at the same steps. At the deadline Ray Train tears the group
down and restarts it from the newest checkpoint without counting a failure.

The loop's record of each notice is ``preemptions.json`` in the run folder, written by
rank 0 alone (the driver copies it into ``dotsim_run.json`` when a launch ends).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from workers import storage
from workers.clock import utc_iso

PREEMPTIONS_FILE = "preemptions.json"  # in the run folder: one entry per notice

# the asks may cost at most 1% of a step: aimed at 0.8%, a margin for the spread of the
# asks' and the steps' times (bench/bench_preemption.py overhead)
CHECK_BUDGET = 0.008
MAX_NOTICE_DELAY_S = 5.0  # and a notice is seen within this long (AWS notifies 120 s ahead)
CALIBRATION_STEPS = 8  # steps asked at every step before ``every`` is first chosen;
RECALIBRATION_STEPS = 100  # chosen again here, from steps past the warm-up
CHECKPOINT_SAFETY = 3.0  # the checkpoint starts this many measured checkpoint times early,
RESERVE_S = 5.0  # and at least this long before the deadline (a slow upload, a busy node)
FIRST_CHECKPOINT_GUESS_S = 10.0  # a checkpoint's time before one was measured
WAIT_POLL_S = 1.0


@dataclass
class Notice:
    """A notice being answered: its deadline (UNIX seconds; None: none was given, so now),
    the preempted nodes, and how many more steps to train before the checkpoint."""

    deadline: float | None
    nodes: list[str]
    ranks: list[int]
    steps_left: int
    seen_at_step: int = 0  # the run's steps done when the notice was seen


class PreemptionWatch:
    """Asks Ray about a preemption at the same steps on every rank and says when to save.

    ``after_step()`` is called by every rank after every step; it returns True at the step
    after which the loop must write its preemption checkpoint. ``ask`` is
    ``ray.train.get_preemption_info`` (a test passes its own)."""

    def __init__(self, distributed: bool, *, device: torch.device | None = None,
                 ask: Callable[[], object | None] | None = None,
                 clock: Callable[[], float] = time.time,
                 on_notice: Callable[[Notice], None] | None = None):
        import ray.train

        self.distributed = distributed  # every decision is rank 0's, broadcast
        # the broadcasts go through the run's process group: nccl takes CUDA tensors only
        self.device = device or torch.device("cpu")
        self.ask = ask or ray.train.get_preemption_info
        self.clock = clock
        self.on_notice = on_notice  # called (by every rank) when a notice is first seen
        self.every = 1
        self.steps = 0
        self.ask_seconds = 0.0  # summed over the calibration asks
        self.asks = 0
        self._step_sum, self._timed_steps = 0.0, 0  # the steps timed for ``every``
        self.checkpoint_seconds = FIRST_CHECKPOINT_GUESS_S
        self.notice: Notice | None = None
        self.notices = 0  # notices seen by this group

    def after_step(self, step_time: float, global_step: int = 0) -> bool:
        """After every step (``step_time`` seconds long; the run's ``global_step`` steps
        done), on every rank."""
        self.steps += 1
        if self.steps == CALIBRATION_STEPS + 1:  # time the steps past the warm-up only
            self._step_sum, self._timed_steps = 0.0, 0
        if self.steps > 1:  # the first step holds the warm-up
            self._step_sum += step_time
            self._timed_steps += 1
        if self.notice is not None:
            self.notice.steps_left -= 1
            return self.notice.steps_left <= 0
        if self.steps == RECALIBRATION_STEPS:  # every rank at this step: it broadcasts
            self._choose_every()
        if self.steps % self.every:
            return False
        info = self._timed_ask()
        if self.steps == CALIBRATION_STEPS:  # asked at every step so far
            self._choose_every()
        if info is None:
            return False
        self.notice = self._plan(info)
        self._seen(global_step)
        return self.notice.steps_left <= 0

    def ask_now(self, global_step: int) -> bool:
        """Between epochs (every rank, after the epoch's checkpoint): True when a notice
        is pending, which that checkpoint already answers."""
        info = self._timed_ask()
        if info is None:
            return False
        if self.notice is None or self.notice.deadline != _deadline(info):
            self.notice = Notice(_deadline(info), *_where(info), steps_left=0)
            self._seen(global_step)
        return True

    def _seen(self, global_step: int) -> None:
        self.notices += 1
        self.notice.seen_at_step = global_step
        if self.on_notice is not None:
            self.on_notice(self.notice)

    def timed_checkpoint(self, seconds: float) -> None:
        """A checkpoint took ``seconds`` (rank 0 measures its own; others keep the guess,
        only rank 0's counts: it decides and broadcasts)."""
        self.checkpoint_seconds = seconds

    @staticmethod
    def wait_for_teardown() -> NoReturn:
        """Take no further step: Ray Train ends this group at the deadline (without one, 120
        s after it saw the drain) and starts a new one. Ray 2.60 keeps a notice once given,
        also when the drain is cancelled (``controller.py``: the preempting state ends only
        in a restart), so the group never trains on after it."""
        while True:
            time.sleep(WAIT_POLL_S)

    @property
    def step_seconds(self) -> float | None:
        """A step's time: the mean of the steps timed so far (past the warm-up)."""
        return self._step_sum / self._timed_steps if self._timed_steps else None

    # --- decisions every rank agrees on ----------------------------------------------

    def _timed_ask(self):
        start = time.perf_counter()
        info = self.ask()
        self.ask_seconds += time.perf_counter() - start
        self.asks += 1
        return info

    def _choose_every(self) -> None:
        """Ask every k steps: k keeps the asks under CHECK_BUDGET of a step, and a notice
        seen within MAX_NOTICE_DELAY_S. Rank 0's measurement, so every rank gets one k."""
        ask = self.ask_seconds / max(1, self.asks)
        cheap = math.ceil(ask / (CHECK_BUDGET * max(self.step_seconds, 1e-6)))
        prompt = max(1, math.floor(MAX_NOTICE_DELAY_S / max(self.step_seconds, 1e-6)))
        self.every = self._from_rank0(max(1, min(cheap, prompt)))

    def _plan(self, info) -> Notice:
        """How many more steps fit before the checkpoint must start: the time to the
        deadline less CHECKPOINT_SAFETY checkpoint times (at least RESERVE_S), in steps
        (rank 0's clock and measurements, broadcast)."""
        deadline = _deadline(info)
        steps_left = 0
        if deadline is not None and self.step_seconds:
            reserve = max(RESERVE_S, CHECKPOINT_SAFETY * self.checkpoint_seconds)
            spare = deadline - self.clock() - reserve
            steps_left = max(0, math.floor(spare / self.step_seconds))
        return Notice(deadline, *_where(info),
                      steps_left=self._from_rank0(steps_left))

    def _from_rank0(self, value: int) -> int:
        """Rank 0's ``value`` on every rank (the same decision everywhere)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())


def _deadline(info) -> float | None:
    return info.deadline_ms / 1000 if info.deadline_ms is not None else None


def _where(info) -> tuple[list[str], list[int]]:
    return list(info.preempted_node_ids), list(info.preempted_ranks)


# --- the record of notices (rank 0) ---------------------------------------------------


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else utc_iso(seconds)


def read_record(run_folder: str) -> list[dict]:
    path = storage.join(run_folder, PREEMPTIONS_FILE)
    return storage.read_json(path) if storage.exists(path) else []


def _write_record(run_folder: str, entries: list[dict]) -> None:
    storage.write_json(storage.join(run_folder, PREEMPTIONS_FILE), entries)


def record_notice(run_folder: str, notice: Notice, *, steps_per_epoch: int) -> None:
    """A notice seen after ``notice.seen_at_step`` steps of the run."""
    entry = {"notice_seen": utc_iso(), "deadline": _iso(notice.deadline),
             "nodes": notice.nodes, "ranks": notice.ranks,
             "epoch": max(0, notice.seen_at_step - 1) // steps_per_epoch + 1,
             "notice_step": notice.seen_at_step}
    _write_record(run_folder, [*read_record(run_folder), entry])


def record_checkpoint(run_folder: str, *, step: int, seconds: float | None) -> None:
    """The notices not yet answered (a second one can come before the first is: another
    node) answered with a checkpoint at global ``step``, written in ``seconds``."""
    _complete(run_folder, "step_checkpointed",
              {"step_checkpointed": step,
               "checkpoint_seconds": round(seconds, 2) if seconds is not None else None})


def record_finished(run_folder: str, step: int) -> None:
    """The run ended (its last checkpoint at global ``step``) before a notice's deadline:
    nothing is redone."""
    _complete(run_folder, "steps_redone",
              {"step_checkpointed": step, "steps_redone": 0,
               "finished_before_deadline": True})


def _complete(run_folder: str, missing: str, values: dict) -> list[dict]:
    """Entries that lack ``missing`` get ``values``; returns them."""
    entries = read_record(run_folder)
    done = [entry for entry in entries if missing not in entry]
    for entry in done:
        entry |= {k: v for k, v in values.items() if k not in entry}
    if done:
        _write_record(run_folder, entries)
    return done


def record_resume(run_folder: str, resumed_step: int) -> list[dict]:
    """A group starting from a checkpoint at global ``resumed_step``: each notice whose
    group ended before it gets ``resumed_from_step`` and ``steps_redone`` (the steps the
    ended group trained past the checkpoint, trained again now; a lower bound when the
    deadline came before the checkpoint). Returns those entries."""
    entries = read_record(run_folder)
    waiting = [entry for entry in entries if "steps_redone" not in entry]
    for entry in waiting:
        # without a checkpoint the group trained at least to the notice
        reached = entry.get("step_checkpointed", entry["notice_step"])
        entry |= {"resumed_from_step": resumed_step,
                  "steps_redone": max(0, reached - resumed_step), "resumed": utc_iso()}
    if waiting:
        _write_record(run_folder, entries)
    return waiting


def handled_line(run_name: str, entry: dict) -> str:
    """One line for a notice the run answered: where it saved, what it redid."""
    if entry.get("finished_before_deadline"):
        return (f"{run_name}: preemption notice at global step {entry['notice_step']}; the "
                "run finished before the deadline")
    saved = entry.get("step_checkpointed")
    where = (f"saved global step {saved}" if saved is not None else
             "the deadline came before a checkpoint")
    redone = entry.get("steps_redone")
    return (f"{run_name}: preemption handled: {where}, resumed from step "
            f"{entry.get('resumed_from_step')}, {redone} steps redone")
