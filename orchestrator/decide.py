"""When a race of arms over seeds may stop: a comparison with the baseline is decided.

dotsim adds seeds to a comparison (per-seed differences, arm minus baseline on the same
seed) until it is decided. Looking again after every seed and stopping at the first
good-looking result is how a fixed-seed test gets its false claims multiplied, so the
rule here is built for looking often.

The rule: repeated confidence intervals (Jennison & Turnbull, "Group Sequential Methods",
ch. 9), Pocock type. At every look n = min_seeds..max_seeds each comparison gets the
interval mean(d) +- t_{n-1}(1 - a*/2) sd(d)/sqrt(n), with the same nominal level a* at
every look, a* chosen so that one comparison's intervals, over all its looks, miss its
true mean difference with probability alpha / K (Bonferroni over the K comparisons). A
comparison is "better" when its interval lies above 0, "worse" when below 0, "equivalent"
when inside (-margin, margin), and the first decisive look decides for good.

Why that bounds every error: with probability at least 1 - alpha, every interval of every
comparison at every look covers its true mean difference (a* over the looks within a
comparison, Bonferroni across comparisons). A false "better" or "worse" (the interval
excludes 0 on the wrong side of the truth) and a false "equivalent" (the interval inside
+-margin while the truth is at least margin away) each need an interval that misses the
truth, so all of them together happen with probability at most alpha, however the
comparisons are correlated (they share the baseline's seeds).

How exact a* is. With normal per-seed differences the t statistics (mean - truth) / (sd
/ sqrt(n)) at the looks have a joint law free of the true mean and sd, so the chance
that some look's interval misses is a fixed function of a* and the looks, increasing in
a*; ``calibrated_level`` solves it for alpha / K by Monte-Carlo with a fixed seed, to a
standard error of 2% of alpha / K in the achieved rate (the only error: the rest is
exact). With one look there is nothing to simulate: a* = alpha / K, the t-test's level.
The normal-theory level (a Gaussian random walk with known spread leaving +-c with
probability alpha / K, ``crossing_probability``; Jennison & Turnbull's "significance
level approach" when used with t) is checkable by hand, but with t statistics, which are
less correlated across looks than z statistics, it misses too often (0.021 per
comparison against 0.0167, 0.059 family-wise at alpha = 0.05, K = 3, 20 seeds); the
calibrated level is 0.77-0.87x of it (K = 1-4, 5-20 seeds), below it in every case
tested. Beyond normal noise nothing is exact: bench/bench_decide.py measures the error
rates by simulation, with normal noise (0.047 family-wise at alpha = 0.05, K = 3, 20
seeds) and with heavier-tailed Student t3 noise, for which t intervals are conservative
(0.030-0.033). A race saves a* in its sweep's definition when planned (``Rule.level``),
so that a later numpy with another random stream cannot change a saved sweep's
decisions.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft, optimize, stats

from orchestrator.stats import ROUND_OFF, seeds_needed

DECISIONS = ("better", "worse", "equivalent", "undecided")
MIN_SEEDS = 3  # two seeds give a t-interval with 1 degree of freedom: 12.7 sd wide at 95%

# The random walk's density is carried on a grid this fine, in units of one seed's sd: the
# crossing probabilities of 2 to 200 looks come out within 3e-4 (relative) of a grid 5x
# finer, and solving for the level of 200 looks takes about 0.1 s.
GRID_STEP = 0.05
KERNEL_SDS = 8.0  # the increment's normal density is cut at 8 sd (mass beyond: 1e-15)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_looks(looks) -> tuple[int, ...]:
    out = tuple(looks)
    if not out or not all(_is_int(n) and n >= 1 for n in out):
        raise ValueError(f"looks must be positive integers, got {looks!r}")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"looks must be strictly increasing, got {looks!r}")
    return tuple(int(n) for n in out)


def _cell_share(x: np.ndarray, bound: float, step: float) -> np.ndarray:
    """Share of each grid cell [x - step/2, x + step/2] inside [-bound, bound].

    The continuation region's edge falls between grid points; weighting the edge cells by
    the part of them inside keeps the error of that cut of order step**2, where zeroing
    whole cells would leave an error of order step at every look.
    """
    return np.clip((bound - np.abs(x)) / step + 0.5, 0.0, 1.0)


def crossing_probability(c: float, looks: Sequence[int], *, step: float = GRID_STEP) -> float:
    """P(|S_n| / sqrt(n) >= c at some n in looks), S_n a sum of n independent N(0, 1).

    The chance that a standardised Gaussian random walk, watched at ``looks`` (increasing
    positive integers), ever leaves (-c, c): what a Pocock design spends. By recursive
    numerical integration (Armitage, McPherson & Rowe 1969): the density of S at the first
    look is N(0, n_1); it is cut to the continuation region (-c sqrt(n), c sqrt(n)) at each
    look and convolved with the N(0, n_next - n) increment up to the next; what is left at
    the end is the chance of never crossing. One look is 2 (1 - Phi(c)) exactly.
    """
    looks = _check_looks(looks)
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    if len(looks) == 1:
        return float(2 * stats.norm.sf(c))
    half = math.ceil(c * math.sqrt(looks[-1]) / step) + 1
    x = step * np.arange(-half, half + 1)
    density = stats.norm.pdf(x, scale=math.sqrt(looks[0])) * _cell_share(
        x, c * math.sqrt(looks[0]), step)
    # Convolution by FFT on a fixed length that holds the region plus the widest kernel,
    # so nothing wraps around; each increment's kernel transform is made once.
    widest = max(b - a for a, b in itertools.pairwise(looks))
    reach = math.ceil(KERNEL_SDS * math.sqrt(widest) / step)
    length = fft.next_fast_len(x.size + 2 * reach, real=True)
    kernels = {}
    for before, n in itertools.pairwise(looks):
        gap = n - before
        if gap not in kernels:
            k = np.zeros(length)
            offsets = np.arange(-reach, reach + 1)
            k[offsets % length] = step * stats.norm.pdf(offsets * step, scale=math.sqrt(gap))
            kernels[gap] = fft.rfft(k)
        spread = fft.irfft(fft.rfft(density, length) * kernels[gap], length)
        density = spread[: x.size] * _cell_share(x, c * math.sqrt(n), step)
    return float(max(0.0, 1.0 - step * density.sum()))


@functools.lru_cache(maxsize=256)
def _pocock_constant(alpha: float, comparisons: int, looks: tuple[int, ...]) -> float:
    """c with crossing_probability(c, looks) = alpha / comparisons (cached: the race asks
    for it at every decision).

    Bracketed by one look (crossing no likelier than at any single look) and Bonferroni
    over the looks (no likelier than the sum of the looks' chances).
    """
    target = alpha / comparisons
    low = float(stats.norm.isf(target / 2))
    if len(looks) == 1:
        return low
    high = float(stats.norm.isf(target / (2 * len(looks))))
    return optimize.brentq(lambda c: crossing_probability(c, looks) - target, low, high,
                           xtol=1e-7)


# Calibration of a* for t statistics (calibrated_level). Paths are chosen so that the
# Monte-Carlo standard error of the achieved rate, sqrt(p (1 - p) / paths) at p = alpha / K,
# is CALIBRATION_RSE (2%) of p: paths = (1 - p) / (0.02**2 p), 47,500 at p = 0.05, 147,500
# at 0.05 / 3, 197,500 at 0.05 / 4 (the calibrated a* itself then varies by 2-3% from
# seed to seed). Draws are float32, CALIBRATION_CHUNK at a time: about 0.2 s for 20 looks
# and 1.2 s for 200 at p = 0.05 / 3 on the 2-core dev VM, in proportion to 1 / p (13 s for
# 200 looks at p = 0.001).
CALIBRATION_RSE = 0.02
CALIBRATION_SEED = 20261203
CALIBRATION_CHUNK = 4_000_000  # normal draws per chunk (16 MB; a few arrays that size)


def calibration_paths(alpha_per_comparison: float) -> int:
    """Monte-Carlo paths giving the achieved rate a standard error of 2% of it."""
    p = float(alpha_per_comparison)
    return math.ceil((1 - p) / (CALIBRATION_RSE**2 * p))


def calibrated_level(alpha_per_comparison: float, looks: Sequence[int], *,
                     paths: int | None = None, seed: int = CALIBRATION_SEED) -> float:
    """a*: the level whose t-intervals, looked at after ``looks`` normal values, miss their
    mean at some look with probability ``alpha_per_comparison``.

    That is P(|T_n| >= t_{n-1}(1 - a*/2) at some n in looks) = alpha_per_comparison, T_n
    the t statistic of the first n values; its law is free of their mean and sd. With one
    look a* is alpha_per_comparison exactly; otherwise Monte-Carlo over ``paths`` (default
    ``calibration_paths``) standard normal paths drawn with ``seed`` (numpy's default_rng):
    the same paths for every candidate a* (common random numbers), so the simulated rate
    is a step function increasing in a*, and its root, what bisection on a* would close
    in on, is found exactly: a path crosses at a* iff its smallest p-value over the looks
    is <= a*, so a* is the (alpha_per_comparison * paths)-th smallest of those. Cached.
    """
    p = float(alpha_per_comparison)
    if not 0 < p < 1:
        raise ValueError(f"alpha_per_comparison must lie strictly between 0 and 1, got "
                         f"{alpha_per_comparison!r}")
    looks = _check_looks(looks)
    if paths is None:
        paths = calibration_paths(p)
    if not _is_int(paths) or paths < 1 / p:
        raise ValueError(f"paths must be an integer >= 1 / alpha_per_comparison, got "
                         f"{paths!r}")
    if looks[0] < 2:
        raise ValueError(f"a t statistic needs 2 values or more, got looks {looks!r}")
    return _calibrated_level(p, looks, int(paths), int(seed))


@functools.lru_cache(maxsize=256)
def _calibrated_level(p: float, looks: tuple[int, ...], paths: int, seed: int) -> float:
    if len(looks) == 1:
        return p
    ns = np.array(looks)
    df = ns - 1
    top = int(ns[-1])
    # Only p-values below a* count, and a* <= p (the first look alone misses with
    # probability a*): screening at 2p leaves out no path that matters.
    screen = stats.t.isf(min(p, 0.5), df).astype(np.float32)
    n32 = ns.astype(np.float32)
    rng = np.random.default_rng(seed)
    smallest = np.full(paths, np.inf)
    chunk = max(1, CALIBRATION_CHUNK // top)
    for start in range(0, paths, chunk):
        rows = min(chunk, paths - start)
        x = rng.standard_normal((rows, top), dtype=np.float32)
        s1 = np.cumsum(x, axis=1)[:, ns - 1]
        np.square(x, out=x)
        s2 = np.cumsum(x, axis=1)[:, ns - 1]
        var = np.maximum(s2 - s1 * s1 / n32, 0.0) / df.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(s1) / np.sqrt(var * n32)  # sd 0 (never, in practice): inf, crossed
        path, look = np.nonzero(~(t < screen))
        pvalues = np.nan_to_num(2 * stats.t.sf(t[path, look].astype(float), df[look]))
        np.minimum.at(smallest[start:start + rows], path, pvalues)
    k = math.ceil(p * paths)
    if np.count_nonzero(np.isfinite(smallest)) < k:
        raise RuntimeError("calibration screened out paths it needed: a bug")
    return float(np.partition(smallest, k - 1)[k - 1])


@dataclass(frozen=True)
class Decision:
    """What a comparison's per-seed differences decide.

    ``n`` is the pairs at the deciding look, or, when undecided, at the last look made;
    before the first look (fewer than ``min_seeds`` pairs) it is the pairs given, with
    ``looks`` 0, ``mean`` their mean (None without pairs) and no interval.
    """

    decision: str  # one of DECISIONS
    n: int
    looks: int  # looks made up to and including that one
    mean: float | None  # mean difference at that look
    interval: tuple[float, float] | None  # the repeated (sequentially valid) interval


@dataclass(frozen=True)
class Rule:
    """The repeated-interval stopping rule for ``comparisons`` comparisons with one baseline.

    ``alpha`` bounds the chance of any false claim over all comparisons and looks (with
    normal noise, up to the calibration's Monte-Carlo error, see the module's docstring);
    ``margin`` (> 0, in the metric's units) is the smallest difference that matters, the
    equivalence margin. Looks are at n = min_seeds..max_seeds pairs, or at ``looks`` (an
    increasing schedule from min_seeds to max_seeds, e.g. geometric_looks): fewer looks
    give narrower intervals at each, but a comparison can stop only at one of them.
    ``level``, when given, is the nominal level a* of every interval, taken as it is (a
    race stores the calibrated one when planned); otherwise it is calibrated_level's.
    """

    comparisons: int = 1
    alpha: float = 0.05
    margin: float = 0.01
    max_seeds: int = 20
    min_seeds: int = MIN_SEEDS
    looks: tuple[int, ...] | None = None
    level: float | None = None

    def __post_init__(self):
        if not _is_int(self.comparisons) or self.comparisons < 1:
            raise ValueError(f"comparisons must be an integer >= 1, got {self.comparisons!r}")
        if not (isinstance(self.alpha, numbers.Real) and 0 < self.alpha < 1):
            raise ValueError(f"alpha must lie strictly between 0 and 1, got {self.alpha!r}")
        if not (isinstance(self.margin, numbers.Real) and 0 < self.margin < math.inf):
            raise ValueError(f"margin must be a positive finite number, got {self.margin!r}")
        if not (_is_int(self.min_seeds) and _is_int(self.max_seeds)
                and 2 <= self.min_seeds <= self.max_seeds):
            raise ValueError("min_seeds and max_seeds must be integers with 2 <= min_seeds "
                             f"<= max_seeds, got {self.min_seeds!r} and {self.max_seeds!r}")
        if self.looks is not None:
            looks = _check_looks(self.looks)
            if looks[0] != self.min_seeds or looks[-1] != self.max_seeds:
                raise ValueError(f"looks must run from min_seeds ({self.min_seeds}) to "
                                 f"max_seeds ({self.max_seeds}), got {self.looks!r}")
            object.__setattr__(self, "looks", looks)
        if self.level is not None and not (
                isinstance(self.level, numbers.Real) and not isinstance(self.level, bool)
                and 0 < self.level < 1):
            raise ValueError(f"level must lie strictly between 0 and 1, got {self.level!r}")

    def schedule(self) -> tuple[int, ...]:
        """The seed counts at which the rule looks."""
        if self.looks is not None:
            return self.looks
        return tuple(range(self.min_seeds, self.max_seeds + 1))

    def nominal_level(self) -> float:
        """a*: the two-sided level of each interval at each look; ``level`` when given,
        else calibrated for t statistics at alpha / comparisons over the schedule."""
        if self.level is not None:
            return float(self.level)
        return calibrated_level(float(self.alpha) / int(self.comparisons), self.schedule())

    def normal_theory_level(self) -> float:
        """The level a Gaussian random walk with known spread would need (Pocock's
        constant over the schedule, see crossing_probability): the hand-checkable
        reference, higher than the calibrated level."""
        c = _pocock_constant(float(self.alpha), int(self.comparisons), self.schedule())
        return float(2 * stats.norm.sf(c))

    def critical(self, n: int) -> float:
        """The t critical value of the interval at n pairs."""
        if not _is_int(n) or not self.min_seeds <= n <= self.max_seeds:
            raise ValueError(f"n must be an integer from min_seeds ({self.min_seeds}) to "
                             f"max_seeds ({self.max_seeds}), got {n!r}")
        return float(self._criticals()[n - self.min_seeds])

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a frozen Rule is a value, hashed as one
    def _criticals(self) -> np.ndarray:
        """t critical values for n = min_seeds..max_seeds (decide runs on every result)."""
        n = np.arange(self.min_seeds, self.max_seeds + 1)
        values = stats.t.isf(self.nominal_level() / 2, n - 1)
        values.setflags(write=False)
        return values

    def _diffs(self, diffs) -> np.ndarray:
        x = np.asarray(list(diffs), dtype=float)
        if x.ndim != 1 or not np.isfinite(x).all():
            raise ValueError("diffs must be finite numbers, one per seed in seed order "
                             "(a missing seed ends the prefix that can be judged)")
        if x.size > self.max_seeds:
            raise ValueError(f"at most max_seeds ({self.max_seeds}) diffs, got {x.size}")
        return x

    def _intervals(self, x: np.ndarray, ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means and intervals (rows of low, high; NaN where undefined) of the prefixes
        x[:n] for the looks ns, all at once: decide runs on every result of a race.

        Sums are running sums (cumsum adds left to right), so a look's numbers depend on
        x[:n] alone, to the last bit: seeds after a look cannot move its interval.
        """
        if ns.size == 0:
            return np.empty(0), np.empty((0, 2))
        last = ns - 1
        means = np.cumsum(x)[last] / ns
        deviations = x[None, : ns[-1]] - means[:, None]
        squares = np.cumsum(deviations**2, axis=1)[np.arange(ns.size), last]
        sd = np.sqrt(squares / (ns - 1))
        # no spread across the prefix, up to round-off (as orchestrator.stats judges it)
        spread = np.maximum.accumulate(x)[last] - np.minimum.accumulate(x)[last]
        flat = spread <= ROUND_OFF * np.maximum(1.0, np.maximum.accumulate(np.abs(x))[last])
        half = self._criticals()[ns - self.min_seeds] * sd / np.sqrt(ns)
        bounds = np.column_stack([means - half, means + half])
        bounds[flat] = np.nan
        return means, bounds

    def interval(self, diffs) -> tuple[float, float] | None:
        """The repeated interval of the mean difference at n = len(diffs) pairs.

        None below min_seeds, and when the differences do not vary across seeds: a
        t-interval is then undefined, and a zero-width one would claim a certainty that a
        few equal numbers cannot give (paired_test says the same of p = 0). Valid jointly
        over the rule's looks; at a seed count off the schedule it is the same formula.
        """
        x = self._diffs(diffs)
        if x.size < self.min_seeds:
            return None
        return _pair(self._intervals(x, np.array([x.size]))[1][0])

    def classify(self, interval: tuple[float, float] | None) -> str:
        """The decision one interval supports; "better" over "equivalent" when both hold
        (0 < low and high < margin: the arm is better, by less than the margin)."""
        if interval is None:
            return "undecided"
        low, high = interval
        if low > 0:
            return "better"
        if high < 0:
            return "worse"
        if -self.margin < low and high < self.margin:
            return "equivalent"
        return "undecided"

    def decide(self, diffs) -> Decision:
        """The decision of per-seed differences (arm - baseline) in seed order.

        Looks at n = min_seeds, ... up to len(diffs) in order and returns the first
        decisive look: seeds after it never change the decision, so it depends on the
        differences alone, not on the order their trials finished. Undecided when no look
        is decisive (a look with no spread across seeds never is, see ``interval``).
        """
        x = self._diffs(diffs)
        ns = np.array([n for n in self.schedule() if n <= x.size], dtype=int)
        if ns.size == 0:
            return Decision("undecided", int(x.size), 0,
                            float(x.mean()) if x.size else None, None)
        means, bounds = self._intervals(x, ns)
        low, high = bounds[:, 0], bounds[:, 1]  # NaN compares False: undecided
        decisive = (low > 0) | (high < 0) | ((-self.margin < low) & (high < self.margin))
        look = int(np.argmax(decisive)) if decisive.any() else ns.size - 1
        interval = _pair(bounds[look])
        return Decision(self.classify(interval), int(ns[look]), look + 1,
                        float(means[look]), interval)


def _pair(bounds: np.ndarray) -> tuple[float, float] | None:
    return None if np.isnan(bounds).any() else (float(bounds[0]), float(bounds[1]))


def geometric_looks(min_seeds: int = MIN_SEEDS, max_seeds: int = 20,
                    per_doubling: int = 3) -> tuple[int, ...]:
    """A look schedule whose gaps grow with n: 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, ...

    The seed counts 2**(k / per_doubling) rounded (``per_doubling`` looks each time the
    seeds double), from min_seeds, ending at max_seeds. Late looks add little new
    information, so spacing them out lowers the level every look must pay for.
    """
    if not (_is_int(min_seeds) and _is_int(max_seeds) and 2 <= min_seeds <= max_seeds):
        raise ValueError("min_seeds and max_seeds must be integers with 2 <= min_seeds <= "
                         f"max_seeds, got {min_seeds!r} and {max_seeds!r}")
    if not _is_int(per_doubling) or per_doubling < 1:
        raise ValueError(f"per_doubling must be an integer >= 1, got {per_doubling!r}")
    top = math.ceil(per_doubling * math.log2(max_seeds))
    counts = {round(2 ** (k / per_doubling)) for k in range(top + 1)}
    return tuple(sorted({min_seeds, max_seeds}
                        | {n for n in counts if min_seeds < n < max_seeds}))


def fixed_seeds(sd: float, margin: float, *, power: float, comparisons: int, alpha: float,
                max_n: int = 2000) -> int | None:
    """Seeds per arm of the fixed-seed design the race is measured against.

    The smallest n whose two-sided paired t-test at level alpha / comparisons (Bonferroni,
    as the race) detects a true difference of ``margin`` with ``power``, taking ``sd`` (of
    the per-seed differences) as known. None when more than max_n would be needed.
    """
    if not _is_int(comparisons) or comparisons < 1:
        raise ValueError(f"comparisons must be an integer >= 1, got {comparisons!r}")
    return seeds_needed(margin, sd, power=power, alpha=alpha / comparisons, max_n=max_n)


# --- many comparisons at once: simulated races ------------------------------------------

SIMULATION_CHUNK = 2_000_000  # per-seed differences simulated at a time (16 MB of them)


def decide_many(rule: Rule, diffs, *,
                known_sd: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rule.decide over many comparisons at once, for simulations.

    ``diffs``: per-seed differences in seed order along the last axis (min_seeds to
    max_seeds of them). Returns each comparison's decision, as its index in DECISIONS,
    and n: the pairs at the deciding look, or at the last look made when undecided. The
    same decisions as Rule.decide (bench/bench_decide.py checks them one by one), but for
    the last bits of round-off in a look's bounds. ``known_sd``: z-intervals with that sd
    at the normal-theory level instead (what the normal theory assumes, for comparison).
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim < 1 or not rule.min_seeds <= d.shape[-1] <= rule.max_seeds:
        raise ValueError(f"diffs must have min_seeds ({rule.min_seeds}) to max_seeds "
                         f"({rule.max_seeds}) values along their last axis, got shape "
                         f"{d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("diffs must be finite")
    ns = np.array([n for n in rule.schedule() if n <= d.shape[-1]])
    last = ns - 1
    y = d - d[..., :1]  # shifted: the running sums of squares lose nothing
    s1 = np.cumsum(y, axis=-1)[..., last]
    s2 = np.cumsum(y * y, axis=-1)[..., last]
    means = d[..., :1] + s1 / ns
    if known_sd is None:
        crit = rule._criticals()[ns - rule.min_seeds]
        sd = np.sqrt(np.maximum(s2 - s1**2 / ns, 0.0) / (ns - 1))
    else:
        crit = stats.norm.isf(rule.normal_theory_level() / 2)
        sd = float(known_sd)
    half = crit * sd / np.sqrt(ns)
    low, high = means - half, means + half
    code = np.select([low > 0, high < 0, (-rule.margin < low) & (high < rule.margin)],
                     [0, 1, 2], 3)
    if known_sd is None:  # no spread across the prefix: undecided, as Rule.interval
        spread = (np.maximum.accumulate(d, axis=-1)[..., last]
                  - np.minimum.accumulate(d, axis=-1)[..., last])
        scale = np.maximum(1.0, np.maximum.accumulate(np.abs(d), axis=-1)[..., last])
        code[spread <= ROUND_OFF * scale] = 3
    decisive = code < 3
    first = np.argmax(decisive, axis=-1)
    decided = decisive.any(axis=-1)
    codes = np.where(decided, np.take_along_axis(code, first[..., None], axis=-1)[..., 0], 3)
    return codes, np.where(decided, ns[first], ns[-1])


def race_trials(seeds: np.ndarray) -> np.ndarray:
    """Trials of races whose arms used ``seeds`` (..., arms): the arms' seeds and the
    baseline's, which runs while any comparison is open, as many as the longest arm."""
    seeds = np.asarray(seeds)
    return seeds.max(axis=-1) + seeds.sum(axis=-1)


def simulate_race(rule: Rule, deltas: Sequence[float], sd: float, sims: int,
                  rng: np.random.Generator, *, draw=None, known_sd: bool = False,
                  check: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Simulated races of len(deltas) arms against a baseline: per race and arm, the
    decision (index in DECISIONS) and the seeds the arm used (decide_many's n).

    Arm k's true difference from the baseline is deltas[k]; every trial (arm or baseline,
    seed) gets its own noise of sd ``sd`` / sqrt(2), so per-seed differences have sd
    ``sd`` and the comparisons share the baseline's noise, as in a sweep. ``draw(rng,
    size)`` gives noise of unit sd (default: standard normal). Each arm takes seeds 0, 1,
    ... and stops when decided or at max_seeds; trials still running when a decision
    comes are not counted. ``known_sd``: z-intervals with the true sd (decide_many).
    ``check``: the first that many races are also decided by Rule.decide, one comparison
    at a time, and must agree (AssertionError otherwise).
    """
    deltas = np.asarray(deltas, dtype=float)
    if deltas.ndim != 1 or deltas.size < 1 or not np.isfinite(deltas).all():
        raise ValueError(f"deltas must be finite numbers, one per arm, got {deltas!r}")
    if not (isinstance(sd, numbers.Real) and 0 < sd < math.inf):
        raise ValueError(f"sd must be a positive finite number, got {sd!r}")
    if not _is_int(sims) or sims < 1:
        raise ValueError(f"sims must be an integer >= 1, got {sims!r}")
    if draw is None:
        def draw(generator, size):
            return generator.standard_normal(size)
    arms, top = deltas.size, rule.max_seeds
    codes = np.empty((sims, arms), dtype=int)
    used = np.empty((sims, arms), dtype=int)
    chunk = max(1, SIMULATION_CHUNK // ((arms + 1) * top))
    for start in range(0, sims, chunk):
        stop = min(sims, start + chunk)
        e = draw(rng, (stop - start, arms + 1, top)) * (sd / math.sqrt(2))
        d = deltas[None, :, None] + e[:, 1:] - e[:, :1]
        codes[start:stop], used[start:stop] = decide_many(
            rule, d, known_sd=sd if known_sd else None)
        for s in range(max(0, min(check, stop) - start)):
            for k in range(arms):
                ref = rule.decide(d[s, k])
                got = (DECISIONS[codes[start + s, k]], int(used[start + s, k]))
                if got != (ref.decision, ref.n):
                    raise AssertionError(f"decide_many {got} != Rule.decide "
                                         f"{(ref.decision, ref.n)}")
    return codes, used


def expected_trials(rule: Rule, deltas: Sequence[float], sd: float, *, sims: int = 2000,
                    seed: int = 0) -> dict:
    """Trials a race is expected to use, by simulation (``dotsim sweep --dry-run``).

    Arm k (k = 1..K, K = rule.comparisons) differs from the baseline by deltas[k - 1];
    per-seed differences are normal with sd ``sd``, the baseline's noise shared across
    the comparisons (simulate_race, ``sims`` races drawn with ``seed``). Returns
    "at_least" and "at_most", the trials when every comparison stops at the first look
    and when none stops before max_seeds, and the simulated "mean" and "p95".
    """
    if len(deltas) != rule.comparisons:
        raise ValueError(f"deltas must give one difference per comparison "
                         f"({rule.comparisons}), got {len(deltas)}")
    _, used = simulate_race(rule, deltas, sd, sims, np.random.default_rng(seed))
    trials = race_trials(used)
    arms = rule.comparisons + 1
    return {"at_least": arms * rule.schedule()[0], "mean": float(trials.mean()),
            "p95": float(np.percentile(trials, 95)), "at_most": arms * rule.max_seeds}
