"""orchestrator.decide against hand-computed boundaries, an independent bivariate-normal
reference, Pocock's published constant, and independent simulations of its error rates
at the calibrated level."""

import math
import time

import numpy as np
import pytest
from scipy import stats

from orchestrator.decide import (
    DECISIONS,
    MIN_SEEDS,
    Decision,
    Rule,
    calibrated_level,
    calibration_paths,
    crossing_probability,
    decide_many,
    expected_trials,
    fixed_seeds,
    geometric_looks,
    simulate_race,
)
from orchestrator.stats import detectable_difference, seeds_needed

# --- the boundary ---------------------------------------------------------------------


@pytest.mark.parametrize("n, comparisons", [(3, 1), (3, 3), (6, 2)])
def test_one_look_is_a_plain_bonferroni_t_interval(n, comparisons):
    rule = Rule(comparisons=comparisons, alpha=0.05, min_seeds=n, max_seeds=n)
    assert rule.nominal_level() == pytest.approx(0.05 / comparisons, rel=1e-12)
    assert rule.critical(n) == pytest.approx(
        stats.t.ppf(1 - 0.05 / (2 * comparisons), n - 1), rel=1e-9)


def test_one_look_three_seeds_hand_value():
    assert Rule(min_seeds=3, max_seeds=3).critical(3) == pytest.approx(4.3027, abs=1e-4)


@pytest.mark.parametrize("c", [1.5, 2.0, 2.5, 3.0])
def test_two_looks_match_the_bivariate_normal(c):
    # |S_3|/sqrt(3) and |S_4|/sqrt(4) are standard normals with correlation sqrt(3/4)
    rho = math.sqrt(3 / 4)
    box = stats.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]], abseps=1e-9,
                                    releps=1e-9)
    never = box.cdf([c, c], lower_limit=[-c, -c])
    assert crossing_probability(c, [3, 4]) == pytest.approx(1 - never, rel=1e-3)
    # more than one look crosses more often than the first look alone
    assert crossing_probability(c, [3, 4]) > 2 * stats.norm.sf(c)


def test_pocock_five_looks():
    # Pocock (1977): 5 equally spaced looks at two-sided 0.05 need |Z| >= 2.413
    assert crossing_probability(2.413, [1, 2, 3, 4, 5]) == pytest.approx(0.05, abs=0.001)
    # the walk is scale free: looks 2, 4, ..., 10 are the same design
    assert crossing_probability(2.413, [2, 4, 6, 8, 10]) == pytest.approx(
        crossing_probability(2.413, [1, 2, 3, 4, 5]), abs=1e-4)


def test_the_grid_is_fine_enough_for_200_looks():
    looks = range(3, 201)
    assert crossing_probability(3.0, looks) == pytest.approx(
        crossing_probability(3.0, looks, step=0.01), abs=1e-4)


def test_normal_theory_level_spends_alpha_over_k_on_the_looks_and_is_fast():
    start = time.perf_counter()
    rule = Rule(comparisons=3, alpha=0.05, max_seeds=200)
    level = rule.normal_theory_level()
    assert time.perf_counter() - start < 1.0  # 0.1 s on the dev VM
    c = stats.norm.isf(level / 2)
    assert crossing_probability(c, range(3, 201)) == pytest.approx(0.05 / 3, rel=1e-4)
    # more looks, a stricter level at each; Bonferroni over the looks is stricter still
    levels = [Rule(comparisons=3, max_seeds=m).normal_theory_level()
              for m in (3, 10, 20, 200)]
    assert levels == sorted(levels, reverse=True)
    assert level > 0.05 / 3 / 198
    # fewer looks (a schedule) pay less
    assert Rule(comparisons=3, looks=geometric_looks(3, 200), max_seeds=200
                ).normal_theory_level() > level


@pytest.mark.parametrize("comparisons, looks", [
    (1, (3, 4)), (1, range(3, 11)), (3, range(3, 6)), (3, range(3, 21)), (4, range(3, 21)),
    (3, geometric_looks(3, 40)), (2, range(2, 8)),
])
def test_the_calibrated_level_is_below_the_normal_theory_level(comparisons, looks):
    looks = tuple(looks)
    rule = Rule(comparisons=comparisons, min_seeds=looks[0], max_seeds=looks[-1],
                looks=looks)
    calibrated, normal = rule.nominal_level(), rule.normal_theory_level()
    assert calibrated == calibrated_level(0.05 / comparisons, looks)
    # t statistics are less correlated across looks than z statistics: each look must
    # pay more; and Bonferroni over the looks is a lower bound still
    assert 0.05 / comparisons / len(looks) < calibrated < normal < 0.05 / comparisons


