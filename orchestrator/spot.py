"""``dotsim cluster watch-spot``: a spot instance's reclaim notice becomes a Ray drain.

AWS warns a spot instance two minutes before it takes it back, through the instance
metadata service (IMDS) on the instance itself: ``/latest/meta-data/spot/instance-action``
answers 404 until then, then ``{"action": "terminate"|"stop"|"hibernate", "time":
"2026-12-03T10:00:00Z"}``. The watcher runs on the node, polls that path with IMDSv2 (a
PUT gets a session token that every GET carries) and, on a notice, drains its own Ray
node with the reason "preemption" and the notice's time as the deadline: Ray places no
new work there, and Ray Train sees the preemption coming (docs/cluster.md).

It never stops on a metadata error (one line, then the next poll), drains once per notice
and keeps watching afterwards: a stopped or hibernated instance comes back, and a later
notice is drained again.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrator.cluster import RAY
from workers.errors import InputError

log = logging.getLogger("dotsim.spot")

# Where IMDS is, overridable as in the AWS SDKs (botocore reads the same variable).
ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_S = 21600  # the longest a token may live (6 h): one PUT per 6 h of polling
TOKEN_RENEW_S = 60  # a token is replaced this long before it expires, so no GET carries a dead one
REQUEST_TIMEOUT_S = 2.0  # IMDS is on the host and answers in milliseconds
POLL_INTERVAL_S = 5.0  # AWS's advice: check for a notice every 5 s
ACTIONS = ("terminate", "stop", "hibernate")

# `ray drain-node`'s reason for a node the cloud takes away; Ray records the node's death
# as AUTOSCALER_DRAIN_PREEMPTED, and Ray Train counts the restart as a preemption.
DRAIN_REASON = "DRAIN_NODE_REASON_PREEMPTION"
DRAIN_TIMEOUT_S = 60.0  # a drain request is one GCS call; a hung one must not eat the notice
NODE_ID = re.compile(r"[0-9a-fA-F]{56}")  # a Ray node id: 28 bytes in hex


class MetadataError(Exception):
    """IMDS gave no usable answer: unreachable, an error status, or a malformed notice."""


class DrainError(Exception):
    """The drain request did not go through (Ray not up yet, GCS unreachable, refused)."""


@dataclass(frozen=True)
class Notice:
    """One spot interruption notice: what AWS will do, and when (UTC)."""

    action: str
    time: datetime

    @classmethod
    def parse(cls, body: bytes) -> Notice:
        try:
            fields = json.loads(body)
            action, when = fields["action"], datetime.fromisoformat(fields["time"])
        except (ValueError, TypeError, KeyError) as err:  # also JSON that is not an object
            raise MetadataError(f"not a spot notice: {body[:80]!r}") from err
        if action not in ACTIONS:
            raise MetadataError(f"unknown spot action {action!r} in {body[:80]!r}")
        return cls(action, when if when.tzinfo else when.replace(tzinfo=UTC))

    def seconds_left(self, now: float) -> int:
        """Whole seconds from ``now`` (a UNIX time) to the notice's time; 0 once past."""
        return max(0, math.floor(self.time.timestamp() - now))

    def describe(self) -> str:
        return f"spot {self.action} at {self.time:%Y-%m-%dT%H:%M:%SZ}"


def metadata_endpoint(environ: Mapping[str, str] = os.environ) -> str:
    """IMDS's base URL: AWS_EC2_METADATA_SERVICE_ENDPOINT, else the link-local address."""
    endpoint = environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    if not endpoint.startswith(("http://", "https://")):
        raise InputError(f"{ENDPOINT_ENV}={endpoint!r} is not a URL; e.g. {DEFAULT_ENDPOINT}")
    return endpoint.rstrip("/")


