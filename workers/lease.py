"""One writer per run or sweep folder: a lease file, ``dotsim_lease.json``, in the folder.

A launch takes the lease before it writes anything there, a background thread renews it
every ttl/3 while the launch lives, and the launch deletes it when it ends (also on an
error or Ctrl-C). A second launch of the same folder meanwhile is refused at once with one
line naming the holder's host, pid and start time. A holder that died without deleting it
(a killed driver, a preempted head) loses it:

- at once when it ran on this host and its pid is gone (``os.kill(pid, 0)``);
- otherwise once ``renewed_at + ttl_s`` has passed by this host's clock.

The lease is read and written through ``workers.storage``, so a local folder, an EFS mount
and an ``s3://`` bucket take one code path. Object stores give ``pyarrow.fs`` no
compare-and-swap, so taking the lease is: read it; if free or stale, write our own; wait
``SETTLE_S``; read it again and hold it only if it is still ours (the last writer wins,
the others refuse). A free folder on a local or mounted file system is taken without the
wait: the lease is created there with a hard link, which fails when the file exists, so
of two launches exactly one creates it (a mount without hard links settles as above).

What this guarantees: two launches of one folder never both train, as long as (1) every
write to the storage completes within ``SETTLE_S`` of the read before it, (2) reads see
the latest completed write (local files, S3 and GCS do), and (3) the hosts' clocks agree
to well within the ttl (NTP). What it does not: a holder that stalls for longer than the
ttl (no renewal gets through) can be taken over while it still runs; it then logs an error
and stops renewing, but its run goes on. Nor does it fence Ray Train's own writes: it keeps
dotsim launches apart, not other programs writing into the folder. Two hosts of one
hostname, or a pid reused on this host, make a dead holder look alive until its lease
expires by time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pyarrow.fs as pafs

from workers import storage
from workers.clock import utc_iso, utc_now
from workers.errors import InputError

log = logging.getLogger("dotsim")

LEASE_FILE = "dotsim_lease.json"
TTL_ENV = "DOTSIM_LEASE_TTL_S"
# 60 s: a folder whose holder died on another host (a preempted head) is free a minute
# later, less than a new node takes to join; renewal every 20 s is 3 tiny writes a minute,
# and two renewals may fail (a storage hiccup) before anyone may take over.
DEFAULT_TTL_S = 60.0
# How long a new holder waits before it checks that its write was the last: longer than
# one small write to any storage dotsim uses takes (local files: microseconds; S3: tens
# of milliseconds, rarely more than a few hundred).
SETTLE_S = 1.0


@dataclasses.dataclass(frozen=True)
class Lease:
    """The lease file's contents. Times are ISO 8601 in UTC."""

    holder: str  # a uuid per launch: two launches in one process are two holders
    host: str
    pid: int
    started: str
    renewed_at: str
    ttl_s: float

    @classmethod
    def new(cls, ttl: float) -> Lease:
        now = utc_now()
        return cls(holder=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                   started=now.isoformat(timespec="seconds"),
                   renewed_at=now.isoformat(timespec="milliseconds"), ttl_s=ttl)

    def renewed(self) -> Lease:
        return dataclasses.replace(self, renewed_at=utc_iso(timespec="milliseconds"))

    def expires(self) -> datetime.datetime:
        return (datetime.datetime.fromisoformat(self.renewed_at)
                + datetime.timedelta(seconds=self.ttl_s))

    def why_stale(self) -> str | None:
        """Why another launch may take this lease over, or None while its holder lives."""
        if self.host == socket.gethostname() and not _alive(self.pid):
            return "its process is gone"
        if utc_now() > self.expires():
            return f"not renewed since {self.renewed_at}"
        return None

    def who(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def ttl_s() -> float:
    """The ttl a new lease gets: ``DOTSIM_LEASE_TTL_S`` or ``DEFAULT_TTL_S``. A reader
    uses the ttl written in the lease, so holders with other settings still agree."""
    raw = os.environ.get(TTL_ENV)
    if raw is None:
        return DEFAULT_TTL_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise InputError(f"{TTL_ENV} must be a number of seconds above 0; got {raw!r}")
    return value


def lease_path(folder: str) -> str:
    return storage.join(folder, LEASE_FILE)


def read(folder: str) -> Lease | None:
    """The lease of ``folder``, or None when nobody holds it."""
    try:
        data = storage.read_json(lease_path(folder))
    except FileNotFoundError:
        return None
    return Lease(**{field.name: data[field.name] for field in dataclasses.fields(Lease)})


def check_free(folder: str, kind: str) -> None:
    """Refuse (``InputError``) when another live launch holds ``folder``: the up-front
    check, before Ray starts. ``kind`` names the folder in the message ("run", "sweep")."""
    ttl_s()  # a bad setting is refused up front too
    current = read(folder)
    if current is not None and current.why_stale() is None:
        raise InputError(_in_use(folder, kind, current))


def _in_use(folder: str, kind: str, holder: Lease) -> str:
    return (f"{kind} folder {folder} is in use by another dotsim ({holder.who()}); wait for "
            "it to end or stop it: if it died, the same command takes over by "
            f"{holder.expires().isoformat(timespec='seconds')}")


def acquire(folder: str, kind: str) -> Lease:
    """Take the lease of ``folder`` (see the module's docstring), or raise ``InputError``
    naming its live holder."""
    current = read(folder)
    if current is not None:
        stale = current.why_stale()
        if stale is None:
            raise InputError(_in_use(folder, kind, current))
        log.info(f"taking over {kind} folder {folder} from {current.who()}: {stale}")
    mine = Lease.new(ttl_s())
    fs, path = storage.filesystem(lease_path(folder))
    if current is None and isinstance(fs, pafs.LocalFileSystem):
        created = _create_new(path, mine)
        if created:
            return mine
        if created is False:  # another launch created it first
            _refused(folder, kind, read(folder))
        # None: a file system without hard links (some FUSE mounts): settle as below
    storage.write_json(lease_path(folder), dataclasses.asdict(mine))
    try:
        # a launch that read the lease as free at the same moment has written its own by
        # now; whichever write came last holds it
        time.sleep(SETTLE_S)
        last = read(folder)
    except BaseException:  # Ctrl-C while settling: leave no lease of ours behind
        release(folder, mine)
        raise
    if last is None or last.holder != mine.holder:
        _refused(folder, kind, last)
    return mine


def _create_new(path: str, lease: Lease) -> bool | None:
    """Create the lease file at ``path`` whole, or return False when it exists (None when
    this file system makes no hard links): written to a file of our own first, then
    linked to its name (``link`` never replaces a file, and a reader never sees a
    half-written lease)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    own = f"{path}.{lease.holder}"
    with open(own, "w") as out:
        out.write(json.dumps(dataclasses.asdict(lease), indent=2) + "\n")
    try:
        os.link(own, path)
    except FileExistsError:
        return False
    except OSError:  # EPERM, ENOTSUP, ...: no hard links here
        return None
    finally:
        os.unlink(own)
    return True


def _refused(folder: str, kind: str, holder: Lease | None) -> NoReturn:
    if holder is None:  # the winner of a race has come and gone already
        raise InputError(f"{kind} folder {folder} was taken and released by another dotsim "
                         "at the same moment; run the command again")
    raise InputError(_in_use(folder, kind, holder))


def renew(folder: str, lease: Lease) -> Lease | None:
    """Write ``lease`` again with a new ``renewed_at``; None (and an error logged) when
    another launch has taken the folder over meanwhile, which only a stalled holder sees."""
    current = read(folder)
    if current is None or current.holder != lease.holder:
        taker = f" by {current.who()}" if current else ""
        log.error(f"lost the lease of {folder}{taker}: this launch stalled for longer than "
                  f"its ttl ({lease.ttl_s:g} s), and two launches may now write there")
        return None
    renewed = lease.renewed()
    storage.write_json(lease_path(folder), dataclasses.asdict(renewed))
    return renewed


def release(folder: str, lease: Lease) -> None:
    """Delete the lease if it is still ours. A storage error here is logged, not raised:
    a lease left behind delays the next launch by its ttl, and must not turn a run that
    ended into a failure (or hide the error it ended with)."""
    try:
        current = read(folder)
        if current is not None and current.holder == lease.holder:
            fs, path = storage.filesystem(lease_path(folder))
            fs.delete_file(path)
    except OSError as err:
        log.warning(f"could not release the lease of {folder} ({err}); the next launch "
                    f"there waits until it expires ({lease.ttl_s:g} s)")


def _keep_renewed(folder: str, lease: Lease, stop: threading.Event) -> None:
    while not stop.wait(lease.ttl_s / 3):
        try:
            renewed = renew(folder, lease)
        except OSError as err:  # try again next time; two misses still leave a third
            log.warning(f"could not renew the lease of {folder} ({err})")
            continue
        if renewed is None:
            return
        lease = renewed


@contextlib.contextmanager
def held(folder: str, kind: str) -> Iterator[Lease]:
    """Hold the lease of ``folder`` while inside: taken on entry (``InputError`` when
    another live launch holds it), renewed every ttl/3, released on exit however it
    happens."""
    lease = acquire(folder, kind)
    stop = threading.Event()
    renewer = threading.Thread(target=_keep_renewed, args=(folder, lease, stop),
                               name="dotsim-lease", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        release(folder, lease)
