"""What a sweep says while it runs: SweepProgress driven as Tune drives it (its callback
methods, with Tune's trial objects stood in by their two fields it reads) on a clock the
test moves."""

from types import SimpleNamespace

import pytest

from orchestrator.progress import SweepProgress, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _trial(name, status="RUNNING", last_result=None):
    return SimpleNamespace(name=name, status=status, last_result=last_result or {})


def _progress(lines, clock, total=4, concurrency=2):
    return SweepProgress(total=total, epochs=3, metric="test_acc", concurrency=concurrency,
                         name=lambda t: t.name, say=lines.append, clock=clock)


def test_a_line_as_each_trial_starts_runs_its_epochs_and_ends():
    lines, clock = [], Clock()
    progress = _progress(lines, clock)
    a, b = _trial("cosine-seed0"), _trial("cosine-seed1")
    progress.on_trial_start(0, [a, b], a)
    progress.on_trial_start(0, [a, b], b)
    assert lines == ["[sweep] started cosine-seed0 (1 running, 0/4 done)",
                     "[sweep] started cosine-seed1 (2 running, 0/4 done)"]
    clock.now = 60.0
    progress.on_trial_result(0, [a, b], a, {"epoch": 1, "val_acc": 0.5, "epoch_seconds": 55.0})
    assert lines[-1] == "[cosine-seed0] epoch 1/3 val_acc 0.500 (55.0s)"
    # before any trial ended, the time left comes from the epochs: 60 s an epoch, 3 epochs
    assert progress.time_left() == pytest.approx((120 + 120 + 2 * 180) / 2)
    clock.now = 180.0
    a.last_result = {"epoch": 3, "test_acc": 0.8125}
    progress.on_trial_complete(0, [a, b], a)
    assert lines[-1] == ("[sweep] cosine-seed0 finished: test_acc 0.8125 after 3 min; 1/4 "
                         "done, 3 left, about 3 min to go")
    clock.now = 200.0
    progress.on_trial_error(0, [a, b], b)
    assert lines[-1].startswith("[sweep] cosine-seed1 FAILED (its error is listed when the "
                                "sweep ends) after 3 min; 2/4 done, 2 left")


def test_a_resumed_sweep_counts_the_trials_that_had_ended_and_forgets_old_timings():
    lines, clock = [], Clock()
    progress = _progress(lines, clock, total=3)
    progress.durations = [999.0]  # as unpickled from the sweep's saved state
    progress.setup()  # Tune calls it as the resumed sweep starts
    done, running = _trial("a", "TERMINATED"), _trial("b")
    progress.on_trial_start(0, [done, running], running)
    assert lines[-1] == "[sweep] started b (1 running, 1/3 done)"
    assert progress.time_left() is None  # nothing measured yet: says "?"
    clock.now = 30.0
    running.last_result = {"epoch": 1}  # stopped early by the scheduler: no final metrics
    progress.on_trial_complete(0, [done, running], running)
    assert lines[-1] == ("[sweep] b stopped after epoch 1/3 after 30 s; 2/3 done, 1 left, "
                         "about 30 s to go")


def test_a_trial_whose_first_news_is_its_failure_is_counted_once():
    """A trial that fails before it starts (its actor could not be made) reaches the
    callback already marked ERROR: it is one trial done, not two."""
    lines = []
    progress = _progress(lines, Clock(), total=2)
    failed, waiting = _trial("a", "ERROR"), _trial("b", "PENDING")
    progress.on_trial_error(0, [failed, waiting], failed)
    assert "1/2 done, 1 left" in lines[-1]


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (None, 42, 7 * 60, 2.5 * 3600)] == ["?", "42 s", "7 min",
                                                                      "2.5 h"]


def test_tune_s_pointers_are_dropped_and_other_output_goes_to_stderr(capsys):
    from orchestrator.sweep import _tune_output_silenced

    with _tune_output_silenced():
        print("\nView detailed results here: /root/ray_results/tune")
        print("To visualize your results with TensorBoard, run: `tensorboard --logdir /x`")
        print("╭──────────────────╮\n│ Configuration for experiment │\n╰──────────────────╯")
        print("(RayTrainWorker pid=1) dotsim: skipping step: non-finite lpc", end="")
        print(" (rank 1) at epoch 1 step 2")
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("(RayTrainWorker pid=1) dotsim: skipping step: non-finite lpc (rank 1) "
                   "at epoch 1 step 2\n")