def test_calibration_is_fast_cached_and_fixed():
    start = time.perf_counter()
    level = calibrated_level(0.05 / 4, range(3, 21), seed=7)
    assert time.perf_counter() - start < 2.0  # 0.2 s on the dev VM
    start = time.perf_counter()
    assert calibrated_level(0.05 / 4, list(range(3, 21)), seed=7) == level
    assert time.perf_counter() - start < 0.01
    # 2% relative standard error in the achieved rate at alpha / K
    p = 0.05 / 3
    assert math.sqrt(p * (1 - p) / calibration_paths(p)) == pytest.approx(0.02 * p, rel=1e-3)
    # another seed: the same level within Monte-Carlo error (2-3% of it per seed)
    assert calibrated_level(0.05 / 4, range(3, 21), seed=8) == pytest.approx(level, rel=0.12)


def _t_crossing(level, looks, sims, seed):
    """Share of normal paths whose t-interval at two-sided ``level`` excludes the true
    mean (0) at some look: independent of calibrated_level (float64, mean and sd by
    numpy's own mean and std, critical values by scipy)."""
    looks = np.asarray(looks)
    x = np.random.default_rng(seed).normal(3.0, 0.02, size=(sims, looks[-1]))
    crossed = np.zeros(sims, dtype=bool)
    for n in looks:
        head = x[:, :n]
        half = stats.t.isf(level / 2, n - 1) * head.std(axis=1, ddof=1) / math.sqrt(n)
        crossed |= np.abs(head.mean(axis=1) - 3.0) >= half
    return crossed.mean()


@pytest.mark.parametrize("comparisons, max_seeds", [(3, 20), (1, 10)])
def test_the_calibrated_level_spends_alpha_over_k_on_t_intervals(comparisons, max_seeds):
    rule = Rule(comparisons=comparisons, alpha=0.05, max_seeds=max_seeds)
    p, sims = 0.05 / comparisons, 100_000
    rate = _t_crossing(rule.nominal_level(), rule.schedule(), sims, seed=99)
    # this simulation's error and the calibration's (2% of p), together
    se = math.sqrt(p * (1 - p) / sims + (0.02 * p) ** 2)
    assert abs(rate - p) <= 3 * se
    # the normal-theory level misses too often (0.021 against 0.0167 at K = 3, 20 seeds)
    if comparisons == 3:
        assert _t_crossing(rule.normal_theory_level(), rule.schedule(), sims,
                           seed=99) > p + 3 * se


def test_a_given_level_is_taken_as_it_is():
    rule = Rule(comparisons=3, max_seeds=20, level=0.0021)
    assert rule.nominal_level() == 0.0021
    assert rule.critical(3) == pytest.approx(stats.t.isf(0.0021 / 2, 2), rel=1e-12)
    assert Rule(level=0.01) != Rule()


def test_critical_values_are_t_quantiles_at_the_nominal_level():
    rule = Rule(comparisons=2, max_seeds=10)
    for n in range(3, 11):
        assert rule.critical(n) == pytest.approx(
            stats.t.ppf(1 - rule.nominal_level() / 2, n - 1), rel=1e-9)


def test_geometric_looks():
    assert geometric_looks(3, 40) == (3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40)
    assert geometric_looks(3, 18) == (3, 4, 5, 6, 8, 10, 13, 16, 18)
    assert geometric_looks(5, 5) == (5,)


# --- decisions ------------------------------------------------------------------------

POSITIVE = [0.05, 0.06, 0.04, 0.055, 0.045, 0.05]


def hand_interval(rule, diffs):
    n = len(diffs)
    t = stats.t.ppf(1 - rule.nominal_level() / 2, n - 1)
    half = t * np.std(diffs, ddof=1) / math.sqrt(n)
    return (np.mean(diffs) - half, np.mean(diffs) + half)


