"""Error rates, power and cost of the race's stopping rule (orchestrator.decide), by
simulation; and how often small-sample intervals of a mean cover it.

    .venv/bin/python bench/bench_decide.py [--sims 10000] [--seed 0] [--quick]

Model: K arms and a baseline, per seed i the baseline's value b_i and arm k's a_ki, each
true mean plus its own noise; only the paired differences d_ki = delta_k + e_ki - e_0i
matter, and the shared baseline noise e_0i correlates the comparisons, as in a sweep.
The noise is normal, or Student t with 3 degrees of freedom scaled to the same sd, with
the per-arm sd set so that the differences' sd is that of the FSKIL science check
(docs/fskil-synthetic.json, fskil_mean_acc, paired: 0.017, 0.024 (median), 0.040).

Race mechanics: each arm takes seeds 0, 1, ... and stops when its comparison is decided
or at max_seeds; the baseline runs while any comparison is open, so it gets the most
seeds any arm used; trials = baseline seeds + the arms' seeds. Trials already running
when a decision comes (in-flight overshoot: up to the number of parallel slots) are not
counted. The fixed-seed design it is compared with runs n seeds on every arm and the
baseline, n from a paired t-test at alpha / K with the same power at the same difference
D, its sd known. The races are simulated by orchestrator.decide.simulate_race (the one
the CLI's dry-run estimate uses), vectorised, and checked against Rule.decide. Prints
Markdown tables; copy them with the machine into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
from scipy import stats

from orchestrator.decide import (
    DECISIONS,
    Rule,
    fixed_seeds,
    geometric_looks,
    race_trials,
    simulate_race,
)

ALPHA = 0.05
MARGIN = 0.01  # D: the smallest difference that matters (FSKIL mean accuracy)
SPREADS = (0.024, 0.017)  # sd of per-seed differences: the science check's median, smallest
NOISES = ("normal", "t3")
K = 3  # arms besides the baseline, as in the science check
SCENARIOS = {  # true differences (arm - baseline) of the K arms, in units of D
    "all equal": (0, 0, 0),
    "one D better": (1, 0, 0),
    "one 5D worse": (-5, 0, 0),
    "science check (0, +D, -5D)": (0, 1, -5),
}
CODES = DECISIONS
BUDGETS = (20, 30, 40, 50, 60, 70, 80, 90, 100, 120, 150, 200)
BOOTSTRAP_NS = (3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20)
CHECKED = 200  # sims per configuration also run through Rule.decide, one by one


def noise(kind: str, sd: float, size, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.0, sd, size)
    if kind == "t3":  # variance of t_3 is 3
        return rng.standard_t(3, size) * sd / math.sqrt(3)
    raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")


def race(rule: Rule, deltas, sd_diff: float, kind: str, sims: int,
         rng: np.random.Generator, known_sd: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Simulated sweeps (orchestrator.decide.simulate_race): per sim and arm, the
    decision's index in CODES and seeds used. The first CHECKED sims are also decided by
    Rule.decide itself and must agree. ``known_sd``: z-intervals with the true sd at the
    normal-theory level instead (what that theory assumes), not checked."""
    return simulate_race(rule, deltas, sd_diff, sims, rng,
                         draw=lambda generator, size: noise(kind, 1.0, size, generator),
                         known_sd=known_sd, check=0 if known_sd else CHECKED)


def rate_ci(hits: int, total: int) -> str:
    ci = stats.binomtest(hits, total).proportion_ci(0.95, method="exact")
    return f"{hits / total:.4f} [{ci.low:.4f}, {ci.high:.4f}]"


