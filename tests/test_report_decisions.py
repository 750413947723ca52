"""The report says what was decided, with statistics whose labels are true (issue 17).

Hand-made sweep folders (no Ray): a race (``--until-decided``) with a clearly worse arm and
an equal one, its decisions checked against intervals computed here with scipy from the
race's critical value; fixed-seed sweeps for the primary/descriptive split, the
probability of improvement and where the bootstrap interval is shown.
"""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from handmade import trial_rows, write_sweep
from scipy import stats

from orchestrator import report as reports
from orchestrator.cli import cli
from orchestrator.race import RaceSpec
from orchestrator.stats import BOOTSTRAP_MIN_SEEDS, holm
from workers.errors import InputError

COSINE = {"similarity": "cosine"}
MINMAX = {"similarity": "dot", "norm": "minmax", "scope": "global"}
MEANSTD = {"similarity": "dot", "norm": "meanstd", "scope": "global"}
RACE = {"arms": [COSINE, MINMAX, MEANSTD], "metric": "test_acc", "margin": 0.01,
        "alpha": 0.05, "max_seeds": 20, "min_seeds": 3}

BASE = [0.70, 0.74, 0.68, 0.72, 0.71, 0.69, 0.73, 0.70, 0.72, 0.71]
EQUAL = [0.003, -0.002, 0.001, -0.003, 0.002, 0.000, -0.001, 0.002, -0.002, 0.001]
WORSE = [-0.20, -0.21, -0.19]
NOTE = "Bootstrap shown from 13 seeds: below, it covers less than 90%."


def _race_rows(equal_seeds: int = 6, baseline_seeds: int = 6, failed: int | None = None):
    """The race as it ran: the worse arm stopped after its first look (3 seeds), the equal
    one after its decision (one more seed was in flight), the baseline as long as either
    needed it. ``failed``: that seed of the equal arm ended in an error."""
    rows = [r for s in range(baseline_seeds) for r in trial_rows("cosine", s, BASE[s])]
    for s in range(equal_seeds):
        if s == failed:
            rows += trial_rows("dot:minmax:global", s, None, epochs=0, status="ERROR",
                               error="RuntimeError: worker died")
        else:
            rows += trial_rows("dot:minmax:global", s, BASE[s] + EQUAL[s])
    rows += [r for s, d in enumerate(WORSE) for r in trial_rows("dot:meanstd:global", s,
                                                                BASE[s] + d)]
    return rows


def _by_hand(diffs: list[float], rule) -> dict:
    """The rule's decision recomputed: at each look n = 3, 4, ... the interval mean +-
    t_{n-1}(1 - a*/2) sd / sqrt(n), a* the rule's per-look level; the first decisive look
    decides."""
    level = rule.nominal_level()
    for looks, n in enumerate(range(rule.min_seeds, len(diffs) + 1), start=1):
        x = np.array(diffs[:n])
        critical = stats.t.isf(level / 2, n - 1)
        assert critical == pytest.approx(rule.critical(n))
        half = critical * x.std(ddof=1) / math.sqrt(n)
        low, high = x.mean() - half, x.mean() + half
        t_half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)
        if low > 0 or high < 0 or (-rule.margin < low and high < rule.margin):
            decision = "better" if low > 0 else "worse" if high < 0 else "equivalent"
            return {"decision": decision, "n": n, "looks": looks, "interval": (low, high),
                    "t_interval": (x.mean() - t_half, x.mean() + t_half)}
    return {"decision": "undecided"}


