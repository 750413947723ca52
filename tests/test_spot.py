"""`dotsim cluster watch-spot`: a spot interruption notice becomes a Ray drain.

The instance metadata service is played by a small IMDSv2 server on 127.0.0.1 (a PUT for
a session token, 401 for a GET without one, 404 until the test sets a notice, and modes
that answer 500, garbage, or hang up). The poller is tested against it without Ray; one
slow test runs the real command against a real two-node Ray cluster and sees the worker
node die of a preemption drain.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from imds import FakeIMDS

from orchestrator import spot
from orchestrator.cli import cli, main
from workers.errors import InputError

BIN = Path(sys.executable).parent
NOTICE_TIME = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
NODE = "ab" * 28  # a well-formed Ray node id


@pytest.fixture
def imds():
    server = FakeIMDS()
    yield server
    server.close()


class Drains:
    """The drain step, recorded: (notice, seconds left) per call; ``fail`` calls raise."""

    def __init__(self, fail: int = 0):
        self.calls: list[tuple[spot.Notice, int]] = []
        self.fail = fail

    def __call__(self, notice, seconds):
        if self.fail:
            self.fail -= 1
            raise spot.DrainError("GCS unreachable")
        self.calls.append((notice, seconds))


def watcher(url: str, drains: Drains, **metadata) -> spot.Watcher:
    """A watcher whose wall clock stands 120 s before NOTICE_TIME."""
    return spot.Watcher(spot.Metadata(url, **metadata), drains,
                        now=lambda: NOTICE_TIME.timestamp() - 120)


# --- the fake is strict, as IMDSv2 is -------------------------------------------------


def test_the_fake_refuses_a_get_without_a_token(imds):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(imds.url + spot.NOTICE_PATH, timeout=5)
    refused.value.close()
    assert refused.value.code == 401


# --- polling ----------------------------------------------------------------------------


def test_no_notice_no_drain_and_one_token(imds, said):
    drains = Drains()
    w = watcher(imds.url, drains)
    for _ in range(3):
        w.poll()
    assert drains.calls == [] and said == []
    assert imds.gets == 3 and imds.token_ttls == [spot.TOKEN_TTL_S]  # one token for all


def test_a_notice_is_drained_once_with_its_deadline(imds, said):
    drains = Drains()
    w = watcher(imds.url, drains)
    w.poll()
    imds.set_notice("terminate", NOTICE_TIME)
    for _ in range(3):  # AWS repeats the notice at every look until the end
        w.poll()
    assert drains.calls == [(spot.Notice("terminate", NOTICE_TIME), 120)]
    assert len(said) == 1 and "spot terminate at 2026-12-03T10:00:00Z" in said[0]
    assert "deadline in 120 s" in said[0]
    # a stopped instance comes back; its next notice is drained again
    imds.notice = None
    w.poll()
    imds.set_notice("stop", NOTICE_TIME + timedelta(seconds=30))
    w.poll()
    w.poll()
    assert [(n.action, s) for n, s in drains.calls] == [("terminate", 120), ("stop", 150)]


def test_a_notice_past_its_time_drains_with_no_time_left(imds):
    drains = Drains()
    imds.set_notice("hibernate", NOTICE_TIME)
    spot.Watcher(spot.Metadata(imds.url), drains, now=lambda: NOTICE_TIME.timestamp() + 5).poll()
    assert drains.calls == [(spot.Notice("hibernate", NOTICE_TIME), 0)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens there once closed


@pytest.mark.parametrize("failure", ["500", "garbage", "hang-up", "not-a-notice",
                                     "unknown-action", "refused", "timeout"])
def test_a_metadata_error_is_logged_once_and_polling_goes_on(imds, said, failure):
    drains = Drains()
    url = imds.url
    listener = None
    if failure in ("500", "garbage", "hang-up"):
        imds.mode = failure
    elif failure == "not-a-notice":
        imds.notice = ["terminate"]
    elif failure == "unknown-action":
        imds.notice = {"action": "explode", "time": "2026-12-03T10:00:00Z"}
    elif failure == "refused":
        url = f"http://127.0.0.1:{closed_port()}"
    else:  # connects (the kernel accepts into the backlog), never answers
        listener = socket.create_server(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    w = watcher(url, drains, timeout_s=0.5)
    w.poll()
    w.poll()  # the same error again: not logged again
    assert drains.calls == []
    assert len(said) == 1 and said[0].split(" ", 1)[1].startswith("instance metadata: "), said
    # the same watcher, once IMDS answers properly, drains
    imds.mode = "ok"
    imds.set_notice("terminate", NOTICE_TIME)
    w.metadata.endpoint = imds.url
    w.poll()
    assert drains.calls == [(spot.Notice("terminate", NOTICE_TIME), 120)]
    assert "answers again" in said[1] and "node drained" in said[2]
    if listener is not None:
        listener.close()


def test_the_token_is_renewed_before_it_expires(imds):
    clock = [0.0]
    w = watcher(imds.url, Drains(), token_ttl_s=600, clock=lambda: clock[0])
    w.poll()
    clock[0] = 600 - spot.TOKEN_RENEW_S - 1  # still well inside its life
    w.poll()
    assert imds.token_ttls == [600]
    clock[0] = 600 - spot.TOKEN_RENEW_S  # close to its end: a new one first
    w.poll()
    assert imds.token_ttls == [600, 600] and imds.gets == 3


def test_a_refused_token_is_replaced_at_once(imds, said):
    drains = Drains()
    w = watcher(imds.url, drains)
    w.poll()
    imds.tokens.clear()  # IMDS forgot its tokens (the instance was stopped and started)
    imds.set_notice("terminate", NOTICE_TIME)
    w.poll()
    assert len(imds.token_ttls) == 2 and len(drains.calls) == 1
    assert not [line for line in said if "instance metadata" in line]


def test_a_failed_drain_is_tried_again_at_the_next_poll(imds, said):
    drains = Drains(fail=1)
    w = watcher(imds.url, drains)
    imds.set_notice("terminate", NOTICE_TIME)
    w.poll()
    assert drains.calls == [] and "drain failed (GCS unreachable)" in said[0]
    w.poll()
    w.poll()
    assert len(drains.calls) == 1 and "node drained" in said[1]


def test_run_polls_until_stopped(imds):
    stop = threading.Event()
    drains = Drains()

    def drain(notice, seconds):
        drains(notice, seconds)
        stop.set()

    imds.set_notice("terminate", NOTICE_TIME)
    thread = threading.Thread(target=watcher(imds.url, drain).run, args=(0.01, stop))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and len(drains.calls) == 1


# --- configuration ----------------------------------------------------------------------


def test_the_endpoint_is_read_as_the_aws_sdks_read_it():
    assert spot.metadata_endpoint({}) == "http://169.254.169.254"
    assert spot.metadata_endpoint(
        {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://[fd00:ec2::254]/"}) == \
        "http://[fd00:ec2::254]"
    with pytest.raises(InputError, match="AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        spot.metadata_endpoint({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "169.254.169.254"})


# Ray's CLI module imports Ray Serve, whose pydantic models warn on import
@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")
def test_the_drain_command_is_what_rays_drain_node_accepts():
    """Parsed by Ray's own `ray drain-node` command, as the subprocess will parse it."""
    from ray.scripts.scripts import drain_node

    argv = spot.drain_command(NODE, 117, "spot terminate at 2026-12-03T10:00:00Z",
                              "10.0.0.1:6379")
    assert argv[:4] == [sys.executable, "-m", "ray.scripts.scripts", "drain-node"]
    params = drain_node.make_context("drain-node", argv[4:]).params
    assert params == {"address": "10.0.0.1:6379", "node_id": NODE,
                      "reason": "DRAIN_NODE_REASON_PREEMPTION",
                      "reason_message": "spot terminate at 2026-12-03T10:00:00Z",
                      "deadline_remaining_seconds": 117}
    assert "--address" not in spot.drain_command(NODE, 1, "m", None)  # Ray finds its own


