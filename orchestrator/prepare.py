"""``dotsim prepare``: clips -> features -> Parquet shards, in process or over Ray.

Chunks of clips become Ray tasks when a Ray cluster is connected (the driver then only
writes shards as results arrive, bounded to a few chunks in flight); otherwise they run
in this process. The folder is published atomically (``PreparedWriter``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from orchestrator.plan import check_address
from orchestrator.progress import bar
from workers import storage
from workers.corpus import (
    Chunk,
    FeatureSettings,
    featurize,
    speech_commands_chunks,
    synthetic_chunks,
)
from workers.prepared import PreparedWriter, read_meta

CHUNK_CLIPS = 256
SYNTHETIC_VERSION = 1  # bump when the synthesizer's output changes
RAY_ABOVE_CLIPS = 2000  # a source larger than this is prepared over Ray by default

log = logging.getLogger("dotsim")


def default_cache() -> Path:
    base = os.environ.get("DOTSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dotsim")
    return Path(base)


def synthetic_cache(seed: int = 0) -> Path:
    return default_cache() / f"synthetic-v{SYNTHETIC_VERSION}-seed{seed}"


def prepare_data(source: Path | None, out: str, *, seed: int = 0, overwrite: bool = False,
                 use_ray: bool | None = None, address: str | None = None) -> dict:
    """What ``dotsim prepare`` does: checks first (the address, a bucket's parent), then
    ``prepare`` in this process or over Ray (by default: with an address, or for a
    source of more than RAY_ABOVE_CLIPS clips)."""
    from orchestrator.launch import ray_session

    check_address(address)
    if storage.is_uri(out):  # an unusable bucket fails now, not after the features
        storage.check_writable(storage.parent(out))
    if use_ray is None:
        use_ray = bool(address) or _count_wavs(source) > RAY_ABOVE_CLIPS
    with ray_session(address) if use_ray else contextlib.nullcontext():
        return prepare(source, out, seed=seed, overwrite=overwrite, use_ray=use_ray)


def _count_wavs(source) -> int:
    if source is None or not Path(source).is_dir():
        return 0
    return sum(1 for _ in Path(source).glob("*/*.wav"))


def prepare(source: Path | None, out: Path, *, seed: int = 0, overwrite: bool = False,
            use_ray: bool = False, progress: bool = True,
            settings: FeatureSettings | None = None, corpus_sizes: dict | None = None) -> dict:
    """Prepare ``source`` (a Speech Commands folder; None: the synthetic corpus) into ``out``.

    Returns the summary: output path, clips per split, labels. Raises ``InputError`` with
    a one-line message on a bad source (including a clip that cannot be read).
    ``corpus_sizes`` shrinks the synthetic corpus (``synth.make_corpus`` arguments).
    """
    settings = settings or FeatureSettings()
    frames = settings.num_samples // settings.hop + 1  # centred frames
    # the writer first: an existing --out is refused before any clip is made or read
    writer = PreparedWriter(out, frames=frames, n_mels=settings.n_mels, overwrite=overwrite)
    try:
        if source is None:
            labels, chunks = synthetic_chunks(seed, size=CHUNK_CLIPS, **(corpus_sizes or {}))
            origin = {"source": "synthetic", "synthetic_seed": seed,
                      "synthetic_version": SYNTHETIC_VERSION, **(corpus_sizes or {})}
        else:
            labels, chunks = speech_commands_chunks(Path(source), size=CHUNK_CLIPS)
            origin = {"source": str(Path(source).resolve())}
        results = _run_ray(chunks, settings) if use_ray else _run_local(chunks, settings)
        with bar(results, len(chunks), "prepare", enabled=progress) as done:
            for chunk, features in done:
                writer.write(chunk.split, features, chunk.labels, chunk.speakers, chunk.clips)
        path = writer.commit({**settings.to_meta(), "labels": labels, **origin})
    except BaseException:
        writer.abort()
        raise
    return {"path": str(path), "counts": writer.counts, "labels": len(labels)}


def ensure_synthetic(seed: int = 0, *, use_ray: bool = False, progress: bool = True) -> Path:
    """The synthetic corpus's cache folder, prepared on first use and reused after."""
    path = synthetic_cache(seed)
    if not (path / "meta.json").is_file():
        log.info(f"Preparing the synthetic corpus once into {path} ...")
        prepare(None, path, seed=seed, overwrite=True, use_ray=use_ray, progress=progress)
    read_meta(path)
    return path


def _run_local(chunks: list[Chunk], settings) -> Iterator[tuple[Chunk, dict]]:
    for chunk in chunks:
        yield chunk, featurize(chunk, settings)


def _run_ray(chunks: list[Chunk], settings, in_flight: int | None = None):
    """Yield (chunk, features) in chunk order from Ray tasks, at most ``in_flight``
    pending, so the driver never holds the whole corpus's features and the shards come
    out in the same order as in process."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(featurize)
    in_flight = in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: collections.deque = collections.deque()
    for chunk in chunks:
        # the chunk's waves travel once through the object store
        pending.append((chunk, task.remote(chunk, settings)))
        if len(pending) >= in_flight:
            done, ref = pending.popleft()
            yield done, ray.get(ref)
    while pending:
        done, ref = pending.popleft()
        yield done, ray.get(ref)