class Metadata:
    """The two IMDSv2 requests the watcher makes, with the session token kept and renewed."""

    def __init__(self, endpoint: str, *, token_ttl_s: int = TOKEN_TTL_S,
                 timeout_s: float = REQUEST_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.endpoint = endpoint
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        # IMDS is link-local: a proxy from http_proxy could not reach it, so never use one
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def notice(self) -> Notice | None:
        """The pending notice, or None; MetadataError when IMDS does not answer usefully."""
        status, body = self._get(NOTICE_PATH)
        if status == 401:  # the token was refused before its time (IMDS restarted): a new one
            self._token = None
            status, body = self._get(NOTICE_PATH)
        if status == 404:
            return None
        if status != 200:
            raise MetadataError(f"GET {NOTICE_PATH}: HTTP {status}")
        return Notice.parse(body)

    def _get(self, path: str) -> tuple[int, bytes]:
        return self._request("GET", path, {"X-aws-ec2-metadata-token": self._session_token()})

    def _session_token(self) -> str:
        if self._token is None or self.clock() >= self._token_expires - TOKEN_RENEW_S:
            asked = self.clock()
            status, body = self._request(
                "PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl_s)})
            if status != 200 or not body.strip():
                raise MetadataError(f"PUT {TOKEN_PATH}: HTTP {status}")
            self._token = body.decode(errors="replace").strip()
            self._token_expires = asked + self.token_ttl_s
        return self._token

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body); MetadataError when there is no HTTP answer at all."""
        request = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:  # an answer with an error status (404: no notice)
            err.close()  # its response holds the connection: every 404 poll would leak one
            return err.code, b""
        # OSError: refused, unreachable, timed out, reset; HTTPException: not HTTP, cut short
        except (OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or err
            raise MetadataError(f"{method} {self.endpoint}{path}: "
                                f"{type(reason).__name__}: {reason}") from err


class Watcher:
    """Polls for a notice and drains once per notice; a metadata error is logged (once
    while it repeats, so a node without IMDS does not fill its log every 5 s) and the next
    poll goes on."""

    def __init__(self, metadata: Metadata, drain: Callable[[Notice, int], None], *,
                 now: Callable[[], float] = time.time):
        self.metadata = metadata
        self.drain = drain  # drain(notice, seconds left): raises DrainError on failure
        self.now = now  # wall clock: the notice's time is a UTC date
        self.drained: Notice | None = None
        self._error: str | None = None

    def poll(self) -> None:
        try:
            notice = self.metadata.notice()
        except MetadataError as err:
            if str(err) != self._error:
                say(f"instance metadata: {err}; polling on")
            self._error = str(err)
            return
        if self._error is not None:
            say("instance metadata answers again")
            self._error = None
        if notice is not None and notice != self.drained:
            self._drain(notice)

    def _drain(self, notice: Notice) -> None:
        seconds = notice.seconds_left(self.now())
        try:
            self.drain(notice, seconds)
        except DrainError as err:
            say(f"{notice.describe()}: drain failed ({err}); trying again at the next poll")
            return
        self.drained = notice
        say(f"{notice.describe()}: node drained for preemption, deadline in {seconds} s")

    def run(self, interval_s: float, stop: threading.Event | None = None) -> None:
        """Poll every ``interval_s`` seconds until ``stop`` is set (or forever)."""
        stop = stop or threading.Event()
        say(f"watching {self.metadata.endpoint}{NOTICE_PATH} every {interval_s:g} s")
        while not stop.is_set():
            self.poll()
            stop.wait(interval_s)


def say(text: str) -> None:
    """A line of the watcher's log, with the UTC time: it runs for days in the background."""
    log.info(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {text}")


# --- the drain, through Ray ------------------------------------------------------------


def drain_command(node_id: str, seconds: int, message: str, address: str | None) -> list[str]:
    """`ray drain-node` for a node the cloud reclaims in ``seconds``.

    Ray 2.60 has no public Python API to drain a node: its own `ray drain-node` CLI calls
    `ray._raylet.GcsClient.drain_node`, a private module. The CLI is the interface Ray
    ships for this (hidden from `ray --help`, and documented as a developer command), so
    dotsim runs it, as it runs `ray up`, rather than import Ray's private client.
    """
    return [*RAY, "drain-node", *(["--address", address] if address else []),
            "--node-id", node_id, "--reason", DRAIN_REASON, "--reason-message", message,
            "--deadline-remaining-seconds", str(seconds)]


def ray_drain(node_id: str | None, address: str | None) -> Callable[[Notice, int], None]:
    """The drain step: `ray drain-node` on ``node_id``, or on this machine's node, looked up
    when the notice comes (Ray on the node may have restarted since the watcher started,
    with a new id)."""

    def drain(notice: Notice, seconds: int) -> None:
        node = node_id or own_node_id(address)
        try:
            done = subprocess.run(drain_command(node, seconds, notice.describe(), address),
                                  capture_output=True, text=True, timeout=DRAIN_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise DrainError(f"`ray drain-node` gave no answer in {DRAIN_TIMEOUT_S:g} s") from err
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
            raise DrainError(f"`ray drain-node`: {lines[-1]}")

    return drain


def own_node_id(address: str | None) -> str:
    """This machine's Ray node: a driver attaches to the raylet of its own host, so its
    runtime context names that node (where one host runs several nodes, Ray picks the
    head: give --node-id there). Connected for the look-up only."""
    import ray

    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level=logging.WARNING)
        try:
            return ray.get_runtime_context().get_node_id()
        finally:
            ray.shutdown()
    # ray.init fails in more ways than one (ConnectionError, RuntimeError, TimeoutError,
    # ValueError), and the watcher must outlive each: the next poll tries again
    except Exception as err:
        first = str(err).strip().splitlines()
        raise DrainError(f"no Ray node found on this machine: {type(err).__name__}"
                         f"{': ' + first[0] if first else ''}") from err


def check_node_id(node_id: str) -> None:
    if not NODE_ID.fullmatch(node_id):
        raise InputError(f"--node-id {node_id!r} is not a Ray node id (56 hex digits, as "
                         "`ray list nodes` shows them)")


def watch(*, node_id: str | None, address: str | None, interval_s: float) -> None:
    """Watch for spot notices until stopped (Ctrl-C, SIGTERM), draining on each."""
    if node_id is not None:
        check_node_id(node_id)
    metadata = Metadata(metadata_endpoint())
    Watcher(metadata, ray_drain(node_id, address)).run(interval_s)
