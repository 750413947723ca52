"""The files of one checkpoint: what rank 0 writes into the folder it hands to
``ray.train.report`` and what a restarted or resumed run reads back, and how a run finds
its newest intact checkpoint when a newer one is damaged.

A checkpoint holds ``state.pt`` (a dict of tensors and plain values, read with
``torch.load(weights_only=True)``), ``history.json`` (every epoch's metrics so far, for
readers that need no weights) and, written last, ``manifest.json``: the size and sha256 of
every other file. A checkpoint whose files differ from its manifest is damaged (a node
that died while writing, a partial upload, a full disk): it is never read, and the run
goes on from the newest intact one instead. A checkpoint without a manifest was written
by an older dotsim; it counts as intact when its two files are there, so the runs and
sweeps it belongs to stay readable and resumable.

The run's checkpoints are those Ray Train registered, in the order it registered them
(``ray.train.Result.from_path(...).best_checkpoints``: dotsim sets no score attribute, so
Ray keeps them in registration order, the latest last). dotsim names its checkpoint
folders (``NAME_PREFIX``), so that a folder Ray uploaded but never registered (a Ctrl-C
between the two) is recognised and removed at the next launch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import ray.train
import torch

from workers.errors import Reported
from workers.metrics import HISTORY_FILE

CHECKPOINT_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
NAME_PREFIX = "dotsim-checkpoint-"  # the folders dotsim names, and so may remove
REQUIRED = (CHECKPOINT_FILE, HISTORY_FILE)  # what a checkpoint without a manifest must hold
CHUNK = 1 << 20  # bytes hashed per read


class DamagedCheckpoint(Reported):
    """A checkpoint whose files differ from its manifest (``problems``: one phrase per
    file), or a run none of whose checkpoints is intact."""

    def __init__(self, message: str, problems: list[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


# --- writing and reading one checkpoint ----------------------------------------------


def new_name(epochs_done: int) -> str:
    """A checkpoint folder name for ``ray.train.report(checkpoint_dir_name=...)``: dotsim's
    prefix, the epochs done, the time, and a random tail, so that an epoch trained again
    (after a fallback) never lands in the folder of the damaged checkpoint it replaces."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{NAME_PREFIX}e{epochs_done:04d}-{now}-{uuid.uuid4().hex[:6]}"


def write(directory: str | os.PathLike, payload: dict, history: list[dict]) -> None:
    """Write ``payload`` and ``history`` into ``directory``, each under a temporary name
    renamed when complete, then the manifest of every file there: never a half-written
    file under its real name, and a checkpoint cut short has no manifest that vouches
    for it."""
    directory = Path(directory)
    torch.save(payload, directory / (CHECKPOINT_FILE + ".tmp"))
    os.replace(directory / (CHECKPOINT_FILE + ".tmp"), directory / CHECKPOINT_FILE)
    _write_text(directory / HISTORY_FILE, json.dumps(history))
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    fs = pafs.LocalFileSystem()
    manifest = {name: {"size": (directory / name).stat().st_size,
                       "sha256": _sha256(fs, str(directory / name))} for name in files}
    _write_text(directory / MANIFEST_FILE, json.dumps({"files": manifest}, indent=1))


