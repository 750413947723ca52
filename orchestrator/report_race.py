"""The report of a race (``dotsim sweep --until-decided``): what was decided, on how many
seeds, and what that saved against giving every arm its whole budget.

A race's sweep.json carries ``race`` (``orchestrator.race.RaceSpec``): its arms (trial
fields without the seed; ``arms[0]`` is the baseline), the metric, margin, alpha and seed
budget. The report rebuilds the race from results.parquet with the race's own bookkeeping
(``Race.of_outcomes``: seeds 0, 1, ... while both arms finished with a finite value of the
metric, a prefix) and its own ``Rule``, so the report and the race agree.
"""

from __future__ import annotations

import json

import pandas as pd

from orchestrator import stats
from orchestrator.decide import Decision
from orchestrator.race import Race, RaceSpec, label
from orchestrator.variants import grid_point
from workers.config import RunConfig
from workers.errors import InputError

# The per-trial column holding a race metric: Tune's last result has the last epoch's
# val_acc, which the report's per-trial table calls val_acc_final.
COLUMNS = {"val_acc": "val_acc_final"}
WHY = {"ERROR": "failed", "STOPPED": "stopped early", "UNFINISHED": "unfinished",
       "FINISHED": "finished without the metric"}

Key = tuple[str, str]  # (variant, grid as results.parquet writes it)


def column(metric: str) -> str:
    return COLUMNS.get(metric, metric)


def race_spec(definition: dict) -> RaceSpec | None:
    """The race of a sweep's definition, or None for a fixed-seed sweep."""
    race = definition.get("race")
    return RaceSpec.from_dict(race) if race else None


def arm_keys(spec: RaceSpec, base: dict) -> list[Key]:
    """Each arm as the report groups trials: (variant, grid), as results.write_results
    tags its rows; the baseline's first."""
    keys = []
    for arm in spec.arms:
        cfg = RunConfig.from_dict({**base, **arm})
        keys.append((cfg.variant, json.dumps(grid_point(cfg, arm))))
    return keys


def check_baseline(keys: list[Key], baseline: str | None) -> str:
    """A race's baseline is its first arm; a --baseline that names another is refused."""
    raced = keys[0][0]
    if baseline is not None and baseline != raced:
        raise InputError(f"--baseline {baseline!r} disagrees with this race's baseline "
                         f"{raced!r}: its decisions were made against {raced}")
    return raced


def _arm(trials: pd.DataFrame, key: Key) -> pd.DataFrame:
    return trials[(trials["variant"] == key[0]) & (trials["grid"] == key[1])]


def race_of(trials: pd.DataFrame, spec: RaceSpec, keys: list[Key]) -> Race:
    """The race the trials make (``Race.of_outcomes``: the same bookkeeping the race ran
    on), each trial's value its row in the report's table of trials."""
    arm = {key: i for i, key in enumerate(keys)}
    outcomes = []
    for row in trials.itertuples(index=False):
        key = (row.variant, row.grid)
        if key in arm:
            outcomes.append((arm[key], int(row.seed), row.status,
                             getattr(row, column(spec.metric))))
    return Race.of_outcomes(spec, outcomes)


def _gap(trials: pd.DataFrame, race: Race, arm: int, keys: list[Key]) -> dict | None:
    """Why the arm's paired seeds stop before a seed either arm ran (None when they stop
    only where the seeds end)."""
    seed = len(race.diffs(arm))
    for side in (arm, 0):
        if race.values.get((side, seed)) is not None:
            continue
        ran = _arm(trials, keys[side])
        ran = ran[ran["seed"] == seed]
        if len(ran):
            status = ran.iloc[0]["status"]
            return {"seed": seed, "trial": ran.iloc[0]["trial"], "status": status,
                    "why": WHY.get(status, status.lower())}
    return None


def _t_interval(diffs: list[float]) -> tuple[float, float] | None:
    """The fixed-n 95% t-interval of the mean difference (None without spread)."""
    test = stats.paired_test(diffs)
    if not test["sd"]:
        return None
    return (test["mean_diff"] - test["half_width"], test["mean_diff"] + test["half_width"])


