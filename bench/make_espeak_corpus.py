"""A keyword corpus spoken by espeak-ng voices, in the Speech Commands v2 layout that
``dotsim prepare`` reads: speech the project's own synthesizer did not make.

    .venv/bin/python bench/make_espeak_corpus.py --out /tmp/espeak-corpus \\
        [--speakers 48 8 8] [--repeats 2] [--seed 0] [--jobs N] [--prepare /tmp/espeak-prepared]

What it makes (defaults: the synthetic corpus's shape, docs/speech-corpus.md):

- Words: the 35 Speech Commands v2 words (``workers.synth.WORDS``), the 20 base + 3 ways
  x 5 sessions that ``--protocol fskil`` needs; the same label set, so FSKIL takes the
  reference class order. ``--words`` gives another list.
- Speakers: a speaker is an espeak-ng accent (en-gb, en-us, en-gb-x-rp, en-029, ...) with a
  voice variant (+m1..m8, +f1..f5 and a few named ones) and its own base rate (-s, words
  per minute) and pitch (-p). The split is BY VARIANT: a voice variant (its pitch range,
  formant scaling, breathiness) is in one split only, so validation and test voices are
  never trained on; accents are shared, as real accents are. ``--speakers`` gives the
  speakers per split (48 / 8 / 8), ``--repeats`` the clips per word and speaker (2):
  4480 clips, as the synthetic corpus.
- Each clip jitters the speaker's rate and pitch, so repeats differ. espeak-ng's 22,050 Hz
  output is resampled to 16 kHz with torchaudio (as ``workers.audio.load_wav`` does), its
  silence trimmed, the word placed at a random onset in a 1 s clip, set to a random level
  (0 to -20 dB below a 0.9 peak) and, in half the clips, mixed with coloured noise at 10 to
  35 dB SNR (``--noise-share 0``: clean), as the synthetic corpus does. 16-bit mono WAV.
- Layout: ``<word>/<speaker>_nohash_<n>.wav``, ``validation_list.txt``,
  ``testing_list.txt`` and ``espeak_corpus.json`` (the settings, espeak-ng's version and
  every speaker). Speaker ids are ``<accent>.<variant>`` (``en-gb-x-rp.f3``).

Every clip's settings come from (--seed, speaker, word, repeat), and espeak-ng is
deterministic, so a seed gives the same corpus. Needs the ``espeak-ng`` program
(Debian/Ubuntu: ``sudo apt-get install espeak-ng``; macOS: ``brew install espeak-ng``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from workers.constants import CLIP_SAMPLES, SAMPLE_RATE, SPLITS  # noqa: E402
from workers.corpus import SPEECH_COMMANDS_FILE  # noqa: E402
from workers.synth import WORDS  # noqa: E402

ESPEAK_RATE = 22_050  # Hz: what espeak-ng writes
# espeak-ng's own English accents (not the mbrola voices, which need mbrola installed)
ACCENTS: tuple[str, ...] = (
    "en-gb", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd", "en-us-nyc",
)  # fmt: skip
# Voice variants (files in espeak-ng-data/voices/!v): 12 male and 12 female, the robotic,
# whispering and extreme ones left out. Cut into consecutive blocks for train, validation
# and test (18 / 3 / 3 at the default speakers), so the held-out blocks are listed last
# and mix male and female, standard (m*, f*) and named variants.
TRAIN_VARIANTS = ("m1", "f1", "m2", "f2", "m3", "f4", "m5", "linda", "m6", "steph", "m8",
                  "belinda", "Andy", "Andrea", "paul", "aunty", "david", "grandma")
VARIANTS: tuple[str, ...] = (*TRAIN_VARIANTS, "m7", "f3", "robert", "m4", "f5", "Annie")

RATE_WPM = (140.0, 185.0)  # a speaker's base rate (espeak-ng's default is 175)
PITCH = (30.0, 70.0)  # a speaker's base pitch, 0-99 (default 50)
RATE_JITTER = 0.07  # log-sd of a clip's rate around its speaker's (synth's tempo jitter)
PITCH_JITTER = 4.0  # sd of a clip's pitch around its speaker's
GAIN_DB = (-20.0, 0.0)  # clip level below the 0.9 peak (as workers/synth.py)
SNR_DB = (10.0, 35.0)  # background noise, when a clip has some (as workers/synth.py)
SILENCE_DB = -40.0  # trimmed: leading and trailing samples this far below the peak
MAX_WORD_S = 0.95  # a longer word is spoken again faster (up to SPEEDUPS times)
SPEEDUPS = 4

INSTALL_HINT = ("espeak-ng is not installed (or not on PATH). Install it: "
                "`sudo apt-get install espeak-ng` (Debian/Ubuntu), "
                "`sudo dnf install espeak-ng` (Fedora), `brew install espeak-ng` (macOS); "
                "or pass --espeak PATH")


class CorpusError(Exception):
    """A one-line reason the corpus cannot be made."""


@dataclass(frozen=True)
class Speaker:
    id: str  # "<accent>.<variant>": no "_" or "/", as <speaker>_nohash_<n>.wav requires
    accent: str  # espeak-ng language, e.g. "en-gb-x-rp"
    variant: str  # espeak-ng variant, e.g. "f3"
    split: str
    rate: float  # words per minute
    pitch: float  # 0-99
    index: int  # position in the corpus's speaker list (seeds its clips)

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True)
class Clip:
    word: str
    word_index: int
    speaker: Speaker
    n: int  # the speaker's n-th clip of this word

    @property
    def relative(self) -> str:
        return clip_path(self.word, self.speaker.id, self.n)


# --- the plan: speakers, splits, clips (pure) -----------------------------------------


def speaker_id(accent: str, variant: str) -> str:
    """``en-gb-x-rp.f3``: lower case, only [a-z0-9.-] (no "_", which ends the speaker in
    ``<speaker>_nohash_<n>.wav``)."""
    sid = f"{accent}.{variant}".lower()
    sid = re.sub(r"[^a-z0-9.-]+", "-", sid)
    return sid


def clip_path(word: str, speaker: str, n: int) -> str:
    """``<word>/<speaker>_nohash_<n>.wav``, the path ``dotsim prepare`` reads."""
    relative = f"{word}/{speaker}_nohash_{n}.wav"
    if not SPEECH_COMMANDS_FILE.match(relative.split("/", 1)[1]):
        raise CorpusError(f"speaker id {speaker!r} does not fit <speaker>_nohash_<n>.wav")
    return relative


def variants_per_split(n_variants: int, speakers: Sequence[int]) -> list[int]:
    """Variants given to each split, in proportion to its speakers (at least one each)."""
    total = sum(speakers)
    held = [max(1, round(n_variants * s / total)) for s in speakers[1:]]
    counts = [n_variants - sum(held), *held]
    if counts[0] < 1:
        raise CorpusError(f"{n_variants} voice variants cannot give each of the "
                          f"{len(speakers)} splits its own; give more --variants")
    return counts


def plan_speakers(accents: Sequence[str], variants: Sequence[str],
                  speakers: Sequence[int] = (48, 8, 8), seed: int = 0) -> list[Speaker]:
    """The speakers of each split (``SPLITS`` order), split by voice variant.

    ``variants`` are cut into consecutive blocks, one per split (sized by
    ``variants_per_split``): a variant is in one split only. Within a split of V variants
    and A accents, speaker k is variant ``k % V`` with accent ``(k + k // L) % A``, L the
    least common multiple of V and A: variants and accents both take turns (every accent
    is used before one repeats), and no (accent, variant) pair repeats before all V x A
    are used. Each speaker draws its base rate and pitch from (seed, its index).
    """
    if len(speakers) != len(SPLITS) or min(speakers) < 1:
        raise CorpusError(f"--speakers needs {len(SPLITS)} counts >= 1; got {list(speakers)}")
    if len(set(accents)) != len(accents) or len(set(variants)) != len(variants):
        raise CorpusError("accents and variants must not repeat")
    ids = [speaker_id(a, v) for a in accents for v in variants]
    if len(set(ids)) != len(ids):
        raise CorpusError("two accent+variant pairs give the same speaker id; "
                          "rename or drop one")
    blocks, first = [], 0
    for count in variants_per_split(len(variants), speakers):
        blocks.append(list(variants[first:first + count]))
        first += count
    out: list[Speaker] = []
    for split, count, block in zip(SPLITS, speakers, blocks, strict=True):
        if count > len(block) * len(accents):
            raise CorpusError(
                f"{split} needs {count} speakers but has {len(block)} variant(s) x "
                f"{len(accents)} accent(s) = {len(block) * len(accents)}; lower --speakers "
                "or give more --accents/--variants")
        period = math.lcm(len(block), len(accents))
        for k in range(count):
            v = k % len(block)
            accent = accents[(k + k // period) % len(accents)]
            rng = np.random.default_rng([seed, len(out)])
            out.append(Speaker(
                id=speaker_id(accent, block[v]), accent=accent, variant=block[v], split=split,
                rate=round(float(rng.uniform(*RATE_WPM)), 1),
                pitch=round(float(rng.uniform(*PITCH)), 1), index=len(out),
            ))
    return out


def plan_clips(words: Sequence[str], speakers: Sequence[Speaker], repeats: int) -> list[Clip]:
    """Every speaker says every word ``repeats`` times."""
    return [Clip(word, w, speaker, n) for speaker in speakers
            for w, word in enumerate(words) for n in range(repeats)]


def clip_rng(seed: int, clip: Clip) -> np.random.Generator:
    """The clip's own generator: its settings do not depend on the order clips are made."""
    return np.random.default_rng([seed, clip.speaker.index, clip.word_index, clip.n, 1])


def espeak_argv(espeak: str, clip: Clip, rng: np.random.Generator,
                speedup: float = 1.0) -> list[str]:
    """espeak-ng's command line for one clip: the speaker's voice, its rate and pitch
    jittered (a draw from ``rng``), the rate times ``speedup``; WAV on stdout."""
    rate = clip.speaker.rate * float(np.exp(rng.normal(0.0, RATE_JITTER))) * speedup
    pitch = float(np.clip(clip.speaker.pitch + rng.normal(0.0, PITCH_JITTER), 0, 99))
    return [espeak, "-v", clip.speaker.voice, "-s", str(round(rate)), "-p", str(round(pitch)),
            "--stdout", clip.word]


# --- audio (pure) -----------------------------------------------------------------------


def to_16k(wave: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at SAMPLE_RATE: channels averaged, resampled with torchaudio."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    return wave


def trim_silence(wave: np.ndarray, floor_db: float = SILENCE_DB) -> np.ndarray:
    """``wave`` without its leading and trailing samples ``floor_db`` below its peak."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak == 0.0:
        return wave[:0]
    loud = np.flatnonzero(np.abs(wave) >= peak * 10 ** (floor_db / 20))
    return wave[loud[0]:loud[-1] + 1]


def coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise with a 1/f^alpha power spectrum, alpha drawn from [0, 2]
    (white to brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    spectrum *= f ** (-rng.uniform(0.0, 2.0) / 2)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def fit_clip(word: np.ndarray, rng: np.random.Generator, *, noise_share: float = 0.5,
             samples: int = CLIP_SAMPLES) -> np.ndarray:
    """A spoken word (16 kHz, silence trimmed) -> a ``samples``-long clip: placed at a
    random onset (trimmed at the end if longer), scaled to a random peak level, and with
    chance ``noise_share`` mixed with coloured noise at a random SNR over the word."""
    word = np.asarray(word, dtype=np.float64)[:samples]
    clip = np.zeros(samples)
    if word.size == 0 or not np.abs(word).max() > 0:
        raise CorpusError("espeak-ng returned silence")
    start = int(rng.integers(0, samples - word.size + 1))
    peak = 0.9 * 10 ** (rng.uniform(*GAIN_DB) / 20)
    clip[start:start + word.size] = word * (peak / np.abs(word).max())
    if rng.random() < noise_share:
        power = float(np.mean(clip[start:start + word.size] ** 2))
        snr = rng.uniform(*SNR_DB)
        clip += coloured_noise(samples, rng) * np.sqrt(power / 10 ** (snr / 10))
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


# --- espeak-ng ----------------------------------------------------------------------


def find_espeak(path: str | None = None) -> str:
    """The espeak-ng program; ``CorpusError`` saying how to install it when it is missing."""
    found = shutil.which(path or "espeak-ng")
    if found is None:
        raise CorpusError(INSTALL_HINT if path is None else f"{path} not found. " + INSTALL_HINT)
    return found


def espeak_info(espeak: str) -> tuple[str, Path]:
    """espeak-ng's version line and its data folder."""
    out = subprocess.run([espeak, "--version"], capture_output=True, text=True, check=True)
    line = out.stdout.strip()
    match = re.search(r"Data at:\s*(\S+)", line)
    if not match:
        raise CorpusError(f"cannot read espeak-ng's data folder from {line!r}")
    return line, Path(match[1])


def check_voices(espeak: str, data: Path, accents: Sequence[str],
                 variants: Sequence[str]) -> None:
    """``CorpusError`` naming an accent espeak-ng lacks or a variant with no file (espeak-ng
    would silently use its default voice for an unknown variant)."""
    listed = subprocess.run([espeak, "--voices"], capture_output=True, text=True,
                            check=True).stdout
    languages = {line.split()[1] for line in listed.splitlines()[1:] if len(line.split()) > 1}
    missing = [a for a in accents if a not in languages]
    if missing:
        raise CorpusError(f"espeak-ng has no voice for {', '.join(missing)} (`espeak-ng "
                          "--voices=en` lists the English ones)")
    folder = data / "voices" / "!v"
    unknown = [v for v in variants if not (folder / v).is_file()]
    if unknown:
        raise CorpusError(f"espeak-ng has no variant {', '.join(unknown)} in {folder} "
                          "(`espeak-ng --voices=variant` lists them; names are case-sensitive)")


def espeak_synthesize(argv: list[str]) -> tuple[np.ndarray, int]:
    """Run espeak-ng; its WAV from stdout as (float32 samples, rate)."""
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        reason = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise CorpusError(f"espeak-ng failed on {' '.join(argv[1:])}: {reason}")
    wave, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float32")
    return wave, rate


Synthesize = Callable[[list[str]], tuple[np.ndarray, int]]


def make_clip(clip: Clip, *, espeak: str, seed: int, noise_share: float,
              synthesize: Synthesize = espeak_synthesize) -> tuple[np.ndarray, int]:
    """One clip's 16 kHz samples and the speed-ups it needed to fit MAX_WORD_S."""
    for speedup in range(SPEEDUPS + 1):
        rng = clip_rng(seed, clip)  # the same draws on every try, only the rate changes
        wave, rate = synthesize(espeak_argv(espeak, clip, rng, speedup=1.2**speedup))
        word = trim_silence(to_16k(wave, rate))
        if word.size <= MAX_WORD_S * SAMPLE_RATE:
            break
    return fit_clip(word, rng, noise_share=noise_share), speedup


# --- the corpus ---------------------------------------------------------------------


def build(out: Path, *, words: Sequence[str] = WORDS, accents: Sequence[str] = ACCENTS,
          variants: Sequence[str] = VARIANTS, speakers: Sequence[int] = (48, 8, 8),
          repeats: int = 2, seed: int = 0, noise_share: float = 0.5, jobs: int = 1,
          espeak: str = "espeak-ng", overwrite: bool = False,
          synthesize: Synthesize = espeak_synthesize, espeak_version: str = "",
          log: Callable[[str], None] = print) -> dict:
    """Make the corpus into ``out`` (written under a temporary name beside it, renamed when
    complete) and return its summary. ``synthesize`` runs espeak-ng (a test passes its own).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise CorpusError(f"{out} exists; pass --overwrite to replace it")
    if repeats < 1:
        raise CorpusError("--repeats must be >= 1")
    if len(set(words)) != len(words) or any(not re.fullmatch(r"[a-z]+", w) for w in words):
        raise CorpusError("words must be distinct and lower-case letters only")
    people = plan_speakers(accents, variants, speakers, seed)
    clips = plan_clips(words, people, repeats)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    started = time.monotonic()
    try:
        for word in words:
            (tmp / word).mkdir()

        def one(clip: Clip) -> int:
            wave, speedups = make_clip(clip, espeak=espeak, seed=seed,
                                       noise_share=noise_share, synthesize=synthesize)
            soundfile.write(tmp / clip.relative, wave, SAMPLE_RATE, subtype="PCM_16")
            return speedups

        sped_up, last = 0, started
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for i, speedups in enumerate(pool.map(one, clips), 1):
                sped_up += speedups > 0
                now = time.monotonic()
                if now - last >= 5 or i == len(clips):
                    last, spent = now, now - started
                    log(f"[{i}/{len(clips)}] {100 * i / len(clips):.0f}%  {spent:.0f} s, "
                        f"~{spent / i * (len(clips) - i):.0f} s left")
        for split, name in (("validation", "validation_list.txt"),
                            ("test", "testing_list.txt")):
            (tmp / name).write_text("".join(
                f"{c.relative}\n" for c in clips if c.speaker.split == split))
        summary = {
            "words": list(words), "repeats": repeats, "seed": seed, "noise_share": noise_share,
            "espeak": espeak_version, "sample_rate": SAMPLE_RATE, "clip_samples": CLIP_SAMPLES,
            "clips": {s: sum(c.speaker.split == s for c in clips) for s in SPLITS},
            "speakers_per_split": {s: sum(p.split == s for p in people) for s in SPLITS},
            "variants_per_split": {s: sorted({p.variant for p in people if p.split == s})
                                   for s in SPLITS},
            "sped_up_clips": sped_up, "build_s": round(time.monotonic() - started, 1),
            "speakers": [asdict(p) for p in people],
        }
        (tmp / "espeak_corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def dotsim_program() -> str:
    """The ``dotsim`` beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "dotsim"
    return str(beside) if beside.is_file() else (shutil.which("dotsim") or "dotsim")


def prepare_argv(source: Path, out: str, *, ray: bool = False,
                 overwrite: bool = False) -> list[str]:
    """``dotsim prepare``'s command line; in process (``--no-ray``) unless ``ray``: the
    default corpus has more than 2000 clips, where prepare would start Ray by default."""
    return [dotsim_program(), "prepare", str(source), "--out", str(out),
            *(["--overwrite"] if overwrite else []), "--ray" if ray else "--no-ray"]


def _words(value: str) -> list[str]:
    """``--words``: comma-separated words, or @FILE with one word a line."""
    if value.startswith("@"):
        text = Path(value[1:]).read_text()
        return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]
    return [w.strip() for w in value.split(",") if w.strip()]


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n"
               "  .venv/bin/python bench/make_espeak_corpus.py --out /tmp/espeak-corpus \\\n"
               "      --prepare /tmp/espeak-prepared\n"
               "  dotsim sweep --protocol fskil --data /tmp/espeak-prepared ...\n\n"
               "Needs espeak-ng (Debian/Ubuntu: sudo apt-get install espeak-ng).\n"
               "More: docs/speech-corpus.md")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to create (Speech Commands v2 layout)")
    parser.add_argument("--speakers", type=int, nargs=3, default=(48, 8, 8),
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="speakers per split (default: 48 8 8, as the synthetic corpus)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="clips per word and speaker (default: 2)")
    parser.add_argument("--words", type=_words, default=list(WORDS),
                        help="comma-separated words, or @FILE (one a line); default: the 35 "
                             "Speech Commands v2 words")
    parser.add_argument("--accents", type=_names, default=list(ACCENTS),
                        help=f"espeak-ng English voices (default: {','.join(ACCENTS)})")
    parser.add_argument("--variants", type=_names, default=list(VARIANTS),
                        help="espeak-ng voice variants, cut into consecutive blocks for "
                             "train, validation, test, in proportion to --speakers (default: "
                             "24; the last 3 and 3 are held out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-share", type=float, default=0.5,
                        help="share of clips mixed with coloured noise at 10-35 dB SNR "
                             "(default: 0.5, as the synthetic corpus; 0: clean)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="espeak-ng processes at once (default: the CPU count)")
    parser.add_argument("--espeak", default=None, help="the espeak-ng program (default: PATH)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--prepare", metavar="PREPARED", default=None,
                        help="then run `dotsim prepare OUT --out PREPARED --no-ray` "
                             "(with --overwrite: also --overwrite)")
    parser.add_argument("--ray", action="store_true",
                        help="with --prepare: compute features over Ray instead of in process")
    args = parser.parse_args(argv)
    try:
        espeak = find_espeak(args.espeak)
        version, data = espeak_info(espeak)
        check_voices(espeak, data, args.accents, args.variants)
        print(f"{version}\n{len(args.words)} words x {sum(args.speakers)} speakers "
              f"({'/'.join(map(str, args.speakers))}) x {args.repeats} repeats = "
              f"{len(args.words) * sum(args.speakers) * args.repeats} clips -> {args.out}",
              flush=True)
        summary = build(args.out, words=args.words, accents=args.accents,
                        variants=args.variants, speakers=args.speakers, repeats=args.repeats,
                        seed=args.seed, noise_share=args.noise_share, jobs=args.jobs,
                        espeak=espeak, overwrite=args.overwrite, espeak_version=version,
                        log=lambda line: print(line, flush=True))
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} in {summary['build_s']} s: clips "
          + ", ".join(f"{s} {summary['clips'][s]}" for s in SPLITS) + "; speakers "
          + ", ".join(f"{s} {summary['speakers_per_split'][s]}" for s in SPLITS)
          + f"; {summary['sped_up_clips']} clip(s) re-spoken faster to fit 1 s")
    if len(args.words) < 35:
        print(f"note: --protocol fskil needs base_classes + ways * (sessions - 1) words "
              f"(35 by default); this corpus has {len(args.words)}")
    command = prepare_argv(args.out, args.prepare or "data/espeak", ray=args.ray,
                           overwrite=args.overwrite)
    if not args.prepare:
        print("prepare it with:\n  " + shlex.join(command))
        return 0
    print("running: " + shlex.join(command), flush=True)
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