def summarise(codes: np.ndarray, used: np.ndarray, deltas) -> dict:
    deltas = np.asarray(deltas, dtype=float)
    false_bw = ((codes == 0) & (deltas <= 0)) | ((codes == 1) & (deltas >= 0))
    false_eq = (codes == 2) & (np.abs(deltas) >= MARGIN - 1e-12)
    trials = race_trials(used)
    at_d = np.flatnonzero(np.isclose(deltas, MARGIN))
    return {
        "sims": codes.shape[0],
        "false_bw": int(false_bw.any(axis=1).sum()),
        "false_any": int((false_bw | false_eq).any(axis=1).sum()),
        "false_eq_at_d": (float((codes[:, at_d[0]] == 2).mean()) if at_d.size else None),
        "power": float((codes[:, at_d[0]] == 0).mean()) if at_d.size else None,
        "rates": [[float((codes[:, k] == c).mean()) for c in range(4)]
                  for k in range(deltas.size)],
        "seeds": used.mean(axis=0),
        "trials": float(trials.mean()),
        "trials_p95": float(np.percentile(trials, 95)),
    }


def fixed_design(sd: float, power: float | None, arms: int) -> tuple[int | None, str]:
    """Seeds per arm and trials of the fixed design with this power at D."""
    if power is None or not ALPHA / arms < power < 1:
        return None, "n/a"
    n = fixed_seeds(sd, MARGIN, power=power, comparisons=arms, alpha=ALPHA)
    return n, ("> 2000" if n is None else str((arms + 1) * n))


def opt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def per_arm(summary: dict) -> str:
    """b/w/e/u percentages per arm, e.g. 0/0/0/100 | ..."""
    return " ; ".join("/".join(f"{100 * r:.0f}" for r in arm) for arm in summary["rates"])


def main_table(sims: int, rng: np.random.Generator, max_seeds: int) -> None:
    print(f"\n### Every scenario, looks at every seed 3..{max_seeds}, K = {K}, alpha = "
          f"{ALPHA}, D = {MARGIN}, {sims} sweeps each\n")
    print("| noise | diff sd | scenario (true diffs in D) | false better/worse, any arm "
          "[95% CI] | any false claim | false equivalent at D | power at D | decisions "
          "per arm b/w/e/u % | mean seeds per arm | trials mean | trials p95 | fixed n at "
          "same power | fixed trials | race / fixed |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: "
          "| ---: | ---: |")
    rule = Rule(comparisons=K, alpha=ALPHA, margin=MARGIN, max_seeds=max_seeds)
    for kind in NOISES:
        for sd in SPREADS:
            for name, units in SCENARIOS.items():
                deltas = [u * MARGIN for u in units]
                s = summarise(*race(rule, deltas, sd, kind, sims, rng), deltas)
                n_fixed, fixed_trials = fixed_design(sd, s["power"], K)
                ratio = (f"{s['trials'] / ((K + 1) * n_fixed):.2f}" if n_fixed else "n/a")
                print(f"| {kind} | {sd} | {name} | {rate_ci(s['false_bw'], sims)} | "
                      f"{s['false_any'] / sims:.4f} | {opt(s['false_eq_at_d'])} | "
                      f"{opt(s['power'])} | {per_arm(s)} | "
                      f"{', '.join(f'{v:.1f}' for v in s['seeds'])} | {s['trials']:.1f} | "
                      f"{s['trials_p95']:.0f} | {n_fixed or 'n/a'} | {fixed_trials} | "
                      f"{ratio} |")


def science_race(top: int, looks: str, sd: float, kind: str, sims: int,
                 rng: np.random.Generator, deltas) -> dict:
    schedule = geometric_looks(3, top) if looks == "geometric" else None
    rule = Rule(comparisons=K, alpha=ALPHA, margin=MARGIN, max_seeds=top, looks=schedule)
    return summarise(*race(rule, deltas, sd, kind, sims, rng), deltas)