def test_clearly_better_is_decided_at_its_first_decisive_look():
    rule = Rule(margin=0.01)
    # n = 3: mean 0.05, sd 0.01, t critical 11.5 at level 0.0074: half-width 0.067
    assert hand_interval(rule, POSITIVE[:3])[0] < 0
    low, high = hand_interval(rule, POSITIVE[:4])
    assert low > 0  # n = 4: mean 0.05125, half-width 0.028
    decision = rule.decide(POSITIVE)
    assert decision == Decision("better", 4, 2, pytest.approx(0.05125),
                                pytest.approx((low, high)))
    # by hand at a* = 0.0075: t_3(1 - 0.00375) = 6.4677, sd 0.0085391, half-width 0.027614
    fixed = Rule(margin=0.01, level=0.0075).decide(POSITIVE)
    assert fixed.interval == pytest.approx((0.02364, 0.07886), abs=1e-5)


def test_clearly_worse():
    decision = Rule(level=0.0075).decide([-d for d in POSITIVE])
    assert (decision.decision, decision.n, decision.looks) == ("worse", 4, 2)
    assert decision.interval == pytest.approx((-0.07886, -0.02364), abs=1e-5)
    assert Rule().decide([-d for d in POSITIVE]).decision == "worse"


def test_small_differences_around_zero_are_equivalent():
    rule = Rule(margin=0.01)
    diffs = [0.002, -0.003, 0.001, -0.001, 0.0025, -0.002, 0.0005, 0.0]
    low, high = hand_interval(rule, diffs[:3])
    assert low < -0.01  # n = 3 is too wide
    low, high = hand_interval(rule, diffs[:4])
    assert -0.01 < low < 0 < high < 0.01
    assert rule.decide(diffs) == Decision("equivalent", 4, 2, pytest.approx(-0.00025),
                                          pytest.approx((low, high)))
    # the same numbers with a margin they cannot show stay undecided to the last look
    narrow = Rule(margin=0.002).decide(diffs)
    assert (narrow.decision, narrow.n, narrow.looks) == ("undecided", 8, 6)
    assert narrow.interval == pytest.approx(hand_interval(rule, diffs))


def test_better_wins_over_equivalent():
    decision = Rule(margin=0.01).decide([0.005, 0.0051, 0.0049])
    assert decision.decision == "better"
    assert 0 < decision.interval[0] < decision.interval[1] < 0.01


def test_a_decision_is_frozen_at_its_look():
    rule = Rule()
    first = rule.decide(POSITIVE[:4])
    assert first.decision == "better"
    contradicting = POSITIVE[:4] + [-0.5, -0.6, -0.4, -0.55, -0.45] * 3
    assert rule.decide(contradicting) == first
    assert rule.decide(POSITIVE) == first


def test_before_the_first_look_nothing_is_decided():
    rule = Rule()
    assert rule.decide([]) == Decision("undecided", 0, 0, None, None)
    assert rule.decide([0.5, 0.6]) == Decision("undecided", 2, 0, pytest.approx(0.55), None)
    assert rule.interval([0.5, 0.6]) is None
    assert MIN_SEEDS == 3 and Rule().min_seeds == 3


def test_no_spread_is_undecided():
    rule = Rule()
    assert rule.interval([0.02] * 5) is None
    assert rule.decide([0.02] * 5) == Decision("undecided", 5, 3, pytest.approx(0.02), None)
    assert rule.decide([0.0] * 3).decision == "undecided"
    # spread arriving later can still decide
    assert rule.decide([0.05] * 3 + [0.06, 0.04]).decision == "better"


def test_undecided_reports_the_last_look():
    rule = Rule()
    diffs = [0.03, -0.04, 0.05, -0.02, 0.01]
    decision = rule.decide(diffs)
    assert decision == Decision("undecided", 5, 3, pytest.approx(0.006),
                                pytest.approx(hand_interval(rule, diffs)))
    assert decision.decision in DECISIONS


