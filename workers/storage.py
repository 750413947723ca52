"""Where run folders, sweeps and prepared data live: a local path, or any URI that
``pyarrow.fs`` understands (``s3://bucket/prefix``, ``gs://...``). Every reader and writer
in dotsim goes through these few helpers, so both kinds of location behave the same.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def resolve(location: str | os.PathLike) -> str:
    """A URI as given (without a trailing slash); a local path made absolute."""
    if is_uri(location):
        return str(location).rstrip("/")
    return str(Path(location).expanduser().resolve())


def filesystem(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location`` and the path inside it."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), resolve(location)


def join(location: str | os.PathLike, *parts: str) -> str:
    return "/".join([str(location).rstrip("/"), *parts])


def exists(location: str | os.PathLike) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str | os.PathLike) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_json(location: str | os.PathLike):
    return json.loads(read_bytes(location))


def write_json(location: str | os.PathLike, value) -> None:
    write_bytes(location, (json.dumps(value, indent=2, default=str) + "\n").encode())


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` so that a reader never sees half of it: a local file is written
    under a temporary name and renamed; an object store's put is atomic."""
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as stream:
            stream.write(data)