def excess_table(sims: int, rng: np.random.Generator, max_seeds: int) -> None:
    """The level's effect, all arms equal: z with known sd at the normal-theory level,
    t at the normal-theory level (the rule before calibration), t at the calibrated one."""
    print(f"\n### All {K} arms equal, normal noise, looks 3..{max_seeds}: the normal-theory "
          f"level with the spread known and with the t statistic, and the calibrated level, "
          f"{sims} sweeps each\n")
    print("| intervals | level a* | false better/worse, any arm [95% CI] | per comparison "
          f"(target alpha/K = {ALPHA / K:.4f}) |")
    print("| --- | ---: | --- | ---: |")
    rule = Rule(comparisons=K, alpha=ALPHA, margin=MARGIN, max_seeds=max_seeds)
    normal = Rule(comparisons=K, alpha=ALPHA, margin=MARGIN, max_seeds=max_seeds,
                  level=rule.normal_theory_level())
    deltas = [0.0] * K
    for name, r, known in (("z, sd known, normal-theory level", rule, True),
                           ("t, normal-theory level (the previous rule)", normal, False),
                           ("t, calibrated level (Rule.decide)", rule, False)):
        codes, used = race(r, deltas, SPREADS[0], "normal", sims, rng, known_sd=known)
        s = summarise(codes, used, deltas)
        per = float(np.isin(codes, (0, 1)).mean())
        level = rule.normal_theory_level() if r is normal or known else r.nominal_level()
        print(f"| {name} | {level:.5f} | {rate_ci(s['false_bw'], sims)} | {per:.4f} |")
    # an independent check of the calibration: the per-path smallest p-value over the
    # looks, its alpha/K quantile the level at which one comparison misses alpha/K
    ns = np.arange(3, max_seeds + 1)
    x = rng.standard_normal((sims, max_seeds))
    s1 = np.cumsum(x, axis=1)[:, ns - 1]
    y = x - x[:, :1]
    q1, q2 = np.cumsum(y, axis=1)[:, ns - 1], np.cumsum(y * y, axis=1)[:, ns - 1]
    t = np.abs(s1 / ns) / np.sqrt((q2 - q1**2 / ns) / (ns - 1) / ns)
    smallest = (2 * stats.t.sf(t, ns - 1)).min(axis=1)
    needed = float(np.quantile(smallest, ALPHA / K))
    print(f"\nper-look level a*: normal theory {rule.normal_theory_level():.5f}, calibrated "
          f"{rule.nominal_level():.5f} ({rule.nominal_level() / rule.normal_theory_level():.2f}"
          f"x); independently, the level at which t-intervals of one comparison miss with "
          f"probability alpha/K ({sims} paths of the bench's own random stream): "
          f"{needed:.5f}")


def power_table(sims: int, rng: np.random.Generator, budgets) -> None:
    deltas = [u * MARGIN for u in SCENARIOS["science check (0, +D, -5D)"]]
    print(f"\n### Science-check shape at 80% power: the smallest max_seeds whose race has "
          f"power >= 0.8 at D (searched over {list(budgets)}, then bisected), {sims} sweeps "
          "each\n")
    print("| noise | diff sd | looks | max_seeds | power at D | false better/worse [95% CI]"
          " | any false claim | false equivalent at D | mean seeds per arm | trials mean | "
          "trials p95 | fixed n (80%) | fixed trials (80%) | race / fixed (80%) | fixed "
          "trials at race's power | race / that |")
    print("| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: "
          "| ---: | ---: | ---: | ---: |")
    for kind in NOISES:
        for sd in SPREADS:
            n80, _ = fixed_design(sd, 0.8, K)
            for looks in ("every seed", "geometric"):
                found, below = None, None
                for top in budgets:
                    s = science_race(top, looks, sd, kind, sims, rng, deltas)
                    if s["power"] >= 0.8:
                        found = (top, s)
                        break
                    below = top
                # the smallest budget between the last too small and the first enough
                while found is not None and below is not None and found[0] - below > 1:
                    top = (below + found[0]) // 2
                    s = science_race(top, looks, sd, kind, sims, rng, deltas)
                    found, below = ((top, s), below) if s["power"] >= 0.8 else (found, top)
                if found is None:
                    print(f"| {kind} | {sd} | {looks} | > {budgets[-1]} | {s['power']:.4f} |"
                          + " |" * 11)
                    continue
                top, s = found
                n_same, same_trials = fixed_design(sd, s["power"], K)
                print(f"| {kind} | {sd} | {looks} | {top} | {s['power']:.4f} | "
                      f"{rate_ci(s['false_bw'], sims)} | {s['false_any'] / sims:.4f} | "
                      f"{s['false_eq_at_d']:.4f} | "
                      f"{', '.join(f'{v:.1f}' for v in s['seeds'])} | {s['trials']:.1f} | "
                      f"{s['trials_p95']:.0f} | {n80} | {(K + 1) * n80} | "
                      f"{s['trials'] / ((K + 1) * n80):.2f} | {same_trials} | "
                      + (f"{s['trials'] / ((K + 1) * n_same):.2f} |" if n_same else "n/a |"))


