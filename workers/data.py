"""Prepared data: Parquet shards per split plus ``meta.json``, readable with pyarrow alone,
in a local folder or at any URI ``pyarrow.fs`` understands (``s3://bucket/prefix``).

Layout of a prepared folder::

    meta.json                      sample rate, feature settings, labels, counts, shards
    train-00000.parquet ...        columns: label (int32), speaker, clip (string),
    validation-00000.parquet ...   speech, formant, residual (fixed-size float32 lists of
    test-00000.parquet ...         frames * n_mels values, time-major)

A local folder is written under a temporary name and renamed into place after
``meta.json``; at a URI the shards are uploaded first and ``meta.json`` last. Either way
an interrupted prepare never leaves a folder that ``check_prepared`` accepts.

Training reads a node's copy: the first worker on a node turns the shards into NumPy
arrays in the node's cache (``$DOTSIM_NODE_CACHE``, else the temp folder), once per data
set, while the other workers wait on a file lock; every worker then memory-maps them. The
node holds the features once, however many workers it runs, and a restarted worker group
reads only ``meta.json`` from shared storage again.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from workers import storage
from workers.errors import InputError

SPLITS = ("train", "validation", "test")
FEATURES = ("speech", "formant", "residual")
FORMAT_VERSION = 1


@dataclass
class Split:
    """One split: features (N, frames, n_mels) float32 for each name in FEATURES, labels
    (N,) int64, and each clip's speaker and id.

    The features may be memory-mapped from the node's copy (shared by every worker of the
    node), and may cover more clips than the split: ``rows`` then says which (a subset's
    view, see ``subset``). ``take(rows)`` gives the features of rows of the split,
    standardised per mel bin with ``scale`` when it is set; reading goes through it.
    """

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    speakers: list[str]
    clips: list[str]
    rows: torch.Tensor | None = None  # (len,) rows of ``features``; None: all, in order
    scale: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # name -> (mean, std)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: torch.Tensor, names=FEATURES) -> tuple[torch.Tensor, ...]:
        """The features ``names`` (all: speech, formant, residual) of ``rows``, each
        (len(rows), frames, n_mels), on the device of the labels."""
        if self.rows is not None:
            rows = self.rows[rows.to(self.rows.device)]
        out = []
        for name in names:
            x = self.features[name][rows.to(self.features[name].device)]  # a copy
            if self.scale is not None:
                mean, std = self.scale[name]
                x = x.sub_(mean).div_(std)
            out.append(x.to(self.labels.device))
        return tuple(out)

    def subset(self, rows: torch.Tensor, labels: torch.Tensor | None = None) -> Split:
        """A view of ``rows`` of this split (no feature is copied), optionally relabelled."""
        keep = rows.tolist()
        return replace(self, labels=self.labels[rows] if labels is None else labels,
                       speakers=[self.speakers[i] for i in keep],
                       clips=[self.clips[i] for i in keep],
                       rows=rows.cpu() if self.rows is None else self.rows[rows.cpu()])


@dataclass
class Prepared:
    meta: dict
    splits: dict[str, Split]

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]


def _schema(values_per_clip: int) -> pa.Schema:
    feature = pa.list_(pa.float32(), values_per_clip)
    return pa.schema(
        [("label", pa.int32()), ("speaker", pa.string()), ("clip", pa.string())]
        + [(name, feature) for name in FEATURES]
    )


# --- writing -------------------------------------------------------------------------


class PreparedWriter:
    """Writes shards into a local temporary folder; ``commit(meta)`` publishes them
    (renamed into place locally, uploaded with meta.json last at a URI)."""

    def __init__(self, out: str | os.PathLike, *, frames: int, n_mels: int,
                 overwrite: bool = False):
        self.out = storage.resolve(out)
        if storage.exists(self.out) and not overwrite:
            raise InputError(f"{self.out} already exists; choose another --out or pass "
                             "--overwrite")
        if storage.is_uri(self.out):
            self.tmp = Path(tempfile.mkdtemp(prefix="dotsim-prepare-"))
        else:  # beside the target, so that the rename stays on one file system
            target = Path(self.out)
            self.tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
            self.tmp.mkdir(parents=True)
        self.frames, self.n_mels = frames, n_mels
        self.schema = _schema(frames * n_mels)
        self.shards: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.counts: dict[str, int] = dict.fromkeys(SPLITS, 0)

    def write(self, split: str, features: dict[str, np.ndarray], labels, speakers, clips):
        """One shard of ``split``: features[name] is (N, frames, n_mels)."""
        n = len(labels)
        columns = [
            pa.array(np.asarray(labels, dtype=np.int32)),
            pa.array(list(speakers), pa.string()),
            pa.array(list(clips), pa.string()),
        ]
        for name in FEATURES:
            values = np.ascontiguousarray(features[name], dtype=np.float32)
            assert values.shape == (n, self.frames, self.n_mels), (name, values.shape)
            columns.append(pa.FixedSizeListArray.from_arrays(values.reshape(-1),
                                                             self.frames * self.n_mels))
        name = f"{split}-{len(self.shards[split]):05d}.parquet"
        pq.write_table(pa.Table.from_arrays(columns, schema=self.schema), self.tmp / name)
        self.shards[split].append(name)
        self.counts[split] += n

    def commit(self, meta: dict) -> str:
        """Write meta.json last and publish the folder; returns its location."""
        # prepared_id: every prepare gives a new fingerprint, so no node reuses an old copy
        meta = {**meta, "format_version": FORMAT_VERSION, "frames": self.frames,
                "n_mels": self.n_mels, "counts": self.counts, "shards": self.shards,
                "prepared_id": uuid.uuid4().hex}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if storage.is_uri(self.out):
            self._upload()
        else:
            self._rename_into_place()
        return self.out

    def _upload(self) -> None:
        """Shards first, meta.json last. Over an existing folder (--overwrite) its
        meta.json goes first, so no reader ever pairs the old meta.json with new shards;
        shards the new folder does not list go last."""
        fs, path = storage.filesystem(self.out)
        old: set[str] = set()
        if storage.exists(self.out):
            old = {info.base_name for info in fs.get_file_info(pafs.FileSelector(path))}
            if "meta.json" in old:
                fs.delete_file(f"{path}/meta.json")
        names = [n for split in SPLITS for n in self.shards[split]]
        for name in [*names, "meta.json"]:
            storage.write_bytes(storage.join(self.out, name), (self.tmp / name).read_bytes())
        for stale in old - {*names, "meta.json"}:
            fs.delete_file(f"{path}/{stale}")
        self.abort()

    def _rename_into_place(self) -> None:
        """One rename publishes the folder; an existing one (--overwrite) is moved aside
        first and deleted after, so a crash leaves the old or the new folder whole."""
        target = Path(self.out)
        aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        if target.exists():
            os.replace(target, aside)
        os.replace(self.tmp, target)
        shutil.rmtree(aside, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- checking ------------------------------------------------------------------------


class PreparedDataError(InputError):
    """A prepared folder that is missing, incomplete or inconsistent."""


def read_meta(location: str | os.PathLike) -> dict:
    meta_file = storage.join(location, "meta.json")
    if not storage.exists(meta_file):
        raise PreparedDataError(
            f"{location} is not a prepared data folder (no meta.json); run `dotsim prepare`"
        )
    try:
        meta = json.loads(storage.read_bytes(meta_file))
    except json.JSONDecodeError as err:
        raise PreparedDataError(f"{meta_file} is not valid JSON ({err}); prepare again") from err
    missing = {"labels", "counts", "shards", "frames", "n_mels", "sample_rate"} - set(meta)
    if missing:
        raise PreparedDataError(f"{meta_file} lacks {', '.join(sorted(missing))}; prepare again")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PreparedDataError(f"{meta_file} has format_version {meta.get('format_version')},"
                                f" dotsim reads {FORMAT_VERSION}; prepare again")
    return meta


def check_prepared(location: str | os.PathLike) -> dict:
    """Check a prepared folder without reading its data: meta.json, every shard present
    with the expected schema, and the row counts meta.json promises. Returns the meta."""
    location = storage.resolve(location)
    meta = read_meta(location)
    expected = _schema(meta["frames"] * meta["n_mels"])
    fs, root = storage.filesystem(location)
    for split in SPLITS:
        rows = 0
        for name in meta["shards"][split]:
            if not storage.exists(storage.join(location, name)):
                raise PreparedDataError(f"{location} is missing shard {name}; prepare again")
            with pq.ParquetFile(f"{root}/{name}", filesystem=fs) as parquet:
                if not parquet.schema_arrow.equals(expected):
                    raise PreparedDataError(f"{location}/{name} has an unexpected schema; "
                                            "prepare again")
                rows += parquet.metadata.num_rows
        if rows != meta["counts"][split]:
            raise PreparedDataError(f"{location}: split {split} has {rows} clips, meta.json "
                                    f"says {meta['counts'][split]}; prepare again")
    return meta


def read_labels(location: str | os.PathLike, meta: dict, split: str) -> np.ndarray:
    """(N,) int64 labels of a split, read from the label column alone (no features)."""
    fs, root = storage.filesystem(location)
    columns = [pq.read_table(f"{root}/{name}", columns=["label"], filesystem=fs)
               .column("label").to_numpy() for name in meta["shards"][split]]
    return np.concatenate(columns).astype(np.int64) if columns else np.zeros(0, np.int64)


def data_fingerprint(location: str | os.PathLike) -> str:
    """A short hash of a prepared folder's meta.json: its settings, sources and counts."""
    return hashlib.sha256(storage.read_bytes(storage.join(location, "meta.json"))).hexdigest()[:16]


# --- reading: the node's copy --------------------------------------------------------


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
    keep = int(os.environ.get("DOTSIM_NODE_CACHE_KEEP", NODE_CACHE_KEEP))
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


def load_prepared(location: str | os.PathLike, splits=SPLITS) -> Prepared:
    """The prepared data at ``location`` (checked when this node first copies it), as
    splits whose features are memory-mapped from the node's copy: copy-on-write, so the
    pages are shared by every process of the node that reads them and never written."""
    folder = node_copy(location)
    meta = json.loads((folder / "meta.json").read_text())
    return Prepared(meta=meta, splits={s: _mapped_split(folder, s) for s in splits})


def _mapped_split(folder: Path, split: str) -> Split:
    ids = json.loads((folder / f"{split}-ids.json").read_text())
    mapped = "c" if ids["clips"] else None  # a file of no rows cannot be mapped
    features = {name: torch.from_numpy(np.load(folder / f"{split}-{name}.npy", mmap_mode=mapped))
                for name in FEATURES}
    return Split(features=features,
                 labels=torch.from_numpy(np.load(folder / f"{split}-labels.npy")),
                 speakers=ids["speakers"], clips=ids["clips"])
