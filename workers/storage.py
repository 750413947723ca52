"""Where run folders, sweeps and prepared data live: a local path, or any URI that
``pyarrow.fs`` understands (``s3://bucket/prefix``, ``gs://...``). Every reader and writer
in dotsim goes through these few helpers, so both kinds of location behave the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from workers.errors import InputError


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
    """``location`` / parts; a URI's query (``?region=...``) stays at the end."""
    base, query = str(location), ""
    if is_uri(location):
        base, _, query = base.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (f"?{query}" if query else "")


def parent(location: str | os.PathLike) -> str:
    """The folder that holds ``location``."""
    if not is_uri(location):
        return str(Path(resolve(location)).parent)
    base, _, query = str(location).partition("?")
    return base.rstrip("/").rsplit("/", 1)[0] + (f"?{query}" if query else "")


@contextlib.contextmanager
def _usable(location: str | os.PathLike):
    """Storage that cannot be reached or used (a bucket that does not exist, missing
    credentials, an endpoint nobody answers at, no permission) is the user's to fix:
    ``InputError`` with the first line of the reason. Only the up-front checks below use
    it: a storage error later in a run is a failure, not bad input."""
    try:
        yield
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot use storage {location}: {reason}") from err


def check_writable(location: str | os.PathLike) -> None:
    """Write and delete a small object under ``location``, so that storage that cannot be
    used fails here, in one line, before anything starts."""
    probe = join(location, f".dotsim-probe-{uuid.uuid4().hex[:8]}")
    with _usable(location):
        write_bytes(probe, b"")
        fs, path = filesystem(probe)
        fs.delete_file(path)


def check_reachable(location: str | os.PathLike) -> None:
    """Ask the storage about ``location`` (it need not exist), so that storage that cannot
    be reached fails here, in one line."""
    with _usable(location):
        exists(location)


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
    if isinstance(fs, pafs.LocalFileSystem):  # object stores have no folders to make
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as stream:
            stream.write(data)
