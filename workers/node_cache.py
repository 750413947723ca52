"""This node's copy of prepared data, as memory-mapped NumPy arrays.

The first worker on a node turns the shards into NumPy arrays in the node's cache
(``$DOTSIM_NODE_CACHE``, else the temp folder), once per data set, while the other workers
wait on a file lock; every worker then memory-maps them (``workers.data``). The node holds
the features once, however many workers it runs, and a restarted worker group reads only
``meta.json`` from shared storage again.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers import storage
from workers.constants import FEATURES, SPLITS
from workers.errors import InputError
from workers.prepared import PreparedDataError, check_prepared, data_fingerprint, read_meta

NODE_CACHE_KEEP = 2  # unused copies a node keeps besides those in use ($DOTSIM_NODE_CACHE_KEEP)
_IN_USE: dict[Path, object] = {}  # copies this process has mapped -> their locks, held shared


@atexit.register
def _release_copies() -> None:
    """Close the held locks at exit (the kernel would too; this keeps Python quiet)."""
    for lock in _IN_USE.values():
        lock.close()


def node_cache() -> Path:
    """Where this node keeps its NumPy copies of prepared data: $DOTSIM_NODE_CACHE, else
    this user's folder in the temp folder (node-local disk, never shared storage)."""
    return Path(os.environ.get("DOTSIM_NODE_CACHE")
                or Path(tempfile.gettempdir()) / f"dotsim-arrays-{os.getuid()}")


def copies_to_keep() -> int:
    """$DOTSIM_NODE_CACHE_KEEP (default NODE_CACHE_KEEP): unused copies a node keeps."""
    text = os.environ.get("DOTSIM_NODE_CACHE_KEEP", str(NODE_CACHE_KEEP))
    if not text.strip().isdigit():
        raise InputError(f"DOTSIM_NODE_CACHE_KEEP={text!r}: write a whole number of copies "
                         f"to keep, 0 or more (default {NODE_CACHE_KEEP})")
    return int(text)


def _own_cache() -> Path:
    """The node cache, made readable by this user only; refused when someone else owns it
    (arrays placed there by another user would be trained on)."""
    folder = node_cache()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise InputError(f"{folder}, the node's cache of prepared data, belongs to another "
                         "user; set DOTSIM_NODE_CACHE to a folder of yours")
    return folder


def node_copy(location: str | os.PathLike) -> Path:
    """This node's copy of the prepared data as NumPy arrays, made on first use: the
    first process converts the shards while the others wait on its lock, and the copy is
    renamed into place complete, so a half-made copy is never read.

    Two locks per copy: ``.make``, held exclusively while the copy is made, and ``.lock``,
    held shared by every process that uses the copy until it exits, so a copy in use is
    never removed. Every ``prepare`` makes new data, and so a new copy: making one removes
    the copies no process uses beyond the ``$DOTSIM_NODE_CACHE_KEEP`` (default 2) most
    recently used.
    """
    location = storage.resolve(location)
    read_meta(location)  # a clear error for a folder that is not prepared data
    copies_to_keep()  # a bad setting fails every attempt, not only the one that makes a copy
    folder = _own_cache() / data_fingerprint(location)
    if folder in _IN_USE:
        return folder
    while True:
        if not (folder / "meta.json").is_file():
            with _locked(folder.with_suffix(".make")):
                if not (folder / "meta.json").is_file():
                    _make_copy(location, folder)
                    _remove_unused_copies(besides=folder)
        use = open(folder.with_suffix(".lock"), "a")  # noqa: SIM115 (held until exit)
        fcntl.flock(use, fcntl.LOCK_SH)
        if (folder / "meta.json").is_file():  # not removed since it was seen
            break
        use.close()
    os.utime(use.name)  # the copy's last use
    _IN_USE[folder] = use
    return folder


@contextlib.contextmanager
def _locked(path: Path, flags: int = fcntl.LOCK_EX):
    """``flags`` (an flock operation) on ``path`` for the block; the lock goes with the
    file when the block ends, an exception included."""
    with open(path, "a") as handle:
        fcntl.flock(handle, flags)
        yield


def _make_copy(location: str, folder: Path) -> None:
    for stale in folder.parent.glob(f"{folder.name}.partial-*"):  # a killed attempt
        shutil.rmtree(stale, ignore_errors=True)
    meta = check_prepared(location)
    tmp = folder.with_name(f"{folder.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        _write_arrays(location, meta, tmp)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        # Arrow's allocator keeps the shards' freed buffers for reuse (hundreds of MB at
        # Speech Commands size); this process, a training worker, reads no more Parquet.
        pa.default_memory_pool().release_unused()


def _remove_unused_copies(besides: Path) -> None:
    """Remove the copies that no process uses or makes, but the most recently used few.
    Never waits: a lock another process holds means the copy is busy."""
    keep = copies_to_keep()
    locks = [p for p in besides.parent.glob("*.lock") if p.with_suffix("") != besides]
    for lock_path in sorted(locks, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        copy = lock_path.with_suffix("")
        try:
            with (_locked(copy.with_suffix(".make"), fcntl.LOCK_EX | fcntl.LOCK_NB),
                  _locked(lock_path, fcntl.LOCK_EX | fcntl.LOCK_NB)):
                if copy.is_dir() and keep > 0:
                    keep -= 1
                    continue
                for path in [copy, *copy.parent.glob(f"{copy.name}.partial-*")]:
                    shutil.rmtree(path, ignore_errors=True)
        except BlockingIOError:
            continue  # in use, or being made (lock files stay: a few bytes each)


def _write_arrays(location: str, meta: dict, out: Path) -> None:
    """Each split's features into one (N, frames, n_mels) .npy per name, shard by shard
    (memory: one shard at a time); labels, speakers and clips beside them."""
    out.mkdir(parents=True)
    fs, root = storage.filesystem(location)
    shape = (meta["frames"], meta["n_mels"])
    for split in SPLITS:
        n = meta["counts"][split]
        arrays = {name: _new_array(out / f"{split}-{name}.npy", (n, *shape))
                  for name in FEATURES}
        labels, speakers, clips, at = [], [], [], 0
        for shard in meta["shards"][split]:
            table = pq.read_table(f"{root}/{shard}", filesystem=fs)
            rows = table.num_rows
            for name in FEATURES:
                values = table.column(name).combine_chunks().flatten().to_numpy()
                arrays[name][at:at + rows] = values.reshape(rows, *shape)
            labels += table.column("label").to_pylist()
            speakers += table.column("speaker").to_pylist()
            clips += table.column("clip").to_pylist()
            at += rows
        for array in arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(meta["labels"])):
            raise PreparedDataError(f"{location}: split {split} has labels outside "
                                    "meta.json's list")
        np.save(out / f"{split}-labels.npy", labels)
        (out / f"{split}-ids.json").write_text(json.dumps({"speakers": speakers,
                                                           "clips": clips}))
    (out / "meta.json").write_text(json.dumps(meta))  # last: the copy is complete


def _new_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A .npy file of zeros to fill in place (an empty one is written at once: a file
    of no rows cannot be mapped)."""
    if shape[0] == 0:
        np.save(path, np.zeros(shape, np.float32))
        return np.zeros(shape, np.float32)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
