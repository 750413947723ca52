"""Ways to damage a copy of a prepared folder, shared by the data and catalogue tests."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

DAMAGES = ("missing_shard", "wrong_schema", "count_changed", "no_meta", "bad_json",
           "old_format")


def damaged_copy(prepared: Path, copy: Path, damage: str, split: str = "train") -> Path:
    """Copy ``prepared`` to ``copy`` and break it one way (one of DAMAGES), in ``split``'s
    first shard or in meta.json."""
    shutil.copytree(prepared, copy)
    meta_file = copy / "meta.json"
    meta = json.loads(meta_file.read_text())
    shard = copy / meta["shards"][split][0]
    if damage == "missing_shard":
        shard.unlink()
    elif damage == "wrong_schema":
        pq.write_table(pq.read_table(shard).drop_columns(["residual"]), shard)
    elif damage == "count_changed":
        meta["counts"][split] += 1
        meta_file.write_text(json.dumps(meta))
    elif damage == "no_meta":
        meta_file.unlink()
    elif damage == "bad_json":
        meta_file.write_text("{")
    elif damage == "old_format":
        meta["format_version"] = 0
        meta_file.write_text(json.dumps(meta))
    else:
        raise AssertionError(f"unknown damage {damage!r}; known: {', '.join(DAMAGES)}")
    return copy
