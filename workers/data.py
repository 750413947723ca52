"""Prepared data: Parquet shards per split plus ``meta.json``, readable with pyarrow alone.

Layout of a prepared folder::

    meta.json                      sample rate, feature settings, labels, counts, shards
    train-00000.parquet ...        columns: label (int32), speaker, clip (string),
    validation-00000.parquet ...   speech, formant, residual (fixed-size float32 lists of
    test-00000.parquet ...         frames * n_mels values, time-major)

A folder is written under a temporary name and renamed into place after ``meta.json``,
so an interrupted prepare never leaves a folder that ``load_prepared`` accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from workers.errors import InputError

SPLITS = ("train", "validation", "test")
FEATURES = ("speech", "formant", "residual")
FORMAT_VERSION = 1


@dataclass
class Split:
    """One split in memory: features (N, frames, n_mels) float32, labels (N,) int64."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    speakers: list[str]
    clips: list[str]

    def __len__(self) -> int:
        return len(self.labels)


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


class PreparedWriter:
    """Writes shards into a temporary folder; ``commit(meta)`` publishes it atomically."""

    def __init__(self, out: Path, *, frames: int, n_mels: int, overwrite: bool = False):
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise InputError(f"{self.out} already exists; choose another --out or pass "
                             "--overwrite")
        self.tmp = self.out.with_name(f".{self.out.name}.partial-{uuid.uuid4().hex[:8]}")
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

    def commit(self, meta: dict) -> Path:
        """Write meta.json last, then rename the folder into place."""
        meta = {**meta, "format_version": FORMAT_VERSION, "frames": self.frames,
                "n_mels": self.n_mels, "counts": self.counts, "shards": self.shards}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class PreparedDataError(InputError):
    """A prepared folder that is missing, incomplete or inconsistent."""


def read_meta(path: Path) -> dict:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise PreparedDataError(
            f"{path} is not a prepared data folder (no meta.json); run `dotsim prepare`"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise PreparedDataError(f"{meta_file} is not valid JSON ({err}); prepare again") from err
    missing = {"labels", "counts", "shards", "frames", "n_mels", "sample_rate"} - set(meta)
    if missing:
        raise PreparedDataError(f"{meta_file} lacks {', '.join(sorted(missing))}; prepare again")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PreparedDataError(f"{meta_file} has format_version {meta.get('format_version')},"
                                f" dotsim reads {FORMAT_VERSION}; prepare again")
    return meta


def check_prepared(path: str | Path) -> dict:
    """Check a prepared folder without reading its data: meta.json, every shard present
    with the expected schema, and the row counts meta.json promises. Returns the meta."""
    path = Path(path)
    meta = read_meta(path)
    expected = _schema(meta["frames"] * meta["n_mels"])
    for split in SPLITS:
        rows = 0
        for name in meta["shards"][split]:
            file = path / name
            if not file.is_file():
                raise PreparedDataError(f"{path} is missing shard {name}; prepare again")
            parquet = pq.ParquetFile(file)
            if not parquet.schema_arrow.equals(expected):
                raise PreparedDataError(f"{file} has an unexpected schema; prepare again")
            rows += parquet.metadata.num_rows
        if rows != meta["counts"][split]:
            raise PreparedDataError(f"{path}: split {split} has {rows} clips, meta.json says "
                                    f"{meta['counts'][split]}; prepare again")
    return meta


def load_split(path: Path, meta: dict, split: str) -> Split:
    path = Path(path)
    tables = [pq.read_table(path / name) for name in meta["shards"][split]]
    table = pa.concat_tables(tables) if tables else _schema(
        meta["frames"] * meta["n_mels"]).empty_table()
    labels = table.column("label").to_numpy().astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(meta["labels"])):
        raise PreparedDataError(f"{path}: split {split} has labels outside meta.json's list")
    shape = (table.num_rows, meta["frames"], meta["n_mels"])
    features = {
        name: torch.from_numpy(
            table.column(name).combine_chunks().flatten().to_numpy().reshape(shape).copy()
        )
        for name in FEATURES
    }
    return Split(features=features, labels=torch.from_numpy(labels),
                 speakers=table.column("speaker").to_pylist(),
                 clips=table.column("clip").to_pylist())


def load_prepared(path: str | Path, splits=SPLITS) -> Prepared:
    """Read and check a prepared folder; ``PreparedDataError`` says what is wrong."""
    meta = check_prepared(path)
    return Prepared(meta=meta, splits={s: load_split(Path(path), meta, s) for s in splits})