def read(directory: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(payload, history) of the checkpoint in ``directory``, tensors on the CPU. Raises
    ``DamagedCheckpoint`` before loading anything when its files differ from its manifest."""
    directory = Path(directory)
    problems = damage(pafs.LocalFileSystem(), str(directory))
    if problems:
        raise DamagedCheckpoint(f"checkpoint {directory.name} is damaged "
                                f"({'; '.join(problems)})", problems)
    payload = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    history = json.loads((directory / HISTORY_FILE).read_text())
    return payload, history


def damage(fs: pafs.FileSystem, path: str) -> list[str]:
    """What is wrong with the checkpoint folder at ``path`` on ``fs`` (local or remote), one
    phrase per file, e.g. "state.pt: 1.2 MB of 4.8 MB, checksum differs"; [] when intact.
    Reads every file the manifest names (remote ones are streamed, never stored)."""
    manifest_path = posixpath.join(path, MANIFEST_FILE)
    if not _exists(fs, manifest_path):  # an older dotsim's checkpoint
        return [f"{name} missing" for name in REQUIRED
                if not _exists(fs, posixpath.join(path, name))]
    try:
        with fs.open_input_stream(manifest_path) as stream:
            files = json.loads(stream.read())["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{MANIFEST_FILE} unreadable"]
    return [problem for name, expected in files.items()
            if (problem := _file_damage(fs, posixpath.join(path, name), name, expected))]


def _file_damage(fs: pafs.FileSystem, path: str, name: str, expected: dict) -> str | None:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return f"{name} missing"
    why = []
    if info.size != expected["size"]:
        why.append(f"{_size(info.size)} of {_size(expected['size'])}")
    if _checksum(fs, path, info) != expected["sha256"]:
        why.append("checksum differs")
    return f"{name}: {', '.join(why)}" if why else None


# sha256 by (file system, path, size, modification time): a checkpoint's files are written
# once, so a file whose size and time are unchanged is not read again by this process (a
# sweep's end and its report look at every run's newest checkpoint)
_CHECKSUMS: dict[tuple, str] = {}


def _checksum(fs: pafs.FileSystem, path: str, info: pafs.FileInfo) -> str:
    if info.mtime_ns is None:  # no modification time to tell a changed file: read it
        return _sha256(fs, path)
    key = (fs.type_name, path, info.size, info.mtime_ns)
    if key not in _CHECKSUMS:
        _CHECKSUMS[key] = _sha256(fs, path)
    return _CHECKSUMS[key]


# --- a run's checkpoints -------------------------------------------------------------


def registered(fs: pafs.FileSystem, run_path: str) -> list[ray.train.Checkpoint]:
    """The checkpoints Ray Train registered for the run folder ``run_path`` on ``fs``,
    oldest first ([] when it has none, or no folder)."""
    try:
        result = ray.train.Result.from_path(run_path, storage_filesystem=fs)
    except RuntimeError:  # no folder, or no checkpoint registered yet
        return []
    kept = [checkpoint for checkpoint, _ in result.best_checkpoints or []]
    assert not kept or kept[-1].path == result.checkpoint.path, "registration order changed"
    return kept


def newest_intact(checkpoints: list[ray.train.Checkpoint],
                  ) -> tuple[ray.train.Checkpoint | None, list[tuple[str, list[str]]]]:
    """(the newest intact checkpoint or None, [(name, problems)] of the damaged ones newer
    than it, newest first) of ``checkpoints`` given oldest first. Checked on their storage."""
    damaged = []
    for checkpoint in reversed(checkpoints):
        problems = damage(checkpoint.filesystem, checkpoint.path)
        if not problems:
            return checkpoint, damaged
        damaged.append((name_of(checkpoint), problems))
    return None, damaged


def read_newest_intact(latest: ray.train.Checkpoint, *,
                       say: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """(payload, history) of ``latest`` (what ``ray.train.get_checkpoint()`` gave a worker),
    or, when it is damaged, of the newest intact checkpoint Ray registered for the same run
    folder, after telling ``say`` which and why (``fallback_line``). Raises
    ``DamagedCheckpoint`` naming the damaged files when none is intact."""
    try:
        with latest.as_directory() as directory:
            return read(directory)
    except DamagedCheckpoint as err:
        damaged = [(name_of(latest), err.problems)]
    older = [c for c in registered(latest.filesystem, posixpath.dirname(latest.path))
             if c.path != latest.path]
    for checkpoint in reversed(older):
        try:
            with checkpoint.as_directory() as directory:
                payload, history = read(directory)
        except DamagedCheckpoint as err:
            damaged.append((name_of(checkpoint), err.problems))
            continue
        if say is not None:
            say(fallback_line(damaged, name_of(checkpoint), len(history)))
        return payload, history
    raise DamagedCheckpoint(none_intact_line(damaged))


def fallback_line(damaged: list[tuple[str, list[str]]], name: str, epochs: int) -> str:
    """"checkpoint X is damaged (state.pt: 1.2 MB of 4.8 MB, checksum differs); resuming
    from Y (after epoch 2)": what a resume or a restarted group says when it falls back."""
    return f"{_damaged_phrase(damaged)}; resuming from {name} (after epoch {epochs})"


def none_intact_line(damaged: list[tuple[str, list[str]]]) -> str:
    """What a run none of whose checkpoints is intact fails with."""
    return (f"{_damaged_phrase(damaged)}, and the run has no intact checkpoint to resume "
            "from: start it anew with another --run-name")


def _damaged_phrase(damaged: list[tuple[str, list[str]]]) -> str:
    if len(damaged) == 1:
        (name, problems), = damaged
        return f"checkpoint {name} is damaged ({'; '.join(problems)})"
    named = [f"{name} ({'; '.join(problems)})" for name, problems in damaged]
    return f"checkpoints {', '.join(named[:-1])} and {named[-1]} are damaged"


def remove_unregistered(fs: pafs.FileSystem, run_path: str,
                        kept: list[ray.train.Checkpoint]) -> list[str]:
    """Delete the dotsim checkpoint folders in ``run_path`` that are not among ``kept``
    (``registered``'s answer): uploads Ray never registered. Returns their names. Folders
    dotsim did not name are left alone, whatever they hold."""
    names = {name_of(checkpoint) for checkpoint in kept}
    entries = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    stale = [entry for entry in entries if entry.type == pafs.FileType.Directory
             and entry.base_name.startswith(NAME_PREFIX) and entry.base_name not in names]
    for entry in stale:
        fs.delete_dir(entry.path)
    return [entry.base_name for entry in stale]


def name_of(checkpoint: ray.train.Checkpoint) -> str:
    """The checkpoint's folder name in its run folder."""
    return posixpath.basename(checkpoint.path.rstrip("/"))


# --- small helpers -------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    path.with_name(path.name + ".tmp").write_text(text)
    os.replace(path.with_name(path.name + ".tmp"), path)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _size(n: int) -> str:
    """Bytes for a person: 812 B, 61.4 kB, 1.2 MB, 3.4 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
