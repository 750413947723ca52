"""``dotsim sweep --until-decided``: Ray Tune races the arms over seeds.

An arm is a variant (or a variant at one grid point); ``arms[0]`` is the baseline. Every
other arm is compared with it, paired by seed, by ``orchestrator.decide.Rule``. ``Race``
is the bookkeeping (pure, no Ray): which (arm, seed) trial runs next, given the trials
started, finished and failed. ``orchestrator.sweep.RaceSearcher`` is that race as a Tune
``Searcher``: Tune asks it for a trial whenever a slot is free, so the cluster stays busy
(no round waits for its slowest trial), and tells it each result as it arrives. This
module needs neither Ray nor torch: the planner and the report read it too.

- A comparison gets seeds until it is decided or its arm has ``max_seeds``; the baseline
  gets them while any comparison it serves is still open. The arm with the fewest seeds
  started goes first, so arms and baseline keep pace and their seeds pair up.
- A decision looks at the seeds 0..n-1 that both arms finished (a prefix, whatever order
  the results came in), so it is a function of the per-seed numbers alone: the same
  numbers give the same decisions in the report, and after ``--resume``.
- A failed trial is an ERROR (the sweep ends non-zero and lists it). Its arm gets no
  further seeds, for its comparison cannot look past the missing seed; the other arms go
  on. ``--resume`` re-runs the failed trial and the race continues from there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from dataclasses import asdict, dataclass, field

from orchestrator.decide import MIN_SEEDS, Decision, Rule

log = logging.getLogger("dotsim")

RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass(frozen=True)
class RaceSpec:
    """What ``--until-decided`` asked for (saved in sweep.json as ``race``)."""

    arms: list[dict]  # trial fields without the seed; arms[0] is the baseline
    metric: str  # the primary metric compared (higher is better)
    margin: float = 0.01  # the smallest difference that matters (equivalence margin)
    alpha: float = 0.05  # family-wise error over all comparisons and looks
    max_seeds: int = 20  # the budget per arm
    min_seeds: int = MIN_SEEDS  # the first look
    # the rule's nominal level per look, calibrated when the race is planned and kept in
    # sweep.json: the race, its resume and its report decide with the same number
    level: float | None = None

    def rule(self) -> Rule:
        return Rule(comparisons=max(len(self.arms) - 1, 1), alpha=self.alpha,
                    margin=self.margin, max_seeds=self.max_seeds, min_seeds=self.min_seeds,
                    level=self.level)

    def calibrated(self) -> RaceSpec:
        """This race with its rule's level fixed (``Rule.nominal_level``)."""
        return dataclasses.replace(self, level=self.rule().nominal_level())

    def trial(self, arm: int, seed: int) -> dict:
        return {**self.arms[arm], "seed": seed}

    def arm_of(self, trial: dict) -> int:
        """The arm a trial's fields (with its seed) belong to."""
        return self.arms.index({k: v for k, v in trial.items() if k != "seed"})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RaceSpec:
        return cls(**values)


