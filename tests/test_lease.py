"""One writer per run or sweep folder (``workers.lease``), on a local folder and on the moto
S3 server: the lease is taken, refused to a second launch with its holder's host, pid and
start time, renewed, released, taken over at once from a holder killed on this host and
by time from one on another host; of two launches racing for a free folder one holds it.
End to end (slow): a second `dotsim train` of a running run exits 2 at once, locally and
into a bucket, and the first finishes alone; a run whose driver was killed resumes. A
sweep folder in use is refused by plan_sweep, run_sweep and resume, without Ray."""

import dataclasses
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import boto3
import psutil
import pytest
from tiny import tiny_options

from orchestrator import plan
from orchestrator import sweep as sweeps
from orchestrator.launch import RECORD_FILE, run_history
from orchestrator.results import SWEEP_FILE
from workers import lease, storage
from workers.config import RunConfig
from workers.errors import InputError

BIN = Path(sys.executable).parent
BUCKET = "dotsim-lease"
# a process that holds the lease of argv[1] until it is killed
HOLDER = ("import sys, time\nfrom workers import lease\n"
          "with lease.held(sys.argv[1], 'run'):\n    print('held', flush=True)\n"
          "    time.sleep(600)\n")


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}"


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    """A run folder that does not exist yet: under tmp_path, or in the moto bucket."""
    if request.param == "local":
        return str(tmp_path / "run")
    return f"{request.getfixturevalue('bucket')}/{uuid.uuid4().hex[:8]}/run"


def _other_host(folder: str, *, age_s: float, ttl_s: float = 60.0) -> lease.Lease:
    """A lease as a launch on another host writes it, last renewed ``age_s`` ago."""
    renewed = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age_s)
    other = lease.Lease(holder=uuid.uuid4().hex, host="another-host", pid=os.getpid(),
                        started="2026-01-01T00:00:00+00:00",
                        renewed_at=renewed.isoformat(timespec="milliseconds"), ttl_s=ttl_s)
    storage.write_json(lease.lease_path(folder), dataclasses.asdict(other))
    return other


def test_a_held_folder_is_refused_naming_its_holder_and_is_free_after(folder):
    with lease.held(folder, "run") as mine:
        assert lease.read(folder) == mine
        for attempt in (lease.check_free, lease.acquire):
            with pytest.raises(InputError) as refused:
                attempt(folder, "run")
            line = str(refused.value)
            assert "\n" not in line and f"run folder {folder} is in use" in line
            assert (f"host {socket.gethostname()}, pid {os.getpid()}, started {mine.started}"
                    in line)
        assert lease.read(folder) == mine  # a refused launch leaves the lease alone
    assert lease.read(folder) is None
    with lease.held(folder, "run") as again:
        assert again.holder != mine.holder


def test_the_lease_is_released_when_the_launch_fails(folder):
    with pytest.raises(RuntimeError, match="the run failed"), lease.held(folder, "run"):
        raise RuntimeError("the run failed")
    assert lease.read(folder) is None


def test_the_lease_is_renewed_while_held(folder, monkeypatch):
    monkeypatch.setenv(lease.TTL_ENV, "0.6")  # renewed every 0.2 s
    with lease.held(folder, "run") as mine:
        assert mine.ttl_s == 0.6
        deadline = time.time() + 60
        while time.time() < deadline and lease.read(folder).renewed_at == mine.renewed_at:
            time.sleep(0.05)
        renewed = lease.read(folder)
        assert renewed.holder == mine.holder and renewed.renewed_at > mine.renewed_at
        assert renewed.started == mine.started


