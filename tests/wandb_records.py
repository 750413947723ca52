"""Reading a W&B run back from its own files, as ``wandb sync`` would upload them.

wandb writes everything of a run (its name, group, tags, config, every history step,
artifacts) into ``run-<id>.wandb``: wandb's protobuf ``Record`` messages (the public
``wandb.proto.wandb_internal_pb2``) in LevelDB's log framing: a 7-byte file header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte
header (CRC-32 of the chunk type and data, length, type: full, first, middle, last).
wandb 0.31 ships no Python reader of it (``wandb.sdk.internal.datastore`` is gone), so this
is one, checking every chunk's CRC, so a misread file fails loudly.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import wandb
from wandb.proto import wandb_internal_pb2

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    out, pending, pos = [], b"", HEADER.size
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # the rest of a block too small for a header is padding
            pos += left
            continue
        checksum, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + CHUNK.size:pos + CHUNK.size + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"bad CRC at {pos}"
        pos += CHUNK.size + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


@dataclass
class WandbRun:
    """What one ``.wandb`` file says of its run."""

    run_id: str
    name: str
    group: str
    job_type: str
    project: str
    tags: list[str]
    config: dict
    history: dict[int, dict] = field(default_factory=dict)  # step -> {key: value}
    artifacts: list[tuple[str, str, list[str]]] = field(default_factory=list)  # name, type, files


def _name(item) -> str:
    """An item's key: wandb writes it as ``key`` or, in newer records, as ``nested_key``
    (one part, or one part per level of a nested dict)."""
    return item.key or ".".join(item.nested_key)


def read_run(path: Path) -> WandbRun:
    run = None
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = WandbRun(r.run_id, r.display_name, r.run_group, r.job_type, r.project,
                           list(r.tags), {_name(i): json.loads(i.value_json)
                                          for i in r.config.update if _name(i) != "_wandb"})
        elif kind == "history":
            row = {_name(i): json.loads(i.value_json) for i in record.history.item}
            step = record.history.step.num
            assert step not in run.history, f"{path}: step {step} written twice"
            run.history[step] = row
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append((a.name, a.type, sorted(m.path for m in a.manifest.contents)))
    assert run is not None, f"{path} holds no run record"
    return run


def offline_runs(folder: Path) -> list[WandbRun]:
    """Every run wandb wrote offline under ``folder`` (its WANDB_DIR), oldest first.

    ``run.finish()`` can return before wandb's service has written the run's last records
    (a CI run once found a finished run's file without them), so this first waits for the
    service to stop: ``wandb.teardown()``, which closes every file it holds."""
    wandb.teardown()
    return [read_run(p) for p in sorted(Path(folder).glob("wandb/offline-run-*/run-*.wandb"))]