def test_a_schedule_decides_only_at_its_looks():
    rule = Rule(looks=geometric_looks(3, 20))
    diffs = [0.03, -0.04, 0.05, -0.02, 0.01, 0.002, 0.03, 0.03, 0.03, 0.03]
    every = Rule().decide(diffs[:7])
    assert every.decision == "undecided"
    decision = rule.decide(diffs[:7])
    assert (decision.decision, decision.n, decision.looks) == ("undecided", 6, 4)
    assert rule.decide(diffs).n in rule.schedule()


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0}, "alpha must lie strictly between 0 and 1"),
    ({"alpha": 1.5}, "alpha must lie strictly between 0 and 1"),
    ({"margin": 0}, "margin must be a positive"),
    ({"margin": -0.01}, "margin must be a positive"),
    ({"margin": math.inf}, "margin must be a positive"),
    ({"comparisons": 0}, "comparisons must be an integer >= 1"),
    ({"comparisons": 1.5}, "comparisons must be an integer >= 1"),
    ({"min_seeds": 1}, "2 <= min_seeds <= max_seeds"),
    ({"min_seeds": 5, "max_seeds": 4}, "2 <= min_seeds <= max_seeds"),
    ({"max_seeds": 20.0}, "2 <= min_seeds <= max_seeds"),
    ({"looks": (3, 5, 4, 20)}, "strictly increasing"),
    ({"looks": (4, 20)}, "from min_seeds"),
    ({"level": 0}, "level must lie strictly between 0 and 1"),
    ({"level": 1.0}, "level must lie strictly between 0 and 1"),
    ({"level": -0.01}, "level must lie strictly between 0 and 1"),
    ({"level": math.nan}, "level must lie strictly between 0 and 1"),
    ({"level": "0.01"}, "level must lie strictly between 0 and 1"),
    ({"level": True}, "level must lie strictly between 0 and 1"),
])
def test_bad_rules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Rule(**kwargs)


def test_bad_inputs_are_refused():
    rule = Rule(max_seeds=5)
    with pytest.raises(ValueError, match="at most max_seeds"):
        rule.decide([0.01] * 6)
    with pytest.raises(ValueError, match="finite"):
        rule.decide([0.01, float("nan"), 0.02])
    with pytest.raises(ValueError, match="from min_seeds"):
        rule.critical(2)
    with pytest.raises(ValueError, match="c must be positive"):
        crossing_probability(0.0, [1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        crossing_probability(2.0, [3, 3])
    with pytest.raises(ValueError, match="alpha_per_comparison"):
        calibrated_level(0.0, [3, 4])
    with pytest.raises(ValueError, match="2 values or more"):
        calibrated_level(0.05, [1, 4])
    with pytest.raises(ValueError, match="one difference per comparison"):
        expected_trials(Rule(comparisons=2), [0.0], 0.02)
    with pytest.raises(ValueError, match="sd must be a positive"):
        expected_trials(Rule(), [0.0], 0.0)
    with pytest.raises(ValueError, match="last axis"):
        decide_many(Rule(max_seeds=5), np.zeros((2, 6)))


def test_fixed_seeds_is_the_bonferroni_t_test_design():
    n = fixed_seeds(0.024, 0.01, power=0.8, comparisons=3, alpha=0.05)
    assert n == seeds_needed(0.01, 0.024, power=0.8, alpha=0.05 / 3, max_n=2000)
    assert detectable_difference(0.024, n, power=0.8, alpha=0.05 / 3) <= 0.01
    assert detectable_difference(0.024, n - 1, power=0.8, alpha=0.05 / 3) > 0.01
    # normal approximation: ((z_{1 - 0.05/6} + z_{0.8}) * 0.024 / 0.01)^2 = 60.4, a few more
    assert 61 <= n <= 66
    assert fixed_seeds(0.024, 0.01, power=0.8, comparisons=3, alpha=0.05, max_n=50) is None


# --- simulation -----------------------------------------------------------------------


def _equal_arms(sims, arms, seeds, seed=20261203):
    """Per-seed differences of ``arms`` arms equal to the baseline. They share the
    baseline's seeds, so their comparisons are correlated, as in a real sweep."""
    noise = np.random.default_rng(seed).normal(0, 0.017, size=(sims, arms + 1, seeds))
    return noise[:, 1:] - noise[:, :1]


def test_the_normal_theory_holds_alpha_with_known_spread():
    """What the normal theory promises, exactly: z-intervals at the normal-theory level
    (the spread known) all cover with probability >= 1 - alpha, over arms and looks."""
    sims, arms, seeds, alpha = 4000, 3, 10, 0.05
    rule = Rule(comparisons=arms, alpha=alpha, max_seeds=seeds)
    diffs = _equal_arms(sims, arms, seeds)
    n = np.arange(3, seeds + 1)
    z = np.abs(np.cumsum(diffs, axis=2)[..., n - 1]) / (0.017 * math.sqrt(2) * np.sqrt(n))
    crossed = (z >= stats.norm.isf(rule.normal_theory_level() / 2)).any(axis=(1, 2))
    assert crossed.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims)
    # one comparison alone spends its alpha / 3 (within 3 Monte-Carlo se)
    one = (z[:, 0] >= stats.norm.isf(rule.normal_theory_level() / 2)).any(axis=1).mean()
    assert abs(one - alpha / 3) <= 3 * math.sqrt(alpha / 3 / sims)


def test_family_wise_false_claims_with_the_t_statistic():
    """Rule.decide itself, all three arms equal: any "better" or "worse" is false.

    At the calibrated level each comparison misses with probability alpha / 3, so the
    three together at most alpha (less: they share the baseline). The bound fails a rule
    that forgot the looks or the comparisons (0.15 or more).
    """
    sims, arms, seeds, alpha = 4000, 3, 10, 0.05
    rule = Rule(comparisons=arms, alpha=alpha, max_seeds=seeds)
    diffs = _equal_arms(sims, arms, seeds)
    false = sum(any(rule.decide(diffs[s, k]).decision in ("better", "worse")
                    for k in range(arms)) for s in range(sims))
    assert false / sims <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims)
    # the same sweeps decided all at once agree with Rule.decide
    codes, _ = decide_many(rule, diffs)
    assert int(np.isin(codes, (0, 1)).any(axis=1).sum()) == false
    # the correction is needed: the plain 95% t-interval of one comparison, looked at
    # after every seed, excludes 0 about three times as often as 5%
    n = np.arange(3, seeds + 1)
    x = diffs[:, 0]
    means = np.stack([x[:, :k].mean(axis=1) for k in n], axis=1)
    sds = np.stack([x[:, :k].std(axis=1, ddof=1) for k in n], axis=1)
    excludes = np.abs(means) > stats.t.ppf(0.975, n - 1) * sds / np.sqrt(n)
    assert excludes.any(axis=1).mean() > 2 * alpha