def coverage_table(sims: int, rng: np.random.Generator) -> None:
    """Coverage of the 95% percentile bootstrap and t-intervals of a mean of n values."""
    print(f"\n### Coverage of 95% intervals of a mean (true mean 0), {sims} samples each\n")
    print("| n | normal: t | normal: percentile bootstrap | t3: t | t3: percentile bootstrap |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    covered = {kind: [] for kind in NOISES}  # n with the bootstrap at 0.90 or more
    for n in BOOTSTRAP_NS:
        row = []
        for kind in NOISES:
            x = noise(kind, 1.0, (sims, n), rng)
            half = stats.t.ppf(0.975, n - 1) * x.std(axis=1, ddof=1) / math.sqrt(n)
            t_cover = float((np.abs(x.mean(axis=1)) <= half).mean())
            res = stats.bootstrap((x,), np.mean, axis=-1, vectorized=True,
                                  confidence_level=0.95, n_resamples=9999,
                                  method="percentile", batch=200, rng=rng)
            ci = res.confidence_interval
            b_cover = float(((ci.low <= 0) & (0 <= ci.high)).mean())
            covered[kind].append(b_cover >= 0.90)
            row += [f"{t_cover:.3f}", f"{b_cover:.3f}"]
        print(f"| {n} | " + " | ".join(row) + " |")
    se = math.sqrt(0.9 * 0.1 / sims)

    def from_on(flags: list[bool]) -> str:
        """The smallest n from which every larger n tested covers 0.90 or more."""
        at = len(flags)
        while at > 0 and flags[at - 1]:
            at -= 1
        return str(BOOTSTRAP_NS[at]) if at < len(flags) else f"> {BOOTSTRAP_NS[-1]}"

    print("\nsmallest n from which the percentile bootstrap covers >= 0.90 (Monte-Carlo se "
          f"{se:.3f}): " + ", ".join(f"{kind} {from_on(covered[kind])}" for kind in NOISES))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=10_000, help="sweeps per scenario")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seeds", type=int, default=20, help="budget of the main table")
    parser.add_argument("--coverage-sims", type=int, default=5000,
                        help="samples per row of the coverage table")
    parser.add_argument("--quick", action="store_true", help="a 30-second run")
    args = parser.parse_args()
    sims = 1000 if args.quick else args.sims
    coverage_sims = 300 if args.quick else args.coverage_sims
    budgets = BUDGETS[::3] if args.quick else BUDGETS
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    print(f"# {platform.machine()}, {os.cpu_count()} cores; seed {args.seed}")
    rule = Rule(comparisons=K, alpha=ALPHA, margin=MARGIN, max_seeds=args.max_seeds)
    print(f"nominal level per look a* = {rule.nominal_level():.5f}, calibrated for t "
          f"(normal theory: {rule.normal_theory_level():.5f}; K = {K}, looks "
          f"3..{args.max_seeds}); critical t at n = 3, 5, 10, {args.max_seeds}: "
          + ", ".join(f"{rule.critical(n):.2f}" for n in (3, 5, 10, args.max_seeds)))
    excess_table(10 * sims, rng, args.max_seeds)
    main_table(sims, rng, args.max_seeds)
    power_table(sims, rng, budgets)
    coverage_table(coverage_sims, rng)
    print(f"\nruntime {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
