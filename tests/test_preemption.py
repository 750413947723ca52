"""Answering a preemption notice, without Ray: when the watch asks and when it says to
save, the record of notices, and an epoch stopped at a step and resumed from the saved
checkpoint files reporting exactly what the uninterrupted epoch reports."""

import time
import types
from dataclasses import dataclass

import pytest

from workers import preemption
from workers.preemption import CALIBRATION_STEPS, PreemptionWatch


@dataclass
class Info:  # what ray.train.get_preemption_info returns (its public attributes)
    deadline_ms: int | None
    preempted_node_ids: tuple = ("n1",)
    preempted_ranks: tuple = (0, 1)


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def ask_timer(monkeypatch):
    """The watch times its asks with ``time.perf_counter``: a fake one here, advanced by the
    asks alone, so an ask costs what the test says however loaded the machine is (a real
    2 ms sleep took several times that on a busy CI machine, and k moved)."""
    timer = Clock()
    monkeypatch.setattr(preemption, "time", types.SimpleNamespace(
        perf_counter=timer, sleep=time.sleep, time=time.time))
    return timer


def watch_with(answers, clock=None, ask_seconds=0.0, ask_timer=None):
    """A single-rank watch whose asks return ``answers()`` and take ``ask_seconds`` of
    ``ask_timer``."""
    calls = []

    def ask():
        calls.append(1)
        if ask_timer is not None:
            ask_timer.now += ask_seconds
        return answers()

    watch = PreemptionWatch(False, ask=ask, clock=clock or Clock())
    return watch, calls


def calibrate(watch, step_seconds=0.1):
    for _ in range(CALIBRATION_STEPS):
        assert not watch.after_step(step_seconds)


def test_asks_every_step_until_calibrated_then_every_k_within_the_budget(ask_timer):
    watch, calls = watch_with(lambda: None, ask_seconds=0.002, ask_timer=ask_timer)
    calibrate(watch, step_seconds=0.01)
    assert len(calls) == CALIBRATION_STEPS
    # an ask of >= 2 ms against a 10 ms step: at most 0.8% means every >= 25 steps, and a
    # notice is still seen within MAX_NOTICE_DELAY_S (500 steps)
    assert 20 <= watch.every <= 500
    for _ in range(10 * watch.every):
        watch.after_step(0.01)
    assert len(calls) == CALIBRATION_STEPS + 10


def test_every_is_chosen_again_from_the_steps_past_the_warm_up(ask_timer):
    watch, calls = watch_with(lambda: None, ask_seconds=0.002, ask_timer=ask_timer)
    calibrate(watch, step_seconds=0.01)  # warm-up steps: short next to the ask
    first = watch.every
    assert first >= 25  # >= 2 ms against 10 ms at 0.8%
    for _ in range(preemption.RECALIBRATION_STEPS - CALIBRATION_STEPS):
        watch.after_step(0.5)
    assert watch.every <= 10 < first  # the same ask against 0.5 s steps


def test_a_cheap_ask_against_a_slow_step_is_made_every_step():
    watch, calls = watch_with(lambda: None)
    calibrate(watch, step_seconds=1.0)
    assert watch.every == 1


def test_trains_until_the_deadline_leaves_room_for_the_checkpoint():
    clock = Clock()
    notice = {"info": None}
    watch, _ = watch_with(lambda: notice["info"], clock)
    calibrate(watch, step_seconds=0.1)
    watch.timed_checkpoint(1.0)
    notice["info"] = Info(deadline_ms=int((clock.now + 10) * 1000))
    steps = 1
    while not watch.after_step(0.1, CALIBRATION_STEPS + steps):
        steps += 1
    # (10 s - the reserve of max(5 s, 3 checkpoint times)) / 0.1 s a step: 50 more steps
    assert steps == 51
    assert watch.notice.deadline == clock.now + 10 and watch.notice.nodes == ["n1"]
    assert watch.notice.seen_at_step == CALIBRATION_STEPS + 1 and watch.notices == 1


def test_a_slow_checkpoint_moves_the_save_earlier_and_no_deadline_saves_at_once():
    clock = Clock()
    notice = {"info": None}
    watch, _ = watch_with(lambda: notice["info"], clock)
    calibrate(watch, step_seconds=0.1)
    watch.timed_checkpoint(3.0)  # 3 x 3 s = 9 s reserve: 10 steps left of a 10 s notice
    notice["info"] = Info(deadline_ms=int((clock.now + 10) * 1000))
    assert [watch.after_step(0.1) for _ in range(11)] == [False] * 10 + [True]
    watch, _ = watch_with(lambda: Info(deadline_ms=None), clock)
    assert watch.after_step(0.1)  # no deadline: save now


def test_a_notice_between_epochs_is_answered_by_the_epoch_checkpoint():
    clock = Clock()
    deadline = {"ms": int((clock.now + 60) * 1000)}
    watch, _ = watch_with(lambda: Info(deadline_ms=deadline["ms"]), clock)
    assert watch.ask_now(70)
    assert watch.notice.seen_at_step == 70 and watch.notices == 1
    assert watch.ask_now(70) and watch.notices == 1  # the same notice, asked again
    deadline["ms"] -= 30_000  # a second node's, earlier: merged by Ray into one notice
    assert watch.ask_now(70) and watch.notices == 2


