"""The race's bookkeeping (orchestrator.race.Race), without Ray: which (arm, seed) runs
next, when an arm stops getting seeds, what a failed trial blocks, and what a resumed
race re-runs. (The real race in Tune: test_sweep_ray.py.)"""

import json

import pytest

from orchestrator.race import DONE, FAILED, RUNNING, Race, RaceSpec, accepted

ARMS = [{"similarity": "cosine"}, {"similarity": "dot", "norm": "minmax", "scope": "global"},
        {"similarity": "dot", "norm": "meanstd", "scope": "global"}]
BASE, WORSE, CLOSE = 0.80, 0.30, 0.80  # the worse arm loses 0.5 on every seed


def spec(**kw) -> RaceSpec:
    return RaceSpec(arms=ARMS, metric="test_acc", **({"max_seeds": 6} | kw))


def value(arm: int, seed: int) -> float:
    """Per-seed results: the close arm wobbles around the baseline (never decided within
    6 seeds), the worse arm is far below it with a little spread."""
    wobble = 0.02 * (-1) ** seed
    return {0: BASE + 0.001 * seed, 1: WORSE + 0.001 * seed + 0.0005 * (seed % 2),
            2: CLOSE + wobble}[arm]


def run_to_end(race: Race, fail: set = frozenset()) -> list[tuple[int, int]]:
    """Start trials as slots free up and finish them oldest first; returns the order."""
    order, running = [], []
    while True:
        while (chosen := race.next_trial()) is not None:
            race.start(*chosen)
            order.append(chosen)
            running.append(chosen)
        if not running:
            return order
        arm, seed = running.pop(0)
        race.finish(arm, seed, None if (arm, seed) in fail else value(arm, seed))


def test_seeds_go_to_the_arm_with_fewest_the_baseline_first():
    race = Race(spec(), at_once=3)
    picks = []
    for _ in range(3):
        picks.append(race.next_trial())
        race.start(*picks[-1])
    assert picks == [(0, 0), (1, 0), (2, 0)]
    assert race.next_trial() is None  # three running: no slot
    race.finish(1, 0, value(1, 0))
    assert race.next_trial() == (0, 1)  # the fewest started, the baseline on a tie


def test_a_clearly_worse_arm_stops_at_its_first_look_the_close_one_runs_its_budget():
    race = Race(spec(), at_once=1)  # one at a time: no trial runs past a decision
    order = run_to_end(race)
    started = {arm: race.started(arm) for arm in range(3)}
    assert started == {0: 6, 1: 3, 2: 6}  # worse decided at 3 seeds; close one undecided
    decisions = race.decisions()
    assert decisions[1].decision == "worse" and decisions[1].n == 3
    assert decisions[1].looks == 1
    assert decisions[2].decision == "undecided" and decisions[2].n == 6
    assert len(order) == 15 and race.done()
    # a fixed design with the same budget would have run 3 x 6 = 18 trials


def test_the_baseline_stops_when_no_comparison_is_open():
    two = RaceSpec(arms=ARMS[:2], metric="test_acc", max_seeds=10)
    race = Race(two, at_once=1)
    run_to_end(race)
    assert (race.started(0), race.started(1)) == (3, 3)
    assert race.decision(1).decision == "worse"


def test_decisions_read_a_prefix_of_seeds_whatever_order_results_arrive():
    race = Race(spec(), at_once=10)
    for seed in (0, 2, 3):  # seed 1 of the worse arm not in yet
        for arm in (0, 1):
            race.start(arm, seed)
            race.finish(arm, seed, value(arm, seed))
    assert race.diffs(1) == [pytest.approx(value(1, 0) - value(0, 0))]
    assert race.decision(1).decision == "undecided"
    race.start(1, 1)
    race.start(0, 1)
    race.finish(0, 1, value(0, 1))
    race.finish(1, 1, value(1, 1))
    assert len(race.diffs(1)) == 4 and race.decision(1).decision == "worse"
    assert race.decision(1).n == 3  # frozen at the first decisive look


def test_a_failed_trial_blocks_its_arm_and_a_resumed_race_reruns_it():
    race = Race(spec(), at_once=1)
    run_to_end(race, fail={(1, 1)})
    assert race.state[(1, 1)] == FAILED and race.started(1) == 2  # no seed past the gap
    assert race.decision(1).decision == "undecided" and race.done()
    assert race.started(2) == 6  # the other comparison went on to its budget

    saved = json.loads(json.dumps(race.to_state()))  # as Tune's searcher state is stored
    resumed = Race.from_state(saved)
    assert resumed.state[(1, 1)] == FAILED and resumed.done()  # until Tune re-runs it
    resumed.finish(1, 1, value(1, 1))  # --resume re-ran it (Tune's resume_errored)
    assert resumed.next_trial() == (1, 2)
    run_to_end(resumed)
    assert resumed.decision(1).decision == "worse" and resumed.decision(1).n == 3
    assert resumed.decisions() == Race(spec(), 1, resumed.state, resumed.values).decisions()


def test_a_failed_baseline_trial_stops_every_comparison():
    race = Race(spec(), at_once=1)
    run_to_end(race, fail={(0, 1)})
    assert race.started(0) == 2 and race.done()
    assert all(d.decision == "undecided" for d in race.decisions().values())


