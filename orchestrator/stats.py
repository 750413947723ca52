"""Statistics for comparing loss variants over a handful of seeds.

Pure functions of numbers (numpy + scipy), so the report can stay about layout. A sweep
has few seeds (often 3-5), so each function says what it does with n = 0, 1 and with
values that do not vary across seeds, instead of letting scipy warn or return NaN.

Paired comparisons work on per-seed differences (variant minus baseline on the same seed):
the seed's shared data order and initialisation cancel, which is the point of pairing.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

BOOTSTRAP_RESAMPLES = 9999  # scipy's default; enough for stable 2.5%/97.5% percentiles
# The 95% percentile bootstrap interval of the mean is shown from this many seeds on. Its
# coverage, measured by simulation (20000 samples per n, 1000 resamples each; issue 17):
#   n          3     4     5     6     7     8     9    10    11    12    13    14    15
#   normal   .749  .795  .834  .855  .876  .882  .895  .899  .904  .912  .911  .915  .919
#   t(3)     .748  .792  .826  .850  .869  .877  .888  .888  .893  .898  .904  .904  .909
# (with 3 seeds it is [min, max], which holds the mean 3 times in 4). It first reaches 90%
# under both noises at 13 seeds; below that a "95%" label would be false. The t-interval
# needs no such floor: its coverage is exact under normal noise (and measured 0.95-0.96
# under t(3) noise at n = 2..15).
BOOTSTRAP_MIN_SEEDS = 13
BOOTSTRAP_MIN_COVERAGE = 0.90  # what "covers" means in BOOTSTRAP_MIN_SEEDS
# Below this spread (relative to the values' size) differences are float round-off, e.g.
# 0.83 - 0.73 and 0.81 - 0.71 differ in the 17th digit; a t-test on them reports p ~ 1e-31.
ROUND_OFF = 1e-12


def _clean(values) -> np.ndarray:
    """The values as floats with NaN (and None) dropped: a missing metric is no seed."""
    x = np.asarray(list(values), dtype=float)
    return x[~np.isnan(x)]


def _no_spread(x: np.ndarray) -> bool:
    """True when all values are equal up to round-off (x must be non-empty)."""
    return float(np.ptp(x)) <= ROUND_OFF * max(1.0, float(np.abs(x).max()))


def _check_level(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean over seeds and the half-width of its t-interval.

    Returns ``{"mean", "half_width", "n"}``; ``mean`` is None without values and
    ``half_width`` None below two (one seed says nothing about the spread).
    """
    _check_level("confidence", confidence)
    x = _clean(values)
    n = len(x)
    if n == 0:
        return {"mean": None, "half_width": None, "n": 0}
    half = None
    if n >= 2:
        t = stats.t.ppf((1 + confidence) / 2, n - 1)
        half = float(t * x.std(ddof=1) / math.sqrt(n))
    return {"mean": float(x.mean()), "half_width": half, "n": n}


def bootstrap_ci(values, *, confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0, min_seeds: int = BOOTSTRAP_MIN_SEEDS
                 ) -> tuple[float, float] | None:
    """Percentile bootstrap interval ``(low, high)`` of the mean, resampling seeds.

    A check on the t-interval that does not assume normal seed-to-seed noise, once there
    are enough seeds for it: None below ``min_seeds`` values (default BOOTSTRAP_MIN_SEEDS,
    where the 95% interval's coverage reaches 90%; pass ``min_seeds=2`` to measure it).
    Percentile, not BCa: on tied or constant values scipy's BCa returns NaN with a
    warning. Of one variant's values it is that variant's interval, not a paired one;
    given per-seed differences (variant - baseline), it is the paired bootstrap. The
    single point ``(v, v)`` when nothing varies (scipy would still resample it).
    """
    _check_level("confidence", confidence)
    if min_seeds < 2:
        raise ValueError(f"min_seeds must be at least 2, got {min_seeds}")
    x = _clean(values)
    if len(x) < min_seeds:
        return None
    if _no_spread(x):
        mean = float(x.mean())
        return (mean, mean)
    res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def bootstrap_note(min_seeds: int = BOOTSTRAP_MIN_SEEDS) -> str:
    """Why an interval has no bootstrap beside it, in words."""
    return (f"bootstrap shown from {min_seeds} seeds: below, it covers less than "
            f"{BOOTSTRAP_MIN_COVERAGE:.0%}")


