"""orchestrator.stats against hand values, textbook examples and independent references."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from orchestrator.stats import (
    BOOTSTRAP_MIN_SEEDS,
    bootstrap_ci,
    bootstrap_note,
    clopper_pearson,
    detectable_difference,
    holm,
    mean_ci,
    paired_test,
    power_sentence,
    probability_of_improvement,
    seeds_needed,
)

Z_SUM = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # 1.960 + 0.842 = 2.802


def power_by_integration(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Two-sided paired t-test power straight from T = (Z + nc) / S, S = sqrt(chi2_df / df):
    integrate the normal tails over the chi distribution, without scipy's nct."""
    df = n - 1
    crit = stats.t.isf(alpha / 2, df)
    nc = delta * math.sqrt(n) / sd

    def integrand(s):
        tails = stats.norm.sf(crit * s - nc) + stats.norm.cdf(-crit * s - nc)
        return tails * stats.chi.pdf(s * math.sqrt(df), df) * math.sqrt(df)

    value, _ = integrate.quad(integrand, 0, np.inf, epsabs=1e-12, epsrel=1e-12, limit=200)
    return value


def holm_rejections(pvalues: list[float], alpha: float) -> set[int]:
    """Holm's step-down procedure as first described: walk up the sorted p-values and
    reject while p_(k) <= alpha / (m - k); stop at the first that fails."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    m = len(pvalues)
    rejected = set()
    for k, i in enumerate(order):
        if pvalues[i] > alpha / (m - k):
            break
        rejected.add(i)
    return rejected


# --- intervals ------------------------------------------------------------------------


def test_mean_ci_matches_hand_t_interval():
    ci = mean_ci([1.0, 2.0, 3.0])
    # sd 1, n 3: t_{0.975, 2} = 4.3027, 4.3027 / sqrt(3) = 2.4841
    assert ci == {"mean": 2.0, "half_width": pytest.approx(2.4841, abs=1e-4), "n": 3}
    # t_{0.95, 2} = 2.9200 -> 1.6859 (fails if the confidence level were ignored)
    assert mean_ci([1.0, 2.0, 3.0], confidence=0.90)["half_width"] == pytest.approx(
        1.6859, abs=1e-4)
    assert mean_ci([1.0, float("nan"), 2.0, None, 3.0]) == ci  # missing seeds dropped


def test_bootstrap_ci_is_a_seeded_percentile_interval_of_the_mean():
    values = np.random.default_rng(7).normal(0.6, 0.05, size=BOOTSTRAP_MIN_SEEDS)
    n = len(values)
    ci = bootstrap_ci(values, seed=3)
    assert ci[0] < values.mean() < ci[1]
    assert bootstrap_ci(values, seed=3) == ci
    assert bootstrap_ci(values, seed=4) != ci
    # an independent percentile bootstrap with many resamples lands on the same interval
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, n, size=(200_000, n))].mean(axis=1)
    reference = np.percentile(means, [2.5, 97.5])
    width = reference[1] - reference[0]
    assert ci == pytest.approx(tuple(reference), abs=0.03 * width)


@pytest.mark.filterwarnings("error")
def test_degenerate_intervals_are_none_or_a_point_without_warnings():
    assert mean_ci([]) == {"mean": None, "half_width": None, "n": 0}
    assert mean_ci([float("nan")])["n"] == 0
    assert mean_ci([0.7]) == {"mean": 0.7, "half_width": None, "n": 1}
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([0.7], min_seeds=2) is None
    assert bootstrap_ci([0.7, 0.7, 0.7], min_seeds=2) == pytest.approx((0.7, 0.7), abs=1e-15)
    assert bootstrap_ci([0.7] * BOOTSTRAP_MIN_SEEDS) == pytest.approx((0.7, 0.7), abs=1e-15)
    with pytest.raises(ValueError):
        bootstrap_ci([0.7, 0.8], min_seeds=1)


def test_no_bootstrap_below_the_seeds_where_it_covers_90_percent():
    """The percentile bootstrap of 3 values is their [min, max], which holds the mean
    3 times in 4: hidden at 3 seeds, and everywhere below the threshold; shown at it."""
    assert BOOTSTRAP_MIN_SEEDS == 13  # measured: see the coverage table in stats.py
    values = [0.61, 0.70, 0.64]
    assert bootstrap_ci(values) is None
    assert bootstrap_ci(values, min_seeds=2) == pytest.approx((0.61, 0.70))
    rng = np.random.default_rng(5)
    for n in range(2, BOOTSTRAP_MIN_SEEDS):
        assert bootstrap_ci(rng.normal(size=n)) is None
    assert bootstrap_ci(rng.normal(size=BOOTSTRAP_MIN_SEEDS)) is not None
    assert bootstrap_note() == "bootstrap shown from 13 seeds: below, it covers less than 90%"


def test_the_percentile_bootstrap_covers_less_than_90_percent_at_five_seeds():
    """The measurement behind BOOTSTRAP_MIN_SEEDS, at one n: 95% percentile intervals of
    the mean of 5 normal values hold the true mean about 83% of the time (a vectorised
    percentile bootstrap, 4000 samples of 500 resamples; its Monte-Carlo sd is 0.006)."""
    rng = np.random.default_rng(17)
    x = rng.normal(size=(4000, 5))
    picks = rng.integers(0, 5, size=(4000, 500, 5))
    means = np.take_along_axis(np.repeat(x[:, None, :], 500, axis=1), picks, 2).mean(axis=2)
    low, high = np.percentile(means, [2.5, 97.5], axis=1)
    coverage = float(((low <= 0) & (0 <= high)).mean())
    assert 0.80 < coverage < 0.87


# --- paired comparison ----------------------------------------------------------------


def test_paired_test_agrees_with_scipy():
    diffs = [0.05, -0.04, 0.01, 0.03]
    result = paired_test(diffs)
    sd = np.std(diffs, ddof=1)
    t = np.mean(diffs) / (sd / 2)
    assert result["p"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue, rel=1e-12)
    assert result["p"] == pytest.approx(2 * stats.t.sf(abs(t), 3), rel=1e-12)  # two-sided
    assert result["mean_diff"] == pytest.approx(0.0125)
    assert result["sd"] == pytest.approx(sd)
    assert result["half_width"] == pytest.approx(stats.t.ppf(0.975, 3) * sd / 2)
    assert result["bootstrap_ci"] is None  # 4 pairs: below BOOTSTRAP_MIN_SEEDS
    many = paired_test(np.random.default_rng(2).normal(0.01, 0.02, BOOTSTRAP_MIN_SEEDS))
    low, high = many["bootstrap_ci"]
    assert low < many["mean_diff"] < high
    assert result["detectable"] == pytest.approx(detectable_difference(sd, 4))
    assert result["note"] is None


@pytest.mark.filterwarnings("error")
def test_paired_test_says_why_there_is_no_p_value():
    for diffs in ([], [0.02]):
        result = paired_test(diffs)
        assert result["p"] is None and result["half_width"] is None
        assert result["note"] == f"too few paired seeds to tell (n={len(diffs)})"
    # 0.83 - 0.73 and 0.81 - 0.71 differ by round-off; scipy's t-test would say p ~ 1e-31
    diffs = np.array([0.83, 0.81, 0.79]) - np.array([0.73, 0.71, 0.69])
    shifted = paired_test(diffs)
    assert shifted["p"] is None and shifted["detectable"] is None
    assert shifted["note"] == "no spread across seeds: every seed differs by +0.1"
    assert shifted["mean_diff"] == pytest.approx(0.1)
    same = paired_test([0.0, 0.1 + 0.2 - 0.3, 0.0])  # 5.6e-17 is round-off, not a difference
    assert same["p"] is None and same["bootstrap_ci"] is None
    assert same["note"] == "identical on every seed (no spread across seeds)"


# --- Holm -----------------------------------------------------------------------------


def test_holm_textbook_example():
    # Wikipedia's worked example: sorted 0.005, 0.01, 0.03, 0.04 scaled by 4, 3, 2, 1 give
    # 0.02, 0.03, 0.06, 0.04; the running maximum lifts the last to 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_leaves_out_missing_tests():
    assert holm([None, 0.5, 0.6, None]) == [None, 1.0, 1.0, None]
    # two tests, not three: 0.02 * 2 = 0.04, then max(0.04, 0.03 * 1)
    assert holm([0.02, None, 0.03]) == pytest.approx([0.04, None, 0.04])
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([0.2, 1.5])


def test_holm_agrees_with_the_step_down_procedure():
    rng = np.random.default_rng(11)
    for _ in range(200):
        m = int(rng.integers(1, 8))
        pvalues = list(rng.choice([0.001, 0.004, 0.01, 0.02, 0.03], size=m))  # with ties
        pvalues[0] = float(rng.uniform(0, 0.2))
        adjusted = holm(pvalues)
        assert all(p <= a <= min(1.0, m * p) for p, a in zip(pvalues, adjusted, strict=True))
        for alpha in rng.uniform(0, 0.1, size=20):
            flagged = {i for i, a in enumerate(adjusted) if a <= alpha}
            assert flagged == holm_rejections(pvalues, alpha)


# --- power ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_detectable_difference_has_the_requested_power(n):
    delta = detectable_difference(0.02, n)
    assert power_by_integration(delta, 0.02, n) == pytest.approx(0.8, abs=1e-6)
    delta_90 = detectable_difference(0.02, n, power=0.9, alpha=0.01)
    assert power_by_integration(delta_90, 0.02, n, alpha=0.01) == pytest.approx(0.9, abs=1e-6)
    # at low power the far tail counts too (a one-tailed power formula fails here)
    delta_10 = detectable_difference(0.02, n, power=0.1)
    assert power_by_integration(delta_10, 0.02, n) == pytest.approx(0.1, abs=1e-6)


def test_detectable_difference_approaches_the_normal_approximation():
    sd = 0.3
    assert detectable_difference(sd, 10_000) == pytest.approx(Z_SUM * sd / 100, rel=1e-3)
    # the t-test pays for estimating sd: few seeds need a much larger difference
    assert detectable_difference(sd, 3) > 2 * Z_SUM * sd / math.sqrt(3)
    assert detectable_difference(2 * sd, 5) == pytest.approx(2 * detectable_difference(sd, 5))


def test_detectable_difference_without_spread_or_seeds_is_none():
    assert detectable_difference(0.02, 1) is None
    assert detectable_difference(0.0, 5) is None
    assert detectable_difference(float("nan"), 5) is None
    with pytest.raises(ValueError):
        detectable_difference(0.02, 5, power=0.04)


def test_seeds_needed_matches_published_sample_sizes():
    # paired t, two-sided, alpha 0.05, power 0.8: effect 0.5 sd needs 34 pairs (G*Power);
    # effect 1 sd needs 9.94 -> 10 (R: power.t.test(delta=1, power=0.8, type="paired"))
    assert seeds_needed(0.5, 1.0) == 34
    assert seeds_needed(1.0, 1.0) == 10


def test_seeds_needed_is_monotone_and_consistent_with_detectable_difference():
    sd = 0.02
    # two seeds detect 11.55 sd = 0.231
    counts = [seeds_needed(d, sd) for d in (0.3, 0.05, 0.03, 0.02, 0.01, 0.005)]
    assert counts == sorted(counts) and counts[0] == 2
    for difference, n in zip((0.05, 0.03, 0.02, 0.01, 0.005), counts[1:], strict=True):
        assert detectable_difference(sd, n) <= difference < detectable_difference(sd, n - 1)
    assert seeds_needed(1e-4, sd) is None  # over max_n
    assert seeds_needed(0.01, 0.0) is None
    with pytest.raises(ValueError):
        seeds_needed(0.0, sd)


def test_power_sentence_reads_the_numbers():
    sd = 0.01
    detectable, needed = detectable_difference(sd, 3), seeds_needed(0.01, sd)
    assert needed > 3
    assert power_sentence(3, sd, 0.01) == (
        f"3 seeds detect a difference of {detectable:.3g} or more (80% power at the observed "
        f"spread); a 0.01 difference would need about {needed}")
    assert power_sentence(3, sd).endswith("spread)")
    assert power_sentence(3, sd, 1.0).endswith(
        f"about {seeds_needed(1.0, sd)} would do for a 1 difference")
    assert power_sentence(1, sd, 0.01).startswith("1 seed cannot show the spread")
    assert power_sentence(3, 0.0, 0.01).startswith("no spread across seeds")


# --- probability of improvement --------------------------------------------------------


def test_clopper_pearson_is_the_exact_binomial_interval():
    for n in (1, 3, 5, 12):
        for k in range(n + 1):
            exact = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
            assert clopper_pearson(k, n) == pytest.approx((exact.low, exact.high), abs=1e-9)
    # none of 3: the upper end solves (1 - p)^3 = 0.025
    assert clopper_pearson(0, 3) == pytest.approx((0.0, 1 - 0.025 ** (1 / 3)))
    assert clopper_pearson(0, 0) is None
    with pytest.raises(ValueError):
        clopper_pearson(4, 3)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 15])
def test_clopper_pearson_covers_at_least_95_percent_where_wilson_does_not(n):
    """Exact coverage over true proportions: Clopper-Pearson never under 95% at few seeds;
    Wilson's interval (the usual choice) dips far below, which is why it is not used."""
    z = stats.norm.ppf(0.975)

    def wilson(k):
        centre, spread = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4)
        return centre - spread / (n + z * z), centre + spread / (n + z * z)

    p = np.linspace(0.005, 0.995, 199)
    pmf = np.array([stats.binom.pmf(k, n, p) for k in range(n + 1)])

    def coverage(interval):
        return sum(pmf[k] * ((interval(k)[0] <= p) & (p <= interval(k)[1]))
                   for k in range(n + 1))

    assert coverage(lambda k: clopper_pearson(k, n)).min() >= 0.95
    assert coverage(wilson).min() < 0.93


def test_probability_of_improvement_counts_wins_and_half_ties():
    # wins on seeds 0 and 3, a round-off tie on seed 2, a loss on seed 1: (2 + 1/2) / 4
    result = probability_of_improvement([0.02, -0.01, 0.1 + 0.2 - 0.3, 0.03])
    assert (result["wins"], result["ties"], result["n"]) == (2, 1, 4)
    assert result["estimate"] == pytest.approx(0.625)
    assert result["interval"] == pytest.approx((stats.beta.ppf(0.025, 2.5, 2.5),
                                                stats.beta.ppf(0.975, 3.5, 1.5)))
    every = probability_of_improvement([0.1, 0.2, float("nan"), 0.3])  # NaN: no seed
    assert every["estimate"] == 1.0 and every["n"] == 3
    assert every["interval"] == pytest.approx((0.025 ** (1 / 3), 1.0))
    assert probability_of_improvement([]) == {"estimate": None, "interval": None, "n": 0,
                                              "wins": 0, "ties": 0}