def _watch_on_rank(rank, world_size):
    """A watch on each of two gloo ranks whose steps, clocks and asks' costs differ; the
    asks answer alike (Ray broadcasts rank 0's notice): when each rank asks, and when it
    saves."""
    clock = Clock()
    clock.now += 0.7 * rank
    asks = []

    def ask():
        asks.append(1)
        if rank == 0:
            time.sleep(0.003)
        return Info(deadline_ms=1_000_030_000) if len(asks) > 12 else None

    watch = PreemptionWatch(True, ask=ask, clock=clock)
    watch.timed_checkpoint(1.0 + rank)
    step_time = 0.1 if rank == 0 else 0.3
    for step in range(1, 2000):
        clock.now += step_time
        if watch.after_step(step_time, step):
            return {"every": watch.every, "saved_after": step, "asks": len(asks)}
    return None


@pytest.mark.distributed
def test_every_rank_asks_at_the_same_steps_and_saves_after_the_same_step(gloo_pool):
    first, second = gloo_pool(2).run(_watch_on_rank)
    assert first is not None and first == second
    assert first["every"] > 1  # rank 0's 3 ms asks against its 0.1 s steps


def test_after_its_checkpoint_the_group_takes_no_further_step(monkeypatch):
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 1000:
            raise SystemExit  # what ending the group would do, seen from inside

    monkeypatch.setattr(preemption.time, "sleep", sleep)
    with pytest.raises(SystemExit):
        PreemptionWatch.wait_for_teardown()
    assert len(slept) == 1000


def test_the_record_of_a_notice_says_what_was_saved_and_redone(tmp_path):
    run = str(tmp_path)

    def notice(at):
        return preemption.Notice(1_796_000_000.0, ["n1"], [1], 0, seen_at_step=at)

    preemption.record_notice(run, notice(40), steps_per_epoch=35)
    preemption.record_checkpoint(run, step=45, seconds=0.8)
    [entry] = preemption.record_resume(run, 45)
    assert entry["notice_step"] == 40 and entry["step_checkpointed"] == 45
    assert entry["epoch"] == 2 and entry["nodes"] == ["n1"]
    assert entry["steps_redone"] == 0 and entry["resumed_from_step"] == 45
    assert preemption.record_resume(run, 60) == []  # answered once
    assert "0 steps redone" in preemption.handled_line("r", entry)
    # a deadline that came before the checkpoint: redone at least notice - resumed
    preemption.record_notice(run, notice(80), steps_per_epoch=35)
    [late] = preemption.record_resume(run, 70)
    assert late["steps_redone"] == 10 and "before a checkpoint" in \
        preemption.handled_line("r", late)
    # a notice at the last step of epoch 2 is epoch 2's; two notices answered by one
    # checkpoint; a run that finished before the deadline
    preemption.record_notice(run, notice(70), steps_per_epoch=35)
    preemption.record_notice(run, notice(70), steps_per_epoch=35)
    preemption.record_checkpoint(run, step=70, seconds=None)
    assert [e["epoch"] for e in preemption.read_record(run)[-2:]] == [2, 2]
    assert len(preemption.record_resume(run, 70)) == 2
    preemption.record_notice(run, notice(100), steps_per_epoch=35)
    preemption.record_finished(run, 105)
    last = preemption.read_record(run)[-1]
    assert last["steps_redone"] == 0 and last["finished_before_deadline"]
    assert "finished before the deadline" in preemption.handled_line("r", last)
    assert all("steps_redone" in e for e in preemption.read_record(run))


class StopAt:
    """A watch that says to save after the ``at``-th step of the epoch."""

    def __init__(self, at):
        self.at, self.steps = at, 0

    def after_step(self, step_time, global_step):
        self.steps += 1
        return self.steps == self.at


@pytest.mark.parametrize("stop_after", [1, 5])
def test_an_epoch_resumed_from_a_saved_step_reports_the_uninterrupted_epoch(
        small_prepared, tmp_path, stop_after):
    import torch
    from tiny import tiny_config

    from workers import checkpoints
    from workers.data import load_prepared
    from workers.train import EpochSoFar, FeatureNorm, RankContext, build_model, train_epoch

    cfg = tiny_config(small_prepared, batch_size=8, workers=1, dropout=0.0, epochs=2)
    data = load_prepared(cfg.data)
    ctx = RankContext(0, 1, torch.device("cpu"))
    train = FeatureNorm.fit(data.splits["train"])(data.splits["train"], ctx.device)

    def fresh():
        model = build_model(cfg, data.meta, classes=len(data.labels))
        return model, torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                        weight_decay=cfg.weight_decay)

    model, optimizer = fresh()
    train_epoch(model, optimizer, train, cfg, 0, ctx)
    whole = train_epoch(model, optimizer, train, cfg, 1, ctx)

    model, optimizer = fresh()
    train_epoch(model, optimizer, train, cfg, 0, ctx)
    so_far = train_epoch(model, optimizer, train, cfg, 1, ctx, watch=StopAt(stop_after))
    assert isinstance(so_far, EpochSoFar) and so_far.steps == stop_after
    checkpoints.write(tmp_path, {"model": model.state_dict(),
                                 "optimizer": optimizer.state_dict()}, [])
    saved, _ = checkpoints.read(tmp_path)
    model, optimizer = fresh()  # a new group: everything from the checkpoint files
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    resumed = train_epoch(model, optimizer, train, cfg, 1, ctx, so_far=so_far)
    for key, value in whole.items():
        if key not in ("epoch_seconds", "samples_per_second", "peak_rss_mb"):
            assert resumed[key] == pytest.approx(value, rel=1e-6), key