def test_a_holder_killed_on_this_host_is_taken_over_at_once(folder):
    """SIGKILL leaves the lease behind with a pid that is gone: the next launch on this
    host takes it over without waiting for the ttl (60 s here)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, folder], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"pid {holder.pid}, started"):
            lease.check_free(folder, "run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()  # reaped: a zombie would still answer os.kill(pid, 0)
        holder.stdout.close()
    left = lease.read(folder)
    assert left.pid == holder.pid and left.ttl_s == lease.DEFAULT_TTL_S
    with lease.held(folder, "run") as mine:
        assert mine.pid == os.getpid()


def test_a_lease_from_another_host_is_refused_until_it_expires(folder):
    """The pid of another host cannot be asked: only the ttl written in its lease frees
    the folder, counted from its last renewal."""
    fresh = _other_host(folder, age_s=0)
    with pytest.raises(InputError, match="host another-host"):
        lease.acquire(folder, "run")
    assert lease.read(folder) == fresh
    _other_host(folder, age_s=61)
    with lease.held(folder, "run") as mine:
        assert lease.read(folder) == mine
    _other_host(folder, age_s=3, ttl_s=2)  # its own ttl counts, not this process's
    lease.check_free(folder, "run")


def _race(folder: str, launches: int) -> list:
    """``launches`` threads take the lease of ``folder`` at once: each one's Lease, or the
    InputError that refused it."""
    start = threading.Barrier(launches)
    outcomes = []

    def contend():
        start.wait()
        try:
            outcomes.append(lease.acquire(folder, "run"))
        except InputError as refused:
            outcomes.append(refused)

    threads = [threading.Thread(target=contend) for _ in range(launches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_of_two_launches_racing_for_a_free_folder_one_holds_it(folder):
    """Both may read the folder as free and both write: each checks after the settle time
    whose write came last, and only that one holds the lease."""
    outcomes = _race(folder, 2)
    held = [o for o in outcomes if isinstance(o, lease.Lease)]
    assert len(held) == 1 and lease.read(folder) == held[0]
    assert "is in use by another dotsim" in str(next(o for o in outcomes if o is not held[0]))
    lease.release(folder, held[0])


def test_a_free_local_folder_goes_to_exactly_one_of_many_launches_without_a_wait(
        tmp_path, monkeypatch):
    """Locally the lease file is created by a hard link, which fails when it exists: of
    four launches racing for a free folder exactly one holds it, the others are refused
    naming it, and nobody waits the settle time (each trial of a sweep takes a lease)."""

    def no_wait(seconds):
        raise AssertionError(f"waited {seconds} s to settle")

    monkeypatch.setattr(lease, "time", types.SimpleNamespace(sleep=no_wait))
    for attempt in range(10):
        folder = str(tmp_path / f"run{attempt}")
        outcomes = _race(folder, 4)
        held = [o for o in outcomes if isinstance(o, lease.Lease)]
        assert len(held) == 1 and lease.read(folder) == held[0], outcomes
        assert all(held[0].who() in str(o) for o in outcomes if o is not held[0])
        assert os.listdir(folder) == [lease.LEASE_FILE]  # no file of a loser left behind
        lease.release(folder, held[0])


def test_a_file_system_without_hard_links_takes_the_lease_by_the_settle(tmp_path,
                                                                       monkeypatch):
    """Some FUSE mounts make no hard links: the lease is then taken as on object storage,
    written, settled and read back, and released as usual."""

    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(lease.os, "link", no_links)
    monkeypatch.setattr(lease, "SETTLE_S", 0.01)
    folder = str(tmp_path / "run")
    with lease.held(folder, "run") as mine:
        assert lease.read(folder) == mine
        assert os.listdir(folder) == [lease.LEASE_FILE]
    assert lease.read(folder) is None


def test_a_holder_that_lost_its_lease_neither_renews_nor_deletes_it(folder, caplog):
    with lease.held(folder, "run") as mine:
        taker = _other_host(folder, age_s=0)  # as if this launch had stalled past its ttl
        assert lease.renew(folder, mine) is None
        assert "lost the lease" in caplog.text and "host another-host" in caplog.text
    assert lease.read(folder) == taker


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_ttl_setting_is_refused(tmp_path, monkeypatch, value):
    monkeypatch.setenv(lease.TTL_ENV, value)
    with pytest.raises(InputError, match=lease.TTL_ENV):
        lease.check_free(str(tmp_path / "run"), "run")


def test_a_sweep_folder_in_use_is_refused_by_plan_start_and_resume(tmp_path):
    """Another sweep holds the folder: a new sweep of that name is refused when planned
    and when started, and --resume is refused, each naming the holder; none needs Ray."""
    base = RunConfig(storage_path=str(tmp_path))
    folder = str(tmp_path / "s")
    planned = plan.SweepPlan(folder=folder, base=base, trials=[{}])
    with lease.held(folder, "sweep"):
        with pytest.raises(InputError, match=f"sweep folder {folder} is in use.*pid {os.getpid()}"):
            plan.plan_sweep(base, variants=["cosine"], seeds=1, name="s")
        with pytest.raises(InputError, match="is in use"):
            sweeps.run_sweep(planned)
        storage.write_json(storage.join(folder, SWEEP_FILE), planned.definition())
        with pytest.raises(InputError, match="is in use"):
            sweeps.resume(folder)
    assert not (tmp_path / "s" / "tune").exists()


# --- end to end: `dotsim train` twice ---------------------------------------------------


def _env(tmp_path: Path) -> dict:
    (tmp_path / "home").mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "disabled"}


def _train(options: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as stderr:
        return subprocess.Popen([str(BIN / "dotsim"), "train", *options], env=env,
                                start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=stderr)


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout_s: float = 300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if value := condition():
            return value
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"timed out; {log.read_text()[-3000:]}")


def _kill_with_its_ray(proc: subprocess.Popen) -> None:
    """SIGKILL a `dotsim train` and every process it started (its local Ray)."""
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for child in family:
        if child.is_running():
            child.kill()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_train_of_a_running_run_exits_2_at_once_and_the_first_finishes_alone(
        where, small_prepared, tmp_path, request):
    runs = (str(tmp_path / "runs") if where == "local"
            else f"{request.getfixturevalue('bucket')}/{uuid.uuid4().hex[:8]}")
    options = ["--data", str(small_prepared), "--storage-path", runs, *tiny_options(),
               "--epochs", "3", "--run-name", "same"]
    run = storage.join(runs, "same")
    env = _env(tmp_path)
    first = _train(options, env, tmp_path / "first.log")
    try:
        held = _wait_for(lambda: lease.read(run), first, tmp_path / "first.log")
        second = subprocess.run([str(BIN / "dotsim"), "train", *options], env=env,
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        if first.poll() is None:
            first.wait(timeout=600)
    assert second.returncode == 2 and second.stdout == ""
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"run folder {run} is in use by another dotsim" in lines[0]
    assert (f"host {socket.gethostname()}, pid {first.pid}, started {held.started}"
            in lines[0])
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    record = storage.read_json(storage.join(run, RECORD_FILE))
    assert [launch["epochs_done_before"] for launch in record["launches"]] == [0]
    assert record["launches"][0]["epochs_done_after"] == 3
    assert lease.read(run) is None


@pytest.mark.slow
@pytest.mark.ray
def test_a_run_whose_driver_was_killed_is_resumed_by_the_same_command(small_prepared,
                                                                     tmp_path):
    """SIGKILL of `dotsim train` (and its local Ray) leaves the lease behind; the same
    command takes it over at once (the pid is gone) and finishes the run."""
    options = ["--data", str(small_prepared), "--storage-path", str(tmp_path / "runs"),
               *tiny_options(), "--epochs", "3", "--run-name", "same", "--json"]
    run = str(tmp_path / "runs" / "same")
    env = _env(tmp_path)
    first = _train(options, env, tmp_path / "first.log")
    try:
        _wait_for(lambda: run_history(run), first, tmp_path / "first.log")
    finally:
        _kill_with_its_ray(first)
    assert lease.read(run).pid == first.pid
    resumed = subprocess.run([str(BIN / "dotsim"), "train", *options], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"taking over run folder {run} from host" in resumed.stderr
    assert "its process is gone" in resumed.stderr
    assert [h["epoch"] for h in json.loads(resumed.stdout)["history"]] == [1, 2, 3]
    record = storage.read_json(storage.join(run, RECORD_FILE))
    assert len(record["launches"]) == 2 and record["launches"][1]["epochs_done_before"] >= 1
    assert lease.read(run) is None