def decisions(trials: pd.DataFrame, spec: RaceSpec, keys: list[Key]) -> list[dict]:
    """One row per comparison: the race's decision, its looks and seeds, the repeated
    interval, and the fixed-n t-interval of the same differences."""
    race = race_of(trials, spec, keys)
    out = []
    for index, key in enumerate(keys[1:], start=1):
        diffs, gap = race.diffs(index), _gap(trials, race, index, keys)
        decision: Decision = race.decision(index)
        used = diffs[:decision.n]
        out.append({
            "variant": key[0], "grid": json.loads(key[1]), "baseline": keys[0][0],
            "baseline_grid": json.loads(keys[0][1]), "metric": spec.metric,
            "decision": decision.decision, "n": decision.n, "looks": decision.looks,
            "mean": decision.mean, "repeated_interval": decision.interval,
            "t_interval": _t_interval(used), "pairs": len(diffs),
            "arm_seeds": _seeds_run(trials, key), "baseline_seeds": _seeds_run(trials, keys[0]),
            "prefix_stops": gap})
    return out


def _seeds_run(trials: pd.DataFrame, key: Key) -> int:
    return int(_arm(trials, key)["seed"].nunique())


def totals(trials: pd.DataFrame, spec: RaceSpec) -> dict:
    """Trials run against the fixed design that gives every arm ``max_seeds`` seeds."""
    run = int(trials["trial"].nunique())
    fixed = len(spec.arms) * spec.max_seeds
    rule = spec.rule()
    return {"arms": len(spec.arms), "comparisons": len(spec.arms) - 1,
            "max_seeds": spec.max_seeds, "min_seeds": spec.min_seeds, "margin": spec.margin,
            "alpha": spec.alpha, "nominal_level": rule.nominal_level(), "trials_run": run,
            "trials_fixed": fixed, "trials_saved": fixed - run,
            "saved_share": (fixed - run) / fixed}


def build(trials: pd.DataFrame, spec: RaceSpec, keys: list[Key]) -> dict:
    return {**totals(trials, spec), "metric": spec.metric,
            "decisions": decisions(trials, spec, keys)}


# --- output --------------------------------------------------------------------------


def _range(pair) -> str:
    return "-" if pair is None else f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def decision_line(d: dict, level: str) -> str:
    """E.g. ``dot:minmax:global vs cosine: better after 7 seeds (5 looks), repeated 95%
    interval [+0.004, +0.031]; fixed-n t interval [+0.009, +0.026]; seeds run: 7 and 9``."""
    line = (f"{label(d['variant'], d['grid'])} vs {label(d['baseline'], d['baseline_grid'])}:"
            f" {d['decision']} after {d['n']} seed{'s' if d['n'] != 1 else ''} "
            f"({d['looks']} look{'s' if d['looks'] != 1 else ''}), repeated {level} interval "
            f"{_range(d['repeated_interval'])}; fixed-n 95% t interval "
            f"{_range(d['t_interval'])}; seeds run: {d['arm_seeds']} by the arm, "
            f"{d['baseline_seeds']} by the baseline")
    if d["prefix_stops"]:
        gap = d["prefix_stops"]
        line += f"; paired seeds stop at seed {gap['seed']} ({gap['trial']} {gap['why']})"
    return line


def totals_line(race: dict) -> str:
    return (f"Trials: {race['trials_run']} run, against {race['trials_fixed']} for the fixed "
            f"design ({race['arms']} arms x {race['max_seeds']} seeds): "
            f"{race['trials_saved']} saved ({race['saved_share']:.0%}).")


def markdown(race: dict) -> list[str]:
    """The "Decisions" section: the rule in a sentence, one line per comparison, totals."""
    level = f"{1 - race['alpha']:.0%}"
    lines = ["## Decisions", "",
             f"A race on `{race['metric']}`: each arm got seeds until its repeated {level} "
             f"interval of the mean difference (valid at every look and over all "
             f"{race['comparisons']} comparisons together; each look at level "
             f"{race['nominal_level']:.3g}) lay above 0 (better), below 0 (worse) or inside "
             f"±{race['margin']:g} (equivalent), looking from {race['min_seeds']} to "
             f"{race['max_seeds']} seeds. The fixed-n t interval of the same differences is "
             "shown for comparison: it is narrower, and not valid after stopping on the data.",
             ""]
    lines += [f"- {decision_line(d, level)}" for d in race["decisions"]]
    return [*lines, "", totals_line(race)]
