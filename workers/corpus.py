"""Sources of clips (the embedded synthesizer, a Speech Commands v2 folder) and the
per-chunk step that turns clips into features. The orchestrator decides where chunks run
(in process, or as Ray tasks over the cluster) and writes them with ``PreparedWriter``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from workers import audio, synth
from workers.constants import CLIP_SAMPLES, HOP, LPC_ORDER, N_FFT, N_MELS, SAMPLE_RATE, SPLITS
from workers.errors import InputError

SPEECH_COMMANDS_FILE = re.compile(r"^(?P<speaker>[^_/]+)_nohash_(?P<n>\d+)\.wav$")


@dataclass(frozen=True)
class FeatureSettings:
    """How features are computed; stored in meta.json."""

    sample_rate: int = SAMPLE_RATE
    n_mels: int = N_MELS
    lpc_order: int = LPC_ORDER
    n_fft: int = N_FFT
    hop: int = HOP

    @property
    def num_samples(self) -> int:
        return self.sample_rate * CLIP_SAMPLES // SAMPLE_RATE  # clips are 1 s

    def to_meta(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Chunk:
    """Clips of one split, processed and written together (one shard)."""

    split: str
    labels: list[int]
    speakers: list[str]
    clips: list[str]  # ids: relative paths for files, "synthetic/<i>" for generated clips
    paths: list[str] | None = None  # audio files to read; None: ``waves`` is given
    waves: np.ndarray | None = None  # (N, samples) float32


def featurize(chunk: Chunk, settings: FeatureSettings) -> dict[str, np.ndarray]:
    """Features of one chunk: {"speech", "formant", "residual"} each (N, frames, n_mels).

    Runs in a Ray task for large sources (Ray sets OMP_NUM_THREADS to the task's one
    CPU, so tasks do not oversubscribe); ``InputError`` names a clip that cannot be read.
    """
    waves = chunk.waves
    if waves is None:
        waves = np.stack([
            audio.load_wav(path, sample_rate=settings.sample_rate,
                           num_samples=settings.num_samples).numpy()
            for path in chunk.paths
        ])
    features = audio.extract_features(
        torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)),
        n_mels=settings.n_mels, order=settings.lpc_order, n_fft=settings.n_fft,
        hop=settings.hop,
    )
    return {name: value.numpy() for name, value in features.items()}


def chunked(split: str, labels, speakers, clips, *, size: int, paths=None,
            waves=None) -> list[Chunk]:
    chunks = []
    for start in range(0, len(labels), size):
        sl = slice(start, start + size)
        chunks.append(Chunk(
            split=split, labels=list(labels[sl]), speakers=list(speakers[sl]),
            clips=list(clips[sl]), paths=None if paths is None else list(paths[sl]),
            waves=None if waves is None else waves[sl],
        ))
    return chunks


def synthetic_chunks(seed: int, *, size: int, **corpus_sizes) -> tuple[list[str], list[Chunk]]:
    """The embedded corpus (labels in ``synth.WORDS`` order), generated in process;
    ``corpus_sizes`` go to ``synth.make_corpus`` (speakers, clips_per_word_speaker)."""
    corpus = synth.make_corpus(seed, **corpus_sizes)
    chunks = []
    for split in SPLITS:
        part = corpus[split]
        clips = [f"synthetic/{split}/{i}" for i in range(len(part.labels))]
        chunks += chunked(split, part.labels.tolist(), part.speakers.tolist(), clips,
                          size=size, waves=part.waves)
    return list(synth.WORDS), chunks


def speech_commands_chunks(root: Path, *, size: int) -> tuple[list[str], list[Chunk]]:
    """A folder in the Speech Commands v2 layout, split by its list files.

    ``<word>/<speaker>_nohash_<n>.wav``; ``validation_list.txt`` and ``testing_list.txt``
    hold relative paths; every other clip is training; folders starting with "_"
    (``_background_noise_``) are ignored. Labels are the word folders, sorted.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"source {root} is not a folder")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not words:
        raise InputError(f"{root} has no word folders; expected the Speech Commands layout "
                         "<word>/<speaker>_nohash_<n>.wav")
    listed = {split: _read_list(root, name) for split, name in
              (("validation", "validation_list.txt"), ("test", "testing_list.txt"))}
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for word in words:
        for wav in sorted((root / word).glob("*.wav")):
            relative = f"{word}/{wav.name}"
            if not SPEECH_COMMANDS_FILE.match(wav.name):
                raise InputError(f"{relative} does not follow <speaker>_nohash_<n>.wav")
            split = next((s for s, names in listed.items() if relative in names), "train")
            by_split[split].append(relative)
    for split, names in listed.items():
        missing = names - set(by_split[split])
        if missing:
            example = sorted(missing)[0]
            raise InputError(f"{len(missing)} clip(s) in {split} list missing on disk, "
                             f"e.g. {example}; fix the list or restore the files")
    if not any(by_split.values()):
        raise InputError(f"{root} has no .wav clips")
    label_of = {w: i for i, w in enumerate(words)}
    chunks = []
    for split in SPLITS:
        rel = by_split[split]
        chunks += chunked(
            split, [label_of[r.split("/")[0]] for r in rel],
            [SPEECH_COMMANDS_FILE.match(r.split("/")[1])["speaker"] for r in rel], rel,
            size=size, paths=[str(root / r) for r in rel],
        )
    return words, chunks


def _read_list(root: Path, name: str) -> set[str]:
    path = root / name
    if not path.is_file():
        raise InputError(f"{root} lacks {name}; expected the Speech Commands v2 layout")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}
