"""Real Ray Train runs (2 DDP workers on CPU/gloo) on a small synthetic corpus: the loss
falls; a finished run is not trained again and its folder refuses other options; Ctrl-C
stops `dotsim train` and the printed command resumes it to the uninterrupted history; a
killed worker is survived; a run resumes on fewer workers. (The run folder's rules
without training: test_run_folder.py; NaN handling: test_train_step.py; world-size
invariance: test_sweep_ray.py.)"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pytest
import ray
from click.testing import CliRunner
from tiny import tiny_config, tiny_options

from orchestrator.cli import cli
from orchestrator.launch import RECORD_FILE, launch, run_history, run_location
from orchestrator.plan import located
from workers.metrics import EPOCH_METRICS, FINAL_METRICS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BIN = Path(sys.executable).parent
TINY = tiny_options()
# what two runs of the same config must agree on (timings and memory differ)
SAME = ("epoch", "train_loss", "train_ce", "train_lpc", "train_shuffled", "train_cos_rec",
        "val_acc", "val_cos_rec", "lr", "test_acc", "probe_word_from_formant")


def _cfg(small_prepared, tmp_path, **changes):
    return tiny_config(small_prepared, tmp_path / "runs", epochs=3).replace(**changes)


def _epochs(summary):
    return [h["epoch"] for h in summary["history"]]


def _same_history(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in SAME:
            if key in x or key in y:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (key, x, y)


def _files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")
            if p.is_file() and p.name != RECORD_FILE}


def test_a_finished_run_is_not_trained_again_and_refuses_other_options(ray_local,
                                                                        small_prepared,
                                                                        tmp_path):
    """`dotsim train --json` twice: the second prints the first run's results without
    training (stderr says so); the same run folder with another --lr is exit 2 and one
    line naming the change. (The refusals without training: test_run_folder.py.)"""
    def train(*options):
        return CliRunner().invoke(cli, [
            "train", "--data", str(small_prepared), "--storage-path", str(tmp_path), *TINY,
            "--epochs", "2", "--json", *options])

    first = train()
    assert first.exit_code == 0, first.output
    a = json.loads(first.stdout)
    history = a["history"]
    assert [h["epoch"] for h in history] == [1, 2] and not a["already_finished"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(EPOCH_METRICS) <= set(history[0]) and set(FINAL_METRICS) <= set(history[-1])
    assert history[0]["world_size"] == 2
    folder = Path(a["path"])
    record = json.loads((folder / RECORD_FILE).read_text())
    launch = record["launches"][0]
    assert launch["cluster_resources"]["CPU"] == 2
    assert launch["seconds"] > 0 and launch["epochs_done_after"] == 2  # what estimates read
    files = _files(folder)

    again = train()
    assert again.exit_code == 0, again.output
    b = json.loads(again.stdout)
    assert b["already_finished"] and b["history"] == history
    assert "had already finished" in again.stderr
    assert _files(folder) == files  # nothing trained, nothing overwritten

    reused = train("--lr", "0.0001", "--run-name", a["run_name"])
    assert reused.exit_code == 2
    lines = reused.stderr.strip().splitlines()
    assert len(lines) == 1 and "lr 0.004 -> 0.0001" in lines[0], reused.stderr
    assert _files(folder) == files
    assert len(json.loads((folder / RECORD_FILE).read_text())["launches"]) == 2


def test_fskil_run_in_a_lab_s_own_class_order(ray_local, small_prepared, tmp_path):
    """`train --protocol fskil --class-order FILE`: the run trains on the file's first 20
    words; its JSON carries every session's four accuracies per episode, their means, the
    order used and the shots drawn (novel words' training clips only)."""
    from workers import fskil
    from workers.data import load_prepared

    order = list(reversed(fskil.REFERENCE_ORDER))
    (tmp_path / "order.txt").write_text("# our split\n" + "\n".join(order) + "\n")
    options = ["train", "--data", str(small_prepared), "--storage-path", str(tmp_path), *TINY,
               "--epochs", "1", "--protocol", "fskil", "--class-order",
               str(tmp_path / "order.txt"), "--shots", "3", "--episodes", "2"]
    result = CliRunner().invoke(cli, [*options, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["config"]["class_order"] == order
    detail = doc["metrics"]["fskil"]
    assert detail["order"] == order[:35]
    assert len(detail["per_episode"]) == 2
    assert all(len(episode) == 6 and set(episode[0]) == {"overall", "seen", "unseen",
                                                         "harmonic"}
               for episode in detail["per_episode"])
    assert len(detail["per_session"]) == 6
    assert doc["metrics"]["fskil_mean_acc"] == pytest.approx(
        sum(s["overall"] for s in detail["per_session"]) / 6)
    data = load_prepared(small_prepared, splits=("train",))
    word_of = {clip: data.labels[int(label)] for clip, label in
               zip(data.splits["train"].clips, data.splits["train"].labels, strict=True)}
    for shots in detail["shots"]:  # 5 sessions x 3 new words x 3 shots, all novel
        assert len(shots) == 45 and len(set(shots)) == 45
        assert {word_of[clip] for clip in shots} == set(order[20:35])
    base_acc = doc["metrics"]["test_acc"]  # the base model's accuracy on its 20 words
    assert 0 <= base_acc <= 1 and "logmel_mean_acc" in doc["metrics"]
    # without --json (the finished run, not trained again): the headline numbers too
    again = CliRunner().invoke(cli, options)
    assert again.exit_code == 0, again.output
    m = doc["metrics"]
    assert (f"FSKIL mean_acc {m['fskil_mean_acc']:.3f} last_acc {m['fskil_last_acc']:.3f} "
            f"last_harmonic {m['fskil_last_harmonic']:.3f}; log-mel baseline mean_acc "
            f"{m['logmel_mean_acc']:.3f}") in again.stdout


def test_a_run_resumed_on_fewer_workers_continues_its_history(ray_local, small_prepared,
                                                                tmp_path):
    """The world-size decision end to end: a global-statistics run (dropout 0) fails after
    its first epoch on 2 workers, resumes on 1 and ends with the history of an
    uninterrupted 2-worker run, to round-off. Once it has finished, another worker count
    prints its results under the config it ran with and trains nothing."""
    cfg = located(_cfg(small_prepared, tmp_path, dropout=0.0, max_failures=0,
                     run_name="shrink"))
    with pytest.raises(ray.train.TrainingFailedError, match="injected failure"):
        launch(cfg, progress=False, loop=faults.failing_loop(epoch=1))
    assert len(run_history(run_location(cfg))) == 1
    resumed = launch(cfg.replace(workers=1), progress=False)
    assert [h["world_size"] for h in resumed["history"]] == [2, 1, 1]
    clean = launch(cfg.replace(run_name="shrink-clean"), progress=False)
    assert [h["world_size"] for h in clean["history"]] == [2, 2, 2]
    for ours, theirs in zip(resumed["history"], clean["history"], strict=True):
        for key in ("train_loss", "train_ce", "train_lpc", "train_shuffled", "lr"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-4), (key, ours, theirs)
    finished = launch(cfg.replace(workers=1), progress=False)
    assert finished["already_finished"] and finished["config"]["workers"] == 2
    assert finished["history"] == resumed["history"]


def test_ctrl_c_stops_train_and_the_printed_command_resumes_it(ray_local, small_prepared,
                                                               tmp_path):
    """Ctrl-C in a terminal (SIGINT to the whole process group) while `dotsim train` runs
    on the local Ray it started: it stops within seconds, exits 130 and prints the resume
    command; that command finishes the run with the uninterrupted history. (That the
    command carries --address and the other options given: test_cli.py.)"""
    options = ["--data", str(small_prepared), "--storage-path", str(tmp_path / "runs"), *TINY,
               "--epochs", "5", "--json"]
    (tmp_path / "home").mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "disabled"}
    log = tmp_path / "first.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([str(BIN / "dotsim"), "train", *options], env=env,
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    cfg = located(_cfg(small_prepared, tmp_path, epochs=5))
    deadline = time.time() + 300
    while time.time() < deadline and not faults.holds(lambda: run_history(run_location(cfg))):
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    stopped = log.read_text().strip().splitlines()[-1]
    assert "interrupted after epoch" in stopped and "resume it: dotsim train" in stopped
    assert len(run_history(run_location(cfg))) < 5

    command = shlex.split(stopped.split("resume it: ", 1)[1])
    assert command[command.index("--run-name") + 1] == cfg.run_name
    resumed = subprocess.run([str(BIN / "dotsim"), *command[1:]], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads(resumed.stdout)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    clean = launch(cfg.replace(run_name="uninterrupted"), progress=False)
    _same_history(history, clean["history"])


def test_killed_worker_is_restarted_from_checkpoint(ray_local, small_prepared, tmp_path):
    cfg = located(_cfg(small_prepared, tmp_path, epochs=3, run_name="killed"))
    killer = faults.kill_a_worker_when(lambda: run_history(run_location(cfg)))
    summary = launch(cfg, progress=False)
    killer.join()
    assert killer.killed  # a worker really died after the first checkpoint
    assert _epochs(summary) == [1, 2, 3]
    clean = launch(cfg.replace(run_name="clean"), progress=False)
    # the deterministic sampler and per-epoch seeds make the restarted run repeat the
    # uninterrupted one
    _same_history(summary["history"], clean["history"])
