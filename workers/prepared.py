"""The prepared-data format: Parquet shards per split plus ``meta.json``, readable with
pyarrow alone, in a local folder or at any URI ``pyarrow.fs`` understands
(``s3://bucket/prefix``); its writer (used by ``dotsim prepare``) and its checks.

Layout of a prepared folder::

    meta.json                      sample rate, feature settings, labels, counts, shards
    train-00000.parquet ...        columns: label (int32), speaker, clip (string),
    validation-00000.parquet ...   speech, formant, residual (fixed-size float32 lists of
    test-00000.parquet ...         frames * n_mels values, time-major)

A local folder is written under a temporary name and renamed into place after
``meta.json``; at a URI the shards are uploaded first and ``meta.json`` last. Either way
an interrupted prepare never leaves a folder that ``check_prepared`` accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers import storage
from workers.constants import FEATURES, SPLITS
from workers.errors import InputError

FORMAT_VERSION = 1


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