def clopper_pearson(successes: float, n: int, confidence: float = 0.95
                    ) -> tuple[float, float] | None:
    """The Clopper-Pearson ("exact") interval of a proportion: ``successes`` of ``n``.

    Chosen over Wilson's for its coverage at few seeds: at n = 3..15 the 95% Wilson
    interval covers 95.5% on average over the true proportion but dips to 83% near 0 and
    1 (88% between 0.1 and 0.9), while Clopper-Pearson never covers less than 95% (exact
    binomial sums over a grid of proportions). ``successes`` may be a half-integer (a tie
    counts 1/2, see ``probability_of_improvement``): the beta quantiles extend to it, and
    with ties at any rate the coverage stayed at or above 95% at n = 2..15 (exact sums over
    the win/tie/loss outcomes). None for n = 0.
    """
    _check_level("confidence", confidence)
    if n < 1:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    tail = (1 - confidence) / 2
    low = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(stats.beta.isf(tail, successes + 1, n - successes))
    return (low, high)


def probability_of_improvement(diffs, confidence: float = 0.95) -> dict:
    """P(variant > baseline on the same seed), as rliable's probability of improvement.

    Estimated from per-seed differences (variant - baseline) as the share of seeds where
    the variant is higher, a tie (equal up to round-off) counting 1/2, with its
    Clopper-Pearson interval. Returns ``{"estimate", "interval", "n", "wins", "ties"}``;
    estimate and interval are None without seeds. Unlike the mean difference it says how
    often, not by how much: 0.5 is a coin toss whatever the sizes.
    """
    x = _clean(diffs)
    n = len(x)
    ties = int((np.abs(x) <= ROUND_OFF).sum())
    wins = int((x > ROUND_OFF).sum())
    score = wins + ties / 2
    return {"estimate": score / n if n else None,
            "interval": clopper_pearson(score, n, confidence), "n": n, "wins": wins,
            "ties": ties}


def paired_test(diffs, *, confidence: float = 0.95, power: float = 0.8,
                alpha: float = 0.05) -> dict:
    """A variant against the baseline from its per-seed differences (variant - baseline).

    Returns ``{"n", "mean_diff", "sd", "half_width", "bootstrap_ci", "p", "detectable",
    "note"}``: the t half-width and percentile bootstrap interval of the mean difference
    (the bootstrap None below BOOTSTRAP_MIN_SEEDS pairs),
    the two-sided paired t-test p-value (uncorrected; see ``holm``), and the smallest true
    difference these n seeds would detect with ``power`` at the observed spread. ``note``
    is None unless the numbers need words: too few seeds, or no spread across seeds, where
    a t-test is undefined (p = 0 would claim a certainty three equal numbers cannot give).
    """
    x = _clean(diffs)
    n = len(x)
    out = {"n": n, "mean_diff": float(x.mean()) if n else None, "sd": None,
           "half_width": None, "bootstrap_ci": None, "p": None, "detectable": None,
           "note": None}
    if n < 2:
        out["note"] = f"too few paired seeds to tell (n={n})"
        return out
    out["half_width"] = mean_ci(x, confidence)["half_width"]
    out["bootstrap_ci"] = bootstrap_ci(x, confidence=confidence)
    if _no_spread(x):
        out["sd"], out["half_width"] = 0.0, 0.0
        if np.abs(x).max() <= ROUND_OFF:
            out["note"] = "identical on every seed (no spread across seeds)"
        else:
            out["note"] = f"no spread across seeds: every seed differs by {x[0]:+.3g}"
        return out
    out["sd"] = float(x.std(ddof=1))
    out["p"] = float(stats.ttest_1samp(x, 0.0).pvalue)
    out["detectable"] = detectable_difference(out["sd"], n, power=power, alpha=alpha)
    return out


