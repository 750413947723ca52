"""A sweep's estimate before it starts (orchestrator.estimate), from earlier runs in its
storage, and `sweep --dry-run`, which starts nothing and writes nothing; the report's
time line against it. (That a real run records its launch's duration:
test_train_ray.py.)"""

import json
import math
from pathlib import Path

from click.testing import CliRunner
from handmade import trial_rows, write_sweep

from orchestrator import estimate, plan
from orchestrator.cli import cli
from orchestrator.report import build_report, to_markdown
from orchestrator.results import session_ended, session_started
from workers.config import RunConfig


def write_run(folder: Path, cfg: RunConfig, seconds: list[float], *, whole=True) -> None:
    """A run folder's record as launch.bind_run and launch._record_duration leave it."""
    folder.mkdir(parents=True)
    launches = [{"started": "2026-12-02T10:00:00+00:00", "epochs_done_before": 0,
                 "seconds": s, "epochs_done_after": cfg.epochs if whole else 1}
                for s in seconds]
    (folder / "dotsim_run.json").write_text(json.dumps(
        {"run_name": folder.name, "config": cfg.to_dict(), "launches": launches}))


def test_trial_time_is_the_median_whole_launch_of_runs_of_the_same_cost(tmp_path):
    cfg = RunConfig(storage_path=str(tmp_path), data="/data/x", epochs=4)
    write_run(tmp_path / "a", cfg.replace(seed=3, similarity="dot"), [100.0])
    write_run(tmp_path / "s" / "runs" / "b", cfg.replace(lr=0.1), [140.0, 900.0])
    write_run(tmp_path / "c", cfg, [5000.0], whole=False)  # stopped after an epoch
    write_run(tmp_path / "d", cfg.replace(epochs=8), [7000.0])  # another cost
    write_run(tmp_path / "e", cfg.replace(data="/data/y"), [7000.0])
    time = estimate.trial_time(cfg)
    assert (time.seconds, time.runs) == (140.0, 3)
    assert estimate.trial_time(cfg.replace(workers=4)).seconds is None


def test_seed_spread_pools_the_spread_within_each_variant(tmp_path):
    cfg = RunConfig(storage_path=str(tmp_path), protocol="standard")
    rows = [*trial_rows("cosine", 0, 0.50), *trial_rows("cosine", 1, 0.54),
            *trial_rows("dot:minmax:global", 0, 0.60), *trial_rows("dot:minmax:global", 1, 0.70),
            *trial_rows("dot:minmax:global", 2, 0.10, status="ERROR")]
    write_sweep(tmp_path / "old", rows, base=cfg.to_dict())
    sd, trials = estimate.seed_spread(cfg, "test_acc")
    pooled = math.sqrt((0.02**2 * 2 + 0.05**2 * 2) / 2)  # each pair's var: (d/2)^2 * 2
    assert trials == 4 and math.isclose(sd, pooled)
    assert estimate.seed_spread(cfg.replace(epochs=99), "test_acc") == (None, 0)


def test_dry_run_prints_the_race_and_its_time_and_writes_nothing(small_prepared, tmp_path):
    options = ["--data", str(small_prepared), "--storage-path", str(tmp_path), "--epochs", "2"]
    cfg = RunConfig(data=str(small_prepared), storage_path=str(tmp_path), epochs=2)
    write_run(tmp_path / "old-run", cfg, [60.0])
    write_sweep(tmp_path / "old-sweep", [row for s in range(3)
                                         for row in trial_rows("cosine", s, 0.5 + 0.01 * s)],
                base=cfg.to_dict())
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["sweep", *options, "--until-decided", "--variants",
                                      "cosine,ce-only", "--max-seeds", "6", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "dry run: nothing started, nothing written" in out
    assert "arms: cosine (baseline), ce-only" in out
    assert "expected: if no variant differs from the baseline" in out
    assert "sd 0.01" in out and "in 3 earlier trials" in out
    trials = next(line for line in out.splitlines() if line.startswith("trials:"))
    low, high = 6, 12  # 2 arms x 3 seeds, 2 arms x 6 seeds
    expected = int(trials.split("expected ")[1].split(",")[0])
    assert trials.startswith(f"trials: at least {low}, expected") and low <= expected <= high
    assert f"at most {high}" in trials
    assert "a trial takes about 60 s: the median of 1 earlier run of this config" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written

    fixed = CliRunner().invoke(cli, ["sweep", *options, "--variants", "cosine,ce-only",
                                     "--seeds", "2", "--dry-run"])
    assert fixed.exit_code == 0, fixed.output
    assert "trials: 4" in fixed.stdout and "time at 1 at a time: 4 min" in fixed.stdout


def test_a_race_without_earlier_runs_says_how_to_get_an_estimate(small_prepared, tmp_path):
    race = plan.plan_sweep(RunConfig(data=str(small_prepared), storage_path=str(tmp_path)),
                           variants=["cosine", "ce-only"], until=plan.Until(), dry_run=True)
    lines = estimate.dry_run_lines(race, address="10.0.0.5:6379")
    text = "\n".join(lines)
    assert "no earlier sweep of this config" in text
    assert "no earlier run of this config" in text and "one `dotsim train`" in text
    assert "times assume 1 trial at a time; give --max-concurrent" in text


def test_the_report_sets_the_time_taken_beside_the_estimate(tmp_path):
    sweep = write_sweep(tmp_path / "s", [*trial_rows("cosine", 0, 0.5),
                                         *trial_rows("ce-only", 0, 0.4)])
    session_started(str(sweep), {"trials": {"": 2}, "trial_seconds": 60.0, "runs": 3,
                                 "seconds": {"": 120.0}, "lines": ["not kept"]})
    session_ended(str(sweep))
    timing = json.loads((sweep / "timing.json").read_text())
    assert "lines" not in timing["estimate"] and timing["sessions"][0]["ended"]
    report = build_report(str(sweep))
    assert report["time"]["estimate"]["seconds"] == {"": 120.0}
    assert report["time"]["seconds"] < 60 and report["time"]["sessions"] == 1
    assert ("estimated when it started: 2 min (a trial about 60 s, from 3 earlier runs)"
            in to_markdown(report))