def test_a_sweep_trial_hands_tune_its_epochs_not_its_preemption_checkpoint(monkeypatch):
    """Tune gets every epoch of a trial's run and never the checkpoint saved on a notice (a
    scheduler would count it as an iteration)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator import sweep
    from workers.metrics import PREEMPTION_REPORT

    handed = []
    monkeypatch.setattr(TuneReportCallback, "after_report",
                        lambda self, context, metrics, checkpoint: handed.append(metrics[0]))
    callback = object.__new__(sweep.EpochsToTune)  # its __init__ needs a Tune session
    callback.after_report(None, [{"epoch": 1, "val_acc": 0.5}], None)
    callback.after_report(None, [{PREEMPTION_REPORT: {"step": 3}}], None)
    callback.after_report(None, [{"epoch": 2, "val_acc": 0.6}], None)
    assert [m["epoch"] for m in handed] == [1, 2]


def _stopped_on_two_ranks(rank, world_size, data, stop_after):
    """Epoch 1 of the tiny run on two gloo ranks, then epoch 2 stopped after
    ``stop_after`` steps: rank 0's model and optimizer state and where it stopped."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from workers.train import train_epoch

    cfg, train, ctx, model, optimizer = _tiny_rank(data, rank, world_size)
    ddp = DistributedDataParallel(model)
    train_epoch(ddp, optimizer, train, cfg, 0, ctx)
    so_far = train_epoch(ddp, optimizer, train, cfg, 1, ctx, watch=StopAt(stop_after))
    return {"so_far": so_far, "model": model.state_dict(),
            "optimizer": optimizer.state_dict()} if rank == 0 else torch.zeros(())


def _tiny_rank(data, rank, world_size):
    import torch
    from tiny import tiny_config

    from workers.data import load_prepared
    from workers.train import FeatureNorm, RankContext, build_model

    cfg = tiny_config(data, batch_size=8, workers=world_size, dropout=0.0, epochs=2,
                      similarity="dot", norm="minmax", scope="global")
    prepared = load_prepared(cfg.data)
    ctx = RankContext(rank, world_size, torch.device("cpu"))
    train = FeatureNorm.fit(prepared.splits["train"])(prepared.splits["train"], ctx.device)
    model = build_model(cfg, prepared.meta, classes=len(prepared.labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return cfg, train, ctx, model, optimizer


@pytest.mark.distributed
def test_an_epoch_saved_on_two_ranks_resumes_exactly_on_one(small_prepared, gloo_pool):
    """A run whose numbers do not depend on the world size (global statistics), stopped
    mid-epoch on two ranks, resumes on one and reports what one rank reports without
    the interruption."""
    from workers.train import train_epoch

    saved = gloo_pool(2).run(_stopped_on_two_ranks, str(small_prepared), 4)[0]
    cfg, train, ctx, model, optimizer = _tiny_rank(str(small_prepared), 0, 1)
    train_epoch(model, optimizer, train, cfg, 0, ctx)
    whole = train_epoch(model, optimizer, train, cfg, 1, ctx)
    cfg, train, ctx, model, optimizer = _tiny_rank(str(small_prepared), 0, 1)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    resumed = train_epoch(model, optimizer, train, cfg, 1, ctx, so_far=saved["so_far"])
    for key in ("train_loss", "train_ce", "train_lpc", "train_shuffled", "train_cos_rec",
                "skipped_steps", "lr"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-4), key
    assert saved["so_far"].steps == 4


def test_preemptions_have_their_own_limit_apart_from_failures(small_prepared, tmp_path):
    from tiny import tiny_config

    from orchestrator.launch import make_trainer
    from workers.errors import InputError

    cfg = tiny_config(small_prepared, tmp_path, run_name="r", max_failures=0)
    failure = make_trainer(cfg).run_config.failure_config
    assert (failure.max_failures, failure.max_preemption_failures) == (0, -1)  # unlimited
    failure = make_trainer(cfg.replace(max_preemptions=3)).run_config.failure_config
    assert failure.max_preemption_failures == 3
    with pytest.raises(InputError, match="max_preemptions must be >= 0, or -1"):
        cfg.replace(max_preemptions=-2)