def test_state_round_trips_through_json():
    race = Race(spec(), at_once=2)
    race.start(0, 0)
    race.start(1, 0)
    race.finish(0, 0, 0.5)
    again = Race.from_state(json.loads(json.dumps(race.to_state())))
    assert again.state == {(0, 0): DONE, (1, 0): RUNNING} and again.values == {(0, 0): 0.5}
    assert again.at_once == 2 and again.spec == race.spec


@pytest.mark.parametrize("raw, kept", [(0.5, 0.5), (1, 1.0), (float("nan"), None),
                                       (float("inf"), None), (None, None), (True, None),
                                       ("0.5", None)])
def test_only_a_finite_number_counts_as_a_seed(raw, kept):
    import numpy as np

    assert accepted(raw) == kept
    if kept is not None:
        assert accepted(np.float32(raw)) == pytest.approx(kept)


def test_a_race_rebuilt_from_outcomes_counts_what_finished_with_a_value():
    """As the report and the end of a sweep rebuild it: a FINISHED trial with a finite
    value is a seed; one with NaN, an ERROR or a STOPPED trial is failed; an UNFINISHED
    one is still running (a race interrupted there wants it back)."""
    spec_ = spec()
    outcomes = [(0, 0, "FINISHED", 0.8), (1, 0, "FINISHED", 0.3), (2, 0, "FINISHED", 0.8),
                (0, 1, "FINISHED", 0.8), (1, 1, "FINISHED", float("nan")),
                (2, 1, "ERROR", None), (0, 2, "UNFINISHED", None)]
    race = Race.of_outcomes(spec_, outcomes)
    assert race.state == {(0, 0): DONE, (1, 0): DONE, (2, 0): DONE, (0, 1): DONE,
                          (1, 1): FAILED, (2, 1): FAILED, (0, 2): RUNNING}
    assert race.diffs(1) == [pytest.approx(-0.5)] and race.diffs(2) == [0.0]
    assert spec_.arm_of({**ARMS[2], "seed": 7}) == 2
    finished = Race.of_outcomes(spec_, outcomes[:-1])
    assert finished.next_trial() is None  # every open arm blocked by a failed seed


def test_a_race_stopped_between_two_trials_is_an_interruption(tmp_path):
    """Ctrl-C while no trial runs leaves no UNFINISHED trial behind; the race's own
    bookkeeping still says seeds were wanted, so the sweep says "interrupted" (exit 130
    with --resume), not done."""
    from orchestrator.results import TrialOutcome
    from orchestrator.sweep import _race_wants_more
    from workers.config import RunConfig

    two = RaceSpec(arms=ARMS[:2], metric="test_acc", max_seeds=5)
    (tmp_path / "sweep.json").write_text(json.dumps({"race": two.to_dict()}))

    def outcome(arm, seed):
        trial = two.trial(arm, seed)
        return TrialOutcome(f"{arm}-{seed}", RunConfig(), trial, "FINISHED", None,
                            [{"epoch": 1, "test_acc": value(arm, seed)}])

    ran = [outcome(arm, seed) for seed in range(2) for arm in (0, 1)]
    assert _race_wants_more(str(tmp_path), ran)  # two seeds: before the first look
    ran += [outcome(0, 2), outcome(1, 2)]
    assert not _race_wants_more(str(tmp_path), ran)  # decided "worse" at three
    (tmp_path / "sweep.json").write_text(json.dumps({"race": None}))
    assert not _race_wants_more(str(tmp_path), ran[:2])  # a grid sweep: its trials say


def test_a_trial_whose_run_returned_short_is_an_error_not_a_seed(monkeypatch, tmp_path):
    """A Tune trial is a whole run: if launch returns with fewer epochs than asked (no
    error of its own), the trial raises, so Tune records an ERROR that --resume re-runs,
    and the race never reads a partly trained value."""
    from orchestrator import launch, sweep
    from workers.config import RunConfig

    def short(cfg, **kwargs):
        return {"history": [{"epoch": 1, "test_acc": 0.5}], "already_finished": False,
                "metrics": {}}

    monkeypatch.setattr(launch, "launch", short)
    # outside a Tune session its report callback cannot be made; launch is stubbed anyway
    monkeypatch.setattr(sweep, "EpochsToTune", lambda: None)
    with pytest.raises(RuntimeError, match="returned after 1 of 3 epochs"):
        sweep._run_trial({"base": RunConfig(epochs=3).to_dict(), "trial": {"seed": 0},
                          "sweep_dir": str(tmp_path)})


def test_two_tune_trials_of_one_run_folder_are_refused(monkeypatch, tmp_path):
    """Two Tune trials with the same fields would share one Train run folder and one row
    of results: reading such a state fails instead of keeping either. (Tune's reader is
    replaced by a stub: a real Tune state with a duplicate cannot be made on purpose.)"""
    from types import SimpleNamespace

    from orchestrator import sweep
    from workers.config import RunConfig

    config = {"base": RunConfig().to_dict(), "trial": {"similarity": "cosine", "seed": 0}}
    trial = SimpleNamespace(config=config, status="TERMINATED", get_error=lambda: None)
    monkeypatch.setattr(sweep.tune, "ExperimentAnalysis",
                        lambda *a, **k: SimpleNamespace(trials=[trial, trial]))
    with pytest.raises(RuntimeError, match="holds trial cosine-seed0 twice"):
        sweep._tune_states(str(tmp_path))