def holm(pvalues) -> list:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Comparing several variants with the baseline gives several chances of a fluke; Holm
    keeps the chance of any false "better/worse" at alpha and is uniformly more powerful
    than Bonferroni. Step-down: sort ascending, scale the j-th smallest (0-based) by
    m - j, cap at 1, and take the running maximum so a larger raw p never gets a smaller
    adjusted one. None entries (no test possible) stay None and do not count toward m.
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    for p, _ in present:
        if not 0 <= p <= 1:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(present)
    adjusted = [None] * len(pvalues)
    running = 0.0
    for j, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - j) * p))
        adjusted[i] = running
    return adjusted


def _power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (paired) t-test with n pairs at a true
    standardised effect (mean difference / sd): both tails of the noncentral t.

    The lower tail is P(T < -crit | nc) = P(T > crit | -nc), written as ``sf`` because
    scipy 1.17's ``nct.cdf`` returns NaN far in that tail (e.g. df=1, nc=11.3).
    """
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def detectable_difference(sd: float, n: int, *, power: float = 0.8,
                          alpha: float = 0.05) -> float | None:
    """Smallest true mean paired difference that n seeds detect with the given power.

    Exact for the two-sided paired t-test at level alpha, taking ``sd`` (the per-seed
    differences' standard deviation) as the true spread. That is a planning figure: with
    3 seeds the observed sd is itself rough. None when n < 2 or sd is 0 or NaN (nothing
    to plan from). Solved in units of sd, where the answer does not depend on sd.
    """
    _check_level("alpha", alpha)
    if not alpha < power < 1:
        raise ValueError(f"power must lie between alpha ({alpha}) and 1, got {power}")
    if n < 2 or not sd > 0:
        return None

    def shortfall(effect: float) -> float:
        return _power(effect, n, alpha) - power

    high = 1.0
    while shortfall(high) < 0:  # power rises with the effect; at effect 0 it is alpha
        high *= 2
    return float(sd * optimize.brentq(shortfall, 0.0, high))


def seeds_needed(difference: float, sd: float, *, power: float = 0.8, alpha: float = 0.05,
                 max_n: int = 1000) -> int | None:
    """Smallest number of seeds whose detectable difference is at most ``difference``.

    None when sd is 0 or NaN (no spread to plan from) or more than ``max_n`` seeds would be
    needed. The detectable difference falls as n grows, so a bisection finds it.
    """
    if not difference > 0:
        raise ValueError(f"difference must be positive, got {difference}")
    if max_n < 2:
        raise ValueError(f"max_n must be at least 2, got {max_n}")

    def enough(n: int) -> bool:
        d = detectable_difference(sd, n, power=power, alpha=alpha)
        return d is not None and d <= difference

    if not enough(max_n):
        return None
    low, high = 1, max_n  # invariant: low seeds are not enough, high seeds are
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def power_sentence(n: int, sd: float, difference: float | None = None, *,
                   power: float = 0.8, alpha: float = 0.05, max_n: int = 1000) -> str:
    """One plain sentence on what n seeds can tell, and what a difference of interest needs.

    E.g. "3 seeds detect a difference of 0.052 or more (80% power at the observed
    spread); a 0.01 difference would need about 22".
    """
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if n < 2:
        return f"{seeds} cannot show the spread across seeds, so no detectable difference"
    detectable = detectable_difference(sd, n, power=power, alpha=alpha)
    if detectable is None:
        return "no spread across seeds, so no detectable difference can be estimated"
    text = (f"{seeds} detect a difference of {detectable:.3g} or more ({power:.0%} power at "
            "the observed spread)")
    if difference is None:
        return text
    needed = seeds_needed(difference, sd, power=power, alpha=alpha, max_n=max_n)
    if needed is None:
        return f"{text}; a {difference:.3g} difference would need more than {max_n}"
    if needed < n:
        return f"{text}; about {needed} would do for a {difference:.3g} difference"
    if needed == n:
        return f"{text}; enough for a {difference:.3g} difference"
    return f"{text}; a {difference:.3g} difference would need about {needed}"