def _json_report(folder, *args) -> dict:
    result = CliRunner().invoke(cli, ["report", str(folder), "--json", "--no-plot", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _markdown(folder) -> str:
    result = CliRunner().invoke(cli, ["report", str(folder), "--no-plot"])
    assert result.exit_code == 0, result.output
    return result.stdout


# --- a race -----------------------------------------------------------------------------


def test_a_race_report_says_what_was_decided(tmp_path):
    write_sweep(tmp_path, _race_rows(), race=RACE)
    doc = _json_report(tmp_path)
    rule = RaceSpec.from_dict(RACE).rule()
    worse, equal = (_by_hand([BASE[s] + d - BASE[s] for s, d in enumerate(diffs)], rule)
                    for diffs in (WORSE, EQUAL[:6]))
    assert (worse["decision"], worse["n"], worse["looks"]) == ("worse", 3, 1)  # first look
    assert (equal["decision"], equal["n"], equal["looks"]) == ("equivalent", 5, 3)

    race = doc["race"]
    assert doc["baseline"] == "cosine" and race["metric"] == "test_acc"
    decided = {d["variant"]: d for d in race["decisions"]}
    assert list(decided) == ["dot:minmax:global", "dot:meanstd:global"]  # the race's order
    for variant, hand, arm_seeds in (("dot:meanstd:global", worse, 3),
                                     ("dot:minmax:global", equal, 6)):
        row = decided[variant]
        assert (row["decision"], row["n"], row["looks"]) == (
            hand["decision"], hand["n"], hand["looks"])
        assert (row["arm_seeds"], row["baseline_seeds"]) == (arm_seeds, 6)
        assert row["repeated_interval"] == pytest.approx(hand["interval"], abs=1e-12)
        assert row["t_interval"] == pytest.approx(hand["t_interval"], abs=1e-12)
        assert row["prefix_stops"] is None
    # the fixed design: 3 arms x 20 seeds; the race ran 6 + 6 + 3
    assert (race["trials_run"], race["trials_fixed"], race["trials_saved"]) == (15, 60, 45)
    assert race["saved_share"] == pytest.approx(0.75)
    assert race["nominal_level"] == pytest.approx(rule.nominal_level())

    # the primary paired rows carry the decision, not a fixed-n verdict or p-value
    assert [p["metric"] for p in doc["paired"]] == ["test_acc", "test_acc"]
    for p in doc["paired"]:
        assert p["role"] == "primary" and p["decision"] == decided[p["variant"]]["decision"]
        assert "verdict" not in p and p["p"] is None and p["p_holm"] is None

    markdown = _markdown(tmp_path)
    assert markdown.index("## Decisions") < markdown.index("| variant |")
    low, high = worse["interval"]
    t_low, t_high = worse["t_interval"]
    assert (f"- dot:meanstd:global vs cosine: worse after 3 seeds (1 look), repeated 95% "
            f"interval [{low:+.3f}, {high:+.3f}]; fixed-n 95% t interval "
            f"[{t_low:+.3f}, {t_high:+.3f}]; seeds run: 3 by the arm, 6 by the baseline\n"
            in markdown)
    low, high = equal["interval"]
    assert (f"- dot:minmax:global vs cosine: equivalent after 5 seeds (3 looks), repeated 95% "
            f"interval [{low:+.3f}, {high:+.3f}]" in markdown)
    assert ("Trials: 15 run, against 60 for the fixed design (3 arms x 20 seeds): 45 saved "
            "(75%)." in markdown)
    assert "| test_acc | primary | dot:meanstd:global | - | 3 |" in markdown
    assert "| decision |" in markdown and "p (Holm)" not in markdown


def test_a_failed_trial_ends_its_arms_paired_seeds(tmp_path):
    """The equal arm's seed 3 failed; its later seeds finished. The race looks only at
    seeds 0-2 (a prefix): undecided at the first look, where seeds 0-9 would decide."""
    write_sweep(tmp_path, _race_rows(equal_seeds=10, baseline_seeds=10, failed=3), race=RACE)
    rule = RaceSpec.from_dict(RACE).rule()
    assert _by_hand(EQUAL, rule)["decision"] == "equivalent"  # all seeds would decide
    report = reports.build_report(str(tmp_path))
    equal = report["race"]["decisions"][0]
    assert (equal["decision"], equal["n"], equal["looks"], equal["pairs"]) == (
        "undecided", 3, 1, 3)
    assert equal["prefix_stops"] == {"seed": 3, "trial": "dot:minmax:global-3",
                                     "status": "ERROR", "why": "failed"}
    assert equal["arm_seeds"] == 10  # the failed trial ran: it counts among the trials
    assert report["race"]["trials_run"] == 23
    assert report["race"]["decisions"][1]["prefix_stops"] is None
    markdown = reports.to_markdown(report)
    assert ("dot:minmax:global vs cosine: undecided after 3 seeds (1 look)" in markdown
            and "; paired seeds stop at seed 3 (dot:minmax:global-3 failed)\n" in markdown)
    # a failed baseline seed stops every comparison there
    rows = [r for r in _race_rows(equal_seeds=10, baseline_seeds=10)
            if not (r["variant"] == "cosine" and r["seed"] == 4)]
    rows += trial_rows("cosine", 4, None, epochs=1, status="ERROR", error="OOM")
    write_sweep(tmp_path / "b", rows, race=RACE)
    stops = [d["prefix_stops"] for d in reports.build_report(str(tmp_path / "b"))["race"][
        "decisions"]]
    assert stops == [{"seed": 4, "trial": "cosine-4", "status": "ERROR", "why": "failed"},
                     None]  # the worse arm has only seeds 0-2


def test_a_race_is_reported_against_its_own_baseline(tmp_path):
    write_sweep(tmp_path, _race_rows(), race=RACE)
    assert reports.build_report(str(tmp_path), baseline="cosine")["baseline"] == "cosine"
    with pytest.raises(InputError, match="disagrees with this race's baseline 'cosine'"):
        reports.build_report(str(tmp_path), baseline="dot:minmax:global")
    result = CliRunner().invoke(cli, ["report", str(tmp_path), "--baseline",
                                      "dot:minmax:global", "--no-plot"])
    assert result.exit_code == 2 and "disagrees" in result.stderr


def test_a_race_decides_on_its_metric_and_describes_the_others(tmp_path):
    """An FSKIL race on the last-session accuracy: that metric is primary (with the
    decision), the protocol's other headline numbers descriptive."""
    rows = []
    for variant, diffs in (("cosine", [0.0] * 6), ("dot:minmax:global", EQUAL[:6]),
                           ("dot:meanstd:global", WORSE)):
        for s, d in enumerate(diffs):
            acc = BASE[s] + d
            rows += trial_rows(variant, s, 0.9, fskil_mean_acc=acc, fskil_last_acc=acc,
                               fskil_last_harmonic=acc)
    write_sweep(tmp_path, rows, protocol="fskil", race={**RACE, "metric": "fskil_last_acc"})
    report = reports.build_report(str(tmp_path))
    assert report["primary_metric"] == "fskil_last_acc"
    assert report["metrics"] == ["fskil_last_acc", "fskil_mean_acc", "fskil_last_harmonic"]
    for p in report["paired"]:
        primary = p["metric"] == "fskil_last_acc"
        assert p["role"] == ("primary" if primary else "descriptive")
        assert (p["decision"] is not None) == primary and "verdict" not in p
    assert [d["decision"] for d in report["race"]["decisions"]] == ["equivalent", "worse"]
    assert "| fskil_mean_acc | descriptive | dot:meanstd:global | - | 3 |" in (
        reports.to_markdown(report))


# --- fixed-seed sweeps --------------------------------------------------------------------


def _fixed_rows(diffs: dict[str, list[float]], base: float = 0.5, **metrics) -> list[dict]:
    rows = []
    for seed in range(len(next(iter(diffs.values())))):
        rows += trial_rows("cosine", seed, base + 0.01 * seed, **metrics)
        for variant, d in diffs.items():
            rows += trial_rows(variant, seed, base + 0.01 * seed + d[seed], **metrics)
    return rows


def test_descriptive_metrics_carry_no_verdict_and_holm_covers_the_primary_only(tmp_path):
    diffs = {"dot:minmax:global": [0.05, 0.06, 0.04, 0.05],
             "dot:meanstd:global": [0.02, -0.01, 0.03, 0.0]}
    rows = []
    for seed in range(4):
        for variant, d in (("cosine", 0.0), *((v, ds[seed]) for v, ds in diffs.items())):
            acc = 0.8 + 0.01 * seed + d
            rows += trial_rows(variant, seed, 0.9, fskil_mean_acc=acc, fskil_last_acc=acc,
                               fskil_last_harmonic=acc - 0.1)
    write_sweep(tmp_path, rows, protocol="fskil")
    doc = _json_report(tmp_path)
    assert doc["primary_metric"] == "fskil_mean_acc" and "race" not in doc
    primary = [p for p in doc["paired"] if p["role"] == "primary"]
    descriptive = [p for p in doc["paired"] if p["role"] == "descriptive"]
    assert [p["metric"] for p in primary] == ["fskil_mean_acc"] * 2
    assert {p["metric"] for p in descriptive} == {"fskil_last_acc", "fskil_last_harmonic"}
    # Holm across the two variants on the one primary metric: m = 2, not 6
    assert [p["p_holm"] for p in primary] == pytest.approx(holm([p["p"] for p in primary]))
    assert primary[0]["verdict"].startswith("better than the baseline")
    for p in descriptive:
        assert p["verdict"] is None and p["p"] is None and p["p_holm"] is None
        assert p["half_width"] is not None and p["p_improvement"] is not None
        assert "decision" not in p
    markdown = _markdown(tmp_path)
    assert "Verdicts rest on one primary metric, `fskil_mean_acc`" in markdown
    described = [line for line in markdown.splitlines() if "| descriptive |" in line]
    assert len(described) == 4
    assert all("descriptive: no verdict" in line and "better" not in line
               for line in described)


def test_the_probability_of_beating_the_baseline_on_a_seed(tmp_path):
    """Wins on seeds 0 and 3, a tie on seed 2, a loss on seed 1: (2 + 1/2) / 4 = 0.625, with
    the Clopper-Pearson interval of 2.5 successes in 4."""
    write_sweep(tmp_path, _fixed_rows({"dot:minmax:global": [0.02, -0.01, 0.0, 0.03]}))
    doc = _json_report(tmp_path)
    [row] = doc["paired"]
    assert row["p_improvement"] == pytest.approx(0.625)
    low, high = stats.beta.ppf(0.025, 2.5, 2.5), stats.beta.ppf(0.975, 3.5, 1.5)
    assert row["p_improvement_ci"] == pytest.approx([low, high])
    assert f"| {0.625:.2f} [{low:.2f}, {high:.2f}] |" in _markdown(tmp_path)
    assert "decision" not in row and row["verdict"].startswith("no clear difference")


@pytest.mark.parametrize("seeds", [3, BOOTSTRAP_MIN_SEEDS - 1, BOOTSTRAP_MIN_SEEDS])
def test_the_bootstrap_is_shown_only_from_the_seeds_where_it_covers_90_percent(tmp_path,
                                                                               seeds):
    rng = np.random.default_rng(seeds)
    write_sweep(tmp_path, _fixed_rows({"dot:minmax:global": list(
        rng.normal(0.02, 0.01, seeds))}))
    doc = _json_report(tmp_path)
    shown = seeds >= BOOTSTRAP_MIN_SEEDS
    test_acc = doc["variants"][1]["test_acc"]
    assert (test_acc["bootstrap95"] is not None) == shown
    assert (doc["paired"][0]["bootstrap_ci"] is not None) == shown
    assert doc["bootstrap_min_seeds"] == BOOTSTRAP_MIN_SEEDS
    markdown = _markdown(tmp_path)
    assert markdown.count(NOTE) == (0 if shown else 2)  # above the variants, above the pairs
    if shown:
        low, high = test_acc["bootstrap95"]
        assert f"± {test_acc['ci95']:.3f} [{low:.3f}, {high:.3f}] |" in markdown
        low, high = doc["paired"][0]["bootstrap_ci"]
        assert f"| [{low:+.3f}, {high:+.3f}] |" in markdown
    else:
        assert f"{test_acc['mean']:.3f} ± {test_acc['ci95']:.3f} |" in markdown


@pytest.mark.parametrize("protocol", ["standard", "fskil"])
def test_every_metric_a_race_may_use_is_in_the_report(tmp_path, protocol):
    """plan.race_metrics (what --metric accepts) against what the report can read: a race
    on any of them is reported, its decision made from the trials' values."""
    from orchestrator.plan import race_metrics

    finals = {"fskil_mean_acc": 0.8, "fskil_last_acc": 0.7, "fskil_last_harmonic": 0.6}
    for metric in race_metrics(protocol):
        rows = [r for s in range(3) for r in trial_rows("cosine", s, BASE[s], **finals)]
        rows += [r for s in range(3) for r in trial_rows("dot:minmax:global", s, BASE[s],
                                                          **finals)]
        sweep = write_sweep(tmp_path / metric, rows, protocol=protocol,
                            race={**RACE, "arms": [COSINE, MINMAX], "metric": metric})
        report = reports.build_report(str(sweep))
        [decision] = report["race"]["decisions"]
        assert decision["metric"] == metric and decision["pairs"] == 3