def test_decide_many_is_rule_decide():
    rule = Rule(comparisons=3, max_seeds=12, looks=(3, 4, 6, 9, 12))
    rng = np.random.default_rng(5)
    # checks 300 races of 3 arms, one comparison at a time, against Rule.decide
    codes, seeds = simulate_race(rule, [0.0, 0.01, -0.05], 0.017, 300, rng, check=300)
    assert codes.shape == seeds.shape == (300, 3)
    assert set(np.unique(seeds)) <= set(rule.schedule())
    assert (codes[:, 2] == DECISIONS.index("worse")).mean() > 0.9
    # no spread across a prefix is undecided, as in Rule.decide
    flat = np.array([[0.02] * 5 + [0.03] * 7, [0.05] * 3 + [0.06, 0.04] + [0.05] * 7])
    assert [DECISIONS[c] for c in decide_many(rule, flat)[0]] == [
        rule.decide(x).decision for x in flat]


def test_expected_trials():
    rule = Rule(comparisons=4, max_seeds=20)
    rule.nominal_level()  # calibrated once (0.2 s), as a plan does before
    start = time.perf_counter()
    equal = expected_trials(rule, [0.0] * 4, 0.024)
    assert time.perf_counter() - start < 1.0  # 0.02 s on the dev VM
    assert set(equal) == {"at_least", "mean", "p95", "at_most"}
    assert (equal["at_least"], equal["at_most"]) == (15, 100)
    assert 15 <= equal["mean"] <= equal["p95"] <= 100
    assert equal["mean"] > 95  # equal arms at this spread run nearly to the budget
    assert expected_trials(rule, [0.0] * 4, 0.024) == equal  # seeded
    # an arm 5D worse stops early; one clearly better too
    mixed = expected_trials(rule, [0.05, 0.0, -0.05, 0.0], 0.024)
    assert mixed["mean"] < equal["mean"] - 20
    clear = expected_trials(Rule(comparisons=2, max_seeds=40), [1.0, -1.0], 0.01, sims=500)
    assert clear["mean"] == clear["at_least"] == 9
