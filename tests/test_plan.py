"""Planning before anything runs (orchestrator.plan): the cheapest checks first and
nothing written before every check passed; the Python API plans the sweep the CLI plans."""

import pytest
from click.testing import CliRunner

from orchestrator import plan
from orchestrator.cli import cli
from workers.config import RunConfig
from workers.errors import InputError


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """Where the synthetic corpus would be prepared, were the data resolved."""
    monkeypatch.setenv("DOTSIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_unusable_storage_is_refused_before_any_data_is_prepared(tmp_path, no_cache):
    (tmp_path / "a-file").write_text("x")
    unusable = str(tmp_path / "a-file" / "runs")
    with pytest.raises(InputError):
        plan.plan_run(RunConfig(storage_path=unusable))
    with pytest.raises(InputError):
        plan.plan_sweep(RunConfig(storage_path=unusable), variants=["cosine"], seeds=1)
    assert not no_cache.exists()


def test_a_folder_holding_a_sweep_is_refused_before_any_data_is_prepared(tmp_path, no_cache):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text("{}")
    with pytest.raises(InputError, match="already holds a sweep"):
        plan.plan_sweep(RunConfig(storage_path=str(tmp_path)), variants=["cosine"], name="s")
    assert not no_cache.exists()


def test_a_grid_that_breaks_a_trial_is_refused_when_planned(small_prepared, tmp_path):
    """The base config is valid, a grid point is not: refused now, not in Tune."""
    base = RunConfig(data=str(small_prepared), storage_path=str(tmp_path), workers=4,
                     batch_size=32, clips_per_class=2)
    with pytest.raises(InputError, match="batch_size 20 holds 10 class groups of 2, which "
                                         "do not split evenly over 4 workers"):
        plan.plan_sweep(base, variants=["cosine"], seeds=1, grid=["batch_size=20,32"])
    with pytest.raises(InputError, match="lower --batch-size"):  # 64 words a batch: too many
        plan.plan_sweep(base, variants=["cosine"], seeds=1, grid=["batch_size=32,128"])


def test_the_python_api_plans_the_sweep_the_cli_plans(small_prepared, tmp_path, monkeypatch):
    from orchestrator import sweep as sweeps

    started = []
    monkeypatch.setattr(sweeps, "start", lambda planned, **_: started.append(planned))
    monkeypatch.setattr("orchestrator.cli._run_then_report", lambda run, *_: run())
    result = CliRunner().invoke(cli, [
        "sweep", "--data", str(small_prepared), "--storage-path", str(tmp_path), "--name", "s",
        "--study", "world-size", "--world-sizes", "1,2", "--seeds", "2", "--epochs", "4"])
    assert result.exit_code == 0, result.output
    (from_cli,) = started
    from_python = plan.plan_sweep(RunConfig(data=str(small_prepared), storage_path=str(tmp_path),
                                            epochs=4),
                                  study="world-size", world_sizes="1,2", seeds=2, name="s")
    assert from_cli == from_python
    assert from_python.base.dropout == 0.0 and {t["workers"] for t in from_python.trials} == {1, 2}


def test_a_bad_node_cache_setting_is_refused_before_any_data_is_prepared(no_cache,
                                                                          monkeypatch):
    """The workers read DOTSIM_NODE_CACHE_KEEP; a local Ray starts them with this
    environment, so the driver refuses a bad value at once (exit 2, not a failed run)."""
    monkeypatch.setenv("DOTSIM_NODE_CACHE_KEEP", "two")
    with pytest.raises(InputError, match="DOTSIM_NODE_CACHE_KEEP='two'"):
        plan.plan_run(RunConfig())
    assert not no_cache.exists()


# --- a race (--until-decided) ----------------------------------------------------------


def test_a_race_plans_its_arms_baseline_first_and_no_fixed_trials(small_prepared, tmp_path):
    base = RunConfig(data=str(small_prepared), storage_path=str(tmp_path))
    planned = plan.plan_sweep(base, variants=["dot:minmax:global", "cosine"],
                              grid=["lr=0.001,0.002"], name="r",
                              until=plan.Until(max_seeds=4, margin=0.02))
    race = planned.race
    assert race.arms == [{"similarity": "cosine", "lr": 0.001},
                         {"similarity": "dot", "norm": "minmax", "scope": "global",
                          "lr": 0.001},
                         {"similarity": "dot", "norm": "minmax", "scope": "global",
                          "lr": 0.002},
                         {"similarity": "cosine", "lr": 0.002}]
    assert (race.metric, race.margin, race.max_seeds) == ("test_acc", 0.02, 4)
    assert planned.trials == [] and planned.definition()["race"] == race.to_dict()
    assert len(planned.possible_trials()) == 16
    assert race.rule().comparisons == 3
    fskil = plan.plan_sweep(base.replace(protocol="fskil", batch_size=64, shots=3),
                            variants=["cosine", "ce-only"],
                            name="f", until=plan.Until(baseline="ce-only"))
    assert fskil.race.metric == "fskil_mean_acc"
    assert fskil.race.arms[0] == {"similarity": "cosine", "w_lpc": 0.0, "w_shuffled": 0.0}


@pytest.mark.parametrize("kwargs, message", [
    ({"seeds": 3}, "give one of the two"),
    ({"study": "world-size"}, "give one of the two"),
    ({"scheduler": "asha"}, "--scheduler fifo"),
    ({"until": plan.Until(baseline="dot:meanstd:local")}, "not among the raced variants"),
    ({"until": plan.Until(metric="train_loss")}, "allowed: test_acc, val_acc"),
    ({"until": plan.Until(alpha=1.5)}, "alpha"),
    ({"until": plan.Until(max_seeds=2)}, "seeds"),
    ({"variants": ["cosine"]}, "at least two"),
])
def test_a_race_that_cannot_run_is_refused_before_any_data(kwargs, message, tmp_path,
                                                           no_cache):
    kwargs = {"variants": ["cosine", "ce-only"], "until": plan.Until()} | kwargs
    with pytest.raises(InputError, match=message):
        plan.plan_sweep(RunConfig(storage_path=str(tmp_path)), **kwargs)
    assert not no_cache.exists()


def test_race_options_without_until_decided_are_refused(tmp_path, no_cache):
    result = CliRunner().invoke(cli, ["sweep", "--storage-path", str(tmp_path),
                                      "--margin", "0.02", "--max-seeds", "9"])
    assert result.exit_code == 2
    assert "--max-seeds, --margin only apply with --until-decided" in result.output
    assert not no_cache.exists()