@dataclass
class Race:
    """Which trials ran and how they ended; what to run next."""

    spec: RaceSpec
    at_once: int  # trials running at the same time, at most
    state: dict[tuple[int, int], str] = field(default_factory=dict)  # (arm, seed) -> status
    values: dict[tuple[int, int], float] = field(default_factory=dict)  # finished ones

    def __post_init__(self):
        self.rule = self.spec.rule()

    # --- what is known ---------------------------------------------------------------

    def started(self, arm: int) -> int:
        return sum(1 for a, _ in self.state if a == arm)

    def running(self) -> int:
        return sum(1 for s in self.state.values() if s == RUNNING)

    def failed(self, arm: int) -> bool:
        return any(s == FAILED for (a, _), s in self.state.items() if a == arm)

    def diffs(self, arm: int) -> list[float]:
        """Arm minus baseline on seeds 0, 1, ... while both finished (a prefix)."""
        out = []
        for seed in range(self.spec.max_seeds):
            pair = (self.values.get((arm, seed)), self.values.get((0, seed)))
            if None in pair:
                break
            out.append(pair[0] - pair[1])
        return out

    def decision(self, arm: int) -> Decision:
        return self.rule.decide(self.diffs(arm))

    def decisions(self) -> dict[int, Decision]:
        return {arm: self.decision(arm) for arm in range(1, len(self.spec.arms))}

    # --- what to run -----------------------------------------------------------------

    def _open(self, arm: int) -> bool:
        """A comparison that more seeds could still decide."""
        return (self.decision(arm).decision == "undecided" and not self.failed(arm)
                and not self.failed(0))

    def _wants(self, arm: int, open_arms: list[int]) -> bool:
        if self.started(arm) >= self.spec.max_seeds:
            return False
        return bool(open_arms) if arm == 0 else arm in open_arms

    def next_trial(self) -> tuple[int, int] | None:
        """(arm, seed) to start now, or None: every slot is taken, or nothing is left
        that could change a decision."""
        if self.running() >= self.at_once:
            return None
        open_arms = [a for a in range(1, len(self.spec.arms)) if self._open(a)]
        wanting = [a for a in range(len(self.spec.arms)) if self._wants(a, open_arms)]
        if not wanting:
            return None
        arm = min(wanting, key=lambda a: (self.started(a), a))  # baseline first on a tie
        return arm, self.started(arm)  # seeds are given in order: 0, 1, 2, ...

    def done(self) -> bool:
        """Nothing runs and nothing more is worth running."""
        return self.running() == 0 and self.next_trial() is None

    # --- what happened ---------------------------------------------------------------

    def start(self, arm: int, seed: int) -> None:
        self.state[(arm, seed)] = RUNNING

    def finish(self, arm: int, seed: int, value: float | None) -> None:
        """A trial ended: with its metric, or failed (``None``)."""
        if value is None:
            self.state[(arm, seed)] = FAILED
            self.values.pop((arm, seed), None)
        else:
            self.state[(arm, seed)] = DONE
            self.values[(arm, seed)] = float(value)

    def to_state(self) -> dict:
        return {"spec": self.spec.to_dict(), "at_once": self.at_once,
                "state": [[a, s, v] for (a, s), v in sorted(self.state.items())],
                "values": [[a, s, v] for (a, s), v in sorted(self.values.items())]}

    @classmethod
    def of_outcomes(cls, spec: RaceSpec, outcomes) -> Race:
        """The race that trials' outcomes make, as the report and the end of a sweep see
        it: ``(arm, seed, status, value)`` each, status as in ``results.STATUSES``. A
        FINISHED trial counts with its value (if ``accepted``), an UNFINISHED one as
        running, anything else as failed."""
        race = cls(spec, at_once=len(spec.arms) * spec.max_seeds)
        for arm, seed, status, value in outcomes:
            race.start(arm, seed)
            if status == "FINISHED":
                race.finish(arm, seed, accepted(value))
            elif status != "UNFINISHED":
                race.finish(arm, seed, None)
        return race

    @classmethod
    def from_state(cls, saved: dict) -> Race:
        return cls(RaceSpec.from_dict(saved["spec"]), saved["at_once"],
                   {(a, s): v for a, s, v in saved["state"]},
                   {(a, s): v for a, s, v in saved["values"]})


def accepted(value) -> float | None:
    """A trial's metric as a seed's value: a finite number, else None (the trial counts
    as failed: a NaN or a missing metric must not become a seed, nor stop the race)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value) if math.isfinite(value) else None


def label(variant: str, grid: dict) -> str:
    """An arm's name: its variant and the grid fields it sets, e.g. ``cosine lr=1e-07``."""
    return variant + "".join(f" {k}={v}" for k, v in grid.items())


def arm_label(spec: RaceSpec, arm: int, base) -> str:
    from orchestrator.variants import grid_point

    cfg = base.replace(**spec.arms[arm])
    return label(cfg.variant, grid_point(cfg, spec.arms[arm]))


def decision_line(spec: RaceSpec, arm: int, decision: Decision, base) -> str:
    """E.g. ``dot:minmax:global vs cosine: better after 7 seeds (5 looks), [+0.004, +0.03]``."""
    what = (f"{arm_label(spec, arm, base)} vs {arm_label(spec, 0, base)} on {spec.metric}: "
            f"{decision.decision} after {decision.n} seeds ({decision.looks} looks)")
    if decision.interval is not None:
        low, high = decision.interval
        what += f", repeated {1 - spec.alpha:.0%} interval [{low:+.4f}, {high:+.4f}]"
    return what
