"""Real Tune sweeps over Ray Train runs: results.parquet, TensorBoard events, the report,
a trial that fails (listed, kept as ERROR, exit 1, re-run by --resume), and a sweep killed
mid-way and resumed without re-running its finished trial."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pandas as pd
import pytest
from click.testing import CliRunner
from tiny import tiny_options

from orchestrator.cli import cli
from orchestrator.launch import RECORD_FILE, run_history

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = [*tiny_options(epochs=2), "--seeds", "1"]


def test_tiny_fskil_sweep_end_to_end(ray_local, small_prepared, tmp_path):
    """A sweep under the FSKIL protocol: a line as each trial starts, runs its epochs and
    ends; results.parquet with every session's accuracies; TensorBoard events; each
    trial's run record; the report with its plots. (The report's contents from a
    hand-made sweep: test_orchestrator.py.)"""
    result = CliRunner().invoke(cli, [
        "sweep", "--data", str(small_prepared), "--storage-path", str(tmp_path),
        "--name", "s", "--variants", "cosine,dot:meanstd:global", *TINY, "--protocol",
        "fskil", "--shots", "3", "--episodes", "2", "--json"])
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "s"
    frame = pd.read_parquet(sweep / "results.parquet")
    assert set(frame["variant"]) == {"cosine", "dot:meanstd:global"}
    assert sorted(frame["epoch"]) == [1, 1, 2, 2] and (frame["status"] == "FINISHED").all()
    last = frame[frame["epoch"] == 2]
    assert last["fskil_s5_harmonic"].notna().all() and last["logmel_mean_acc"].notna().all()
    report = json.loads(result.stdout)
    assert report["protocol"] == "fskil"
    assert report["variants"][-1]["fskil_mean_acc"]["mean"] == last["logmel_mean_acc"].iloc[0]
    assert (sweep / "comparison.png").stat().st_size > 10_000
    assert (sweep / "sessions.png").stat().st_size > 10_000
    launched_by = set()
    for run in ("cosine-seed0", "dot-meanstd-global-seed0"):  # launched the one way
        record = json.loads((sweep / "runs" / run / RECORD_FILE).read_text())
        assert record["config"]["run_name"] == run and record["config"]["protocol"] == "fskil"
        assert record["launches"][0]["code_version"] and record["data_fingerprint"]
        launched_by.add(record["launches"][0]["pid"])
    # one Tune trial process ran both (Tune's reuse_actors: no second process start)
    assert len(launched_by) == 1 and os.getpid() not in launched_by
    err = result.stderr  # progress: each trial starts, runs its epochs, ends
    for trial in ("cosine-seed0", "dot-meanstd-global-seed0"):
        assert f"[sweep] started {trial}" in err and f"[{trial}] epoch 2/2 val_acc" in err
        assert f"[sweep] {trial} finished: fskil_mean_acc " in err
    assert "2/2 done, 0 left" in err and "tensorboard --logdir" in err
    assert "To visualize your results with TensorBoard" not in result.output

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dirs = sorted({p.parent for p in (sweep / "tune").rglob("events.out.tfevents.*")})
    assert [d.name for d in event_dirs] == ["cosine-seed0", "dot-meanstd-global-seed0"]
    for directory in event_dirs:
        events = EventAccumulator(str(directory))
        events.Reload()
        assert len(events.Scalars("ray/tune/val_acc")) == 2


def test_world_size_study(ray_local, small_prepared, tmp_path):
    """With the world-size-independent sampler and dropout off, a global-scope run at world
    size 2 repeats world size 1 (first epoch's loss to 1e-4); a local-scope run drifts."""
    result = CliRunner().invoke(cli, [
        "sweep", "--data", str(small_prepared), "--storage-path", str(tmp_path),
        "--name", "ws", "--study", "world-size", "--world-sizes", "1,2",
        "--variants", "dot:meanstd:global,dot:meanstd:local", *TINY, "--epochs", "1",
        "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    drift = {d["variant"]: d for d in report["world_size"]}
    assert drift["dot:meanstd:global"]["max_abs_diff_train_loss"] < 1e-4
    assert drift["dot:meanstd:global"]["verdict"] == "stays put (round-off)"
    assert drift["dot:meanstd:local"]["max_abs_diff_train_loss"] > 1e-3
    assert drift["dot:meanstd:local"]["verdict"] == "drifts"
    frame = pd.read_parquet(tmp_path / "ws" / "results.parquet")
    assert sorted(set(frame["workers"])) == [1, 2]


def _checkpoints(run: Path):
    return sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir())


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killed_sweep_resumes_without_rerunning_finished_trials(small_prepared, tmp_path, how):
    # a user's shell: HOME of its own, RAY_AUTH_MODE unset (Ray turns token auth on)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    sweep = tmp_path / "s"
    args = [sys.executable, "-c", "from orchestrator.cli import main; main()", "sweep",
            "--data", str(small_prepared), "--storage-path", str(tmp_path), "--name", "s",
            "--variants", "cosine,dot:minmax:local", "--max-concurrent", "1", *TINY,
            "--epochs", "3"]
    with open(tmp_path / "first.log", "w") as stderr:
        proc = subprocess.Popen(args, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    first = sweep / "runs" / "cosine-seed0"
    deadline = time.time() + 300
    # kill the driver and its local Ray as soon as the first trial's run has finished,
    # often before Tune has recorded it: the resumed trial must then report the finished
    # run's results instead of training again
    while time.time() < deadline and _tune_status(sweep, "cosine-seed0") != "FINISHED":
        time.sleep(0.2)
    assert _finished(first), "the first trial did not finish in time"
    assert not _finished(sweep / "runs" / "dot-minmax-local-seed0")
    if how == "SIGKILL":  # the driver and the local Ray it started die at once
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:  # Ctrl-C: Tune saves its state, the driver says how to resume and exits 130
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
        assert "dotsim sweep --resume" in (tmp_path / "first.log").read_text()
        with contextlib.suppress(ProcessLookupError):  # anything the driver left behind
            os.killpg(proc.pid, signal.SIGKILL)
    before = _checkpoints(first)
    resumed = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()",
                              "sweep", "--resume", str(sweep), "--json"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _checkpoints(first) == before  # the finished trial was not trained again
    assert "[sweep] started cosine-seed0" in (tmp_path / "first.log").read_text()
    # the resumed sweep's progress: the callback restored from Tune's state, counting anew
    assert "Resuming the sweep" in resumed.stderr
    assert "[sweep] started dot-minmax-local-seed0" in resumed.stderr
    assert "2/2 done, 0 left" in resumed.stderr
    said = (tmp_path / "first.log").read_text() + resumed.stderr
    assert "Token authentication" not in said  # Ray's own notice is kept quiet
    frame = pd.read_parquet(sweep / "results.parquet")
    for _, trial in frame.groupby("trial"):
        assert sorted(trial["epoch"]) == [1, 2, 3]
    assert (frame["status"] == "FINISHED").all()


def _tune_status(sweep: Path, trial: str):
    """The status Tune's latest saved experiment state gives the trial (None before)."""
    from orchestrator.sweep import trial_outcomes

    try:
        return {o.name: o.status for o in trial_outcomes(str(sweep))}.get(trial)
    except Exception:  # Tune's or Ray Train's state, being written
        return None


def _finished(run: Path) -> bool:
    """The run's newest checkpoint holds its final epoch."""
    return faults.holds(lambda: "test_acc" in run_history(str(run))[-1])


def test_failed_trial_is_reported_and_resume_reruns_it(ray_local, small_prepared, tmp_path):
    """A worker of the first trial is killed with no restarts left: the trial fails, the
    other one runs, the sweep lists the failure, keeps it in results.parquet and the report
    as ERROR, and exits 1; --resume re-runs the failed trial from its last checkpoint."""
    sweep = tmp_path / "s"
    first_run = sweep / "runs" / "cosine-seed0"
    killer = faults.kill_a_worker_when(lambda: run_history(str(first_run)))
    result = CliRunner().invoke(cli, [
        "sweep", "--data", str(small_prepared), "--storage-path", str(tmp_path), "--name", "s",
        "--variants", "cosine,dot:minmax:global", "--max-concurrent", "1", "--max-failures",
        "0", *TINY, "--epochs", "3", "--json"])
    killer.join()
    assert killer.killed
    assert result.exit_code == 1, result.output
    assert "trial cosine-seed0 failed: " in result.stderr
    frame = pd.read_parquet(sweep / "results.parquet")
    status = frame.groupby("trial")["status"].first().to_dict()
    assert status == {"cosine-seed0": "ERROR", "dot-minmax-global-seed0": "FINISHED"}
    assert frame[frame["trial"] == "cosine-seed0"]["error"].notna().all()
    report = json.loads(result.stdout)  # the report is printed before the exit
    failed = report["left_out"]["failed"]
    assert [t["trial"] for t in failed] == ["cosine-seed0"] and failed[0]["error"]
    assert report["left_out"]["stopped early by the scheduler"] == []
    finished_before = sorted(p.name for p in (sweep / "runs" / "dot-minmax-global-seed0")
                             .glob("checkpoint_*"))

    resumed = CliRunner().invoke(cli, ["sweep", "--resume", str(sweep), "--json"])
    assert resumed.exit_code == 0, resumed.output
    frame = pd.read_parquet(sweep / "results.parquet")
    assert (frame["status"] == "FINISHED").all()
    assert sorted(frame[frame["trial"] == "cosine-seed0"]["epoch"]) == [1, 2, 3]
    assert sorted(p.name for p in (sweep / "runs" / "dot-minmax-global-seed0")
                  .glob("checkpoint_*")) == finished_before  # not trained again


RACE = [*tiny_options(epochs=2, cpus_per_worker=0.5), "--variants", "cosine", "--grid",
        "lr=0.004,0.0000001", "--until-decided", "--max-seeds", "5", "--metric",
        "train_cos_rec", "--max-failures", "0"]
GOOD, WORSE = "cosine-seed{}-lr=0.004", "cosine-seed{}-lr=1e-07"


def test_race_stops_seeding_a_worse_arm_survives_a_failed_trial_and_resumes(
        ray_local, small_prepared, tmp_path):
    """A race of a learning arm (the baseline) against one that barely moves (lr 1e-7) on
    how well emb_rec matches emb. A worker of the worse arm's seed 1 is killed with no
    restarts left: that trial is an ERROR, its arm gets no seed past the gap, the sweep
    exits 1 listing it. --resume re-runs it and the race goes on: the worse arm is
    decided "worse" at its first look (3 seeds), so seeds 3 and 4 of the budget of 5 never
    run, for either arm."""
    sweep = tmp_path / "s"
    killer = faults.kill_a_worker_when(
        lambda: run_history(str(sweep / "runs" / WORSE.format(1))))
    result = CliRunner().invoke(cli, [
        "sweep", "--data", str(small_prepared), "--storage-path", str(tmp_path), "--name", "s",
        *RACE, "--max-concurrent", "1", "--json"])
    killer.join()
    assert killer.killed
    assert result.exit_code == 1, result.output
    assert f"trial {WORSE.format(1)} failed: " in result.stderr
    assert "Race of 2 arms on train_cos_rec until decided" in result.stderr
    frame = pd.read_parquet(sweep / "results.parquet")
    status = frame.groupby("trial")["status"].first().to_dict()
    assert status == {GOOD.format(0): "FINISHED", WORSE.format(0): "FINISHED",
                      GOOD.format(1): "FINISHED", WORSE.format(1): "ERROR"}
    definition = json.loads((sweep / "sweep.json").read_text())
    assert definition["trials"] == [] and definition["race"]["arms"][0]["lr"] == 0.004

    resumed = CliRunner().invoke(cli, ["sweep", "--resume", str(sweep), "--json"])
    assert resumed.exit_code == 0, resumed.output
    frame = pd.read_parquet(sweep / "results.parquet")
    runs = set(frame["trial"])
    assert runs == {arm.format(s) for arm in (GOOD, WORSE) for s in range(3)}
    assert (frame["status"] == "FINISHED").all()
    assert sorted(p.name for p in (sweep / "runs").iterdir()) == sorted(runs)
    assert "[race] cosine lr=1e-07 vs cosine lr=0.004 on train_cos_rec: worse after 3 " \
           "seeds (1 looks)" in resumed.stderr
    report = json.loads(resumed.stdout)
    [row] = [r for r in report["paired"] if r["role"] == "primary"]
    assert row["metric"] == "train_cos_rec" and row["decision"] == "worse"