@pytest.mark.parametrize("args,words", [
    (["--node-id", "node-1"], "not a Ray node id"),
    (["--interval", "0"], "--interval"),
])
def test_bad_options_exit_2_with_one_line(args, words, monkeypatch, capsys):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(SystemExit) as done:
        main(["cluster", "watch-spot", *args])
    out, err = capsys.readouterr()
    assert done.value.code == 2 and out == ""
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_the_cli_interval_default_is_awss_advice():
    option = next(p for p in cli.commands["cluster"].commands["watch-spot"].params
                  if p.name == "interval")
    assert option.default == spot.POLL_INTERVAL_S == 5.0


# --- a real drain --------------------------------------------------------------------------

CLUSTER = r"""
import json, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
    "dashboard_port": int(sys.argv[1])})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                  "worker": worker.node_id}), flush=True)
sys.stdin.readline()  # until the test is done
cluster.shutdown()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_nodes(tmp_path):
    """A head and a worker node on this machine (ray.cluster_utils.Cluster in a child
    process, isolated HOME, token auth off), with the dashboard for the state API."""
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    owner = subprocess.Popen([sys.executable, "-c", CLUSTER, str(dashboard)], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line, "the cluster did not start"
        yield {**json.loads(line), "env": env, "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        owner.stdin.close()  # the child shuts its cluster down
        owner.wait(timeout=120)
        owner.stdout.close()


def node_state(dashboard: str, node_id: str):
    from ray.util.state import get_node

    return get_node(node_id, address=dashboard)


@pytest.mark.ray
@pytest.mark.slow
def test_a_notice_drains_the_worker_node_for_preemption(two_nodes, imds, tmp_path):
    log = tmp_path / "watch-spot.log"
    with log.open("w") as out:
        watch = subprocess.Popen(
            [str(BIN / "dotsim"), "cluster", "watch-spot", "--node-id", two_nodes["worker"],
             "--address", two_nodes["address"], "--interval", "0.2"],
            env={**two_nodes["env"], "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url},
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: imds.gets >= 3, "the watcher's first polls")
        assert node_state(two_nodes["dashboard"], two_nodes["worker"]).state == "ALIVE"
        imds.set_notice("terminate", datetime.now(UTC) + timedelta(seconds=90))
        # idle and draining, the worker's raylet leaves at once: its death names the drain
        worker = wait_for(lambda: dead(two_nodes["dashboard"], two_nodes["worker"]),
                          "the worker node to be drained")
        assert worker.state_message.startswith("Terminated due to preemption: spot terminate at")
        assert node_state(two_nodes["dashboard"], two_nodes["head"]).state == "ALIVE"
        gets = imds.gets
        wait_for(lambda: imds.gets >= gets + 3, "polls after the drain")
        assert watch.poll() is None  # still watching
    finally:
        watch.terminate()
        watch.wait(timeout=30)
    lines = log.read_text().splitlines()
    (drained,) = [line for line in lines if "node drained for preemption" in line]
    assert 0 < int(drained.split("deadline in ")[1].split()[0]) <= 90, lines

    # without --node-id, the watcher finds this machine's node as a driver would
    found = subprocess.run(
        [sys.executable, "-c", "import sys; from orchestrator.spot import own_node_id; "
                               "print(own_node_id(sys.argv[1]))", two_nodes["address"]],
        env=two_nodes["env"], capture_output=True, text=True, timeout=120)
    assert found.stdout.split()[-1] == two_nodes["head"], found.stderr[-2000:]


def dead(dashboard: str, node_id: str):
    state = node_state(dashboard, node_id)
    return state if state.state == "DEAD" else None


def wait_for(check, what: str, limit_s: float = 60):
    """Poll ``check`` until it gives something true; fail naming ``what`` after limit_s."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if result := check():
            return result
        time.sleep(0.2)
    pytest.fail(f"no sign of {what} within {limit_s:g} s")
