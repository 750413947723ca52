"""What a long job says while it runs: one line per epoch of a run, and for a sweep one
line as each trial starts and ends, its epochs, and how many trials are left with an
estimate of the time they take.

Lines go to the ``dotsim.progress`` logger; the CLI prints them on stderr (stdout stays
for results, e.g. ``--json``), a Python caller routes them where it likes. Work counted in
chunks (``prepare``) shows a bar on a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable

from ray import tune

from orchestrator.estimate import duration

log = logging.getLogger("dotsim.progress")


def bar(items: Iterable, total: int, label: str, *, enabled: bool = True):
    """``items`` with a progress bar on stderr when it is a terminal, as they are else."""
    if enabled and sys.stderr.isatty():
        import click

        return click.progressbar(items, length=total, label=label, file=sys.stderr)
    return contextlib.nullcontext(items)


def epoch_line(run_name: str, epochs: int, m: dict) -> str:
    """One epoch of a run: its losses, validation, speed; the test and probes at the end."""
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


def preemption_line(run_name: str, saved: dict) -> str:
    """A preemption notice answered: where the run saved, and that it goes on."""
    left = ""
    if saved.get("deadline") is not None:
        left = f" {max(0.0, saved['deadline'] - time.time()):.0f} s before the deadline,"
    return (f"[{run_name}] preemption notice for {_nodes(saved.get('nodes', []))}: saved "
            f"epoch {saved['epoch']} step {saved['step']} (global step "
            f"{saved['global_step']}),{left} the run continues on a new worker group")


def _nodes(nodes: list[str]) -> str:
    return ("node " if len(nodes) == 1 else "nodes ") + ", ".join(n[:12] for n in nodes)


class SweepProgress(tune.Callback):
    """Tune callback (it runs in the sweep's driver): a line when a trial starts, at each
    of its epochs, and when it ends (status, ``metric``, trials done and left, time left).

    The time left assumes the trials still to run take as long as those that ended (or,
    before any ended, as the running ones' epochs say), ``concurrency`` at a time.
    """

    def __init__(self, *, total: int, epochs: int, metric: str, concurrency: int,
                 name: Callable, say: Callable[[str], None] = log.info,
                 clock: Callable[[], float] = time.monotonic, at_most: bool = False):
        self.total, self.epochs, self.at_most = total, epochs, at_most
        self.metric, self.concurrency = metric, concurrency
        self.name, self.say, self.clock = name, say, clock
        self.setup()

    def setup(self, **info):
        """Called by Tune as the sweep starts or resumes (a resumed sweep restores this
        callback from its saved state: what it counted before is stale)."""
        self.done: int | None = None  # ended trials; counted from Tune's list at first sight
        self.started: dict[str, float] = {}  # running trial -> when it started here
        self.epoch_done: dict[str, int] = {}  # running trial -> epochs it reported here
        self.durations: list[float] = []  # of the trials that ended here

    def _count(self, trials, trial) -> None:
        """At the first callback: the trials that had ended before this driver started
        (not ``trial``, whose own start or end the callback is about to count)."""
        if self.done is None:
            self.done = sum(t.status in ("TERMINATED", "ERROR") for t in trials
                            if t is not trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        name = self.name(trial)
        self.started[name], self.epoch_done[name] = self.clock(), 0
        self.say(f"[sweep] started {name} ({len(self.started)} running, {self.done}"
                 + (" done)" if self.at_most else f"/{self.total} done)"))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        name = self.name(trial)
        if "epoch" not in result or name not in self.started:
            return
        self.epoch_done[name] = int(result["epoch"])
        self.say(f"[{name}] epoch {result['epoch']}/{self.epochs} val_acc "
                 f"{result.get('val_acc', float('nan')):.3f} "
                 f"({result.get('epoch_seconds', float('nan')):.1f}s)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        result = trial.last_result or {}
        value = result.get(self.metric)
        if isinstance(value, int | float):
            self._ended(trial, f"finished: {self.metric} {value:.4f}")
        else:  # ended before its final metrics: stopped early by the scheduler
            self._ended(trial, f"stopped after epoch {result.get('epoch', 0)}/{self.epochs}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        self._ended(trial, "FAILED (its error is listed when the sweep ends)")

    def _ended(self, trial, what: str) -> None:
        name = self.name(trial)
        started = self.started.pop(name, None)
        self.epoch_done.pop(name, None)
        took = None if started is None else self.clock() - started
        if took is not None:
            self.durations.append(took)
        self.done += 1
        left = self.total - self.done
        if self.at_most:  # a race: how many more trials it needs depends on their results
            self.say(f"[sweep] {name} {what} after {duration(took)}; {self.done} done, at "
                     f"most {left} more")
            return
        self.say(f"[sweep] {name} {what} after {duration(took)}; {self.done}/{self.total} "
                 f"done, {left} left" + (f", about {duration(self.time_left())} to go"
                                         if left else ""))

    def time_left(self) -> float | None:
        """Seconds until the last trial ends, by the estimate in the class docstring."""
        per_trial = self._per_trial()
        if per_trial is None:
            return None
        now = self.clock()
        running = [max(per_trial - (now - t), 0.0) for t in self.started.values()]
        waiting = max(self.total - self.done - len(running), 0)
        shared = (sum(running) + waiting * per_trial) / max(self.concurrency, 1)
        # no faster than the longest single trial still to run, however many slots
        return max(shared, *running, per_trial if waiting else 0.0)

    def _per_trial(self) -> float | None:
        if self.durations:
            return sum(self.durations) / len(self.durations)
        now = self.clock()
        rates = [(now - self.started[n]) / e for n, e in self.epoch_done.items() if e]
        return max(rates) * self.epochs if rates else None


def plan_line(trials: int, concurrency: int, folder: str, race=None) -> str:
    """The sweep's first line: how big, how parallel, where its curves are."""
    if race is not None:
        size = (f"Race of {len(race.arms)} arms on {race.metric} until decided (margin "
                f"{race.margin:g}, alpha {race.alpha:g}; {len(race.arms) * race.min_seeds} to "
                f"{trials} trials), {concurrency} at a time")
    else:
        waves = math.ceil(trials / max(concurrency, 1))
        size = f"Sweep of {trials} trials, {concurrency} at a time ({waves} rounds)"
    return f"{size}, in {folder}\n  live curves: tensorboard --logdir {folder}"
