"""An embedded source-filter keyword synthesizer: a stand-in for Speech Commands v2.

Each of the 35 Speech Commands words is a fixed *recipe*: a short sequence of segments,
vowels from a small shared inventory (F1-F3 targets, with glides between neighbours) and
consonant-like noise bursts (a band per burst type). Words come in families of
``FAMILY_SIZE`` that share the same segments, with nearly the same durations, in different
orders, so a time-averaged spectrum can name the family but hardly the member, while the
sequence names the word.

A clip is rendered the way speech is produced: an excitation (a glottal pulse train at
the speaker's pitch mixed with breath noise, or noise alone in a burst) passes through a
time-varying filter (the vocal tract: a cascade of four 2-pole formant resonators, or the
burst's band). So the WORD lives in the spectral envelope (formant part) and the SPEAKER
in the excitation (residual part: pitch, breathiness), with the vocal-tract length as the
one speaker trait in the envelope. Filtering is done frame-wise in the frequency domain
(STFT of the excitation times each frame's all-pole response, then overlap-add), batched
over clips, so there is no Python loop over samples.

Randomness: a ``Speaker`` fixes f0, formant scale, breathiness and speed; each clip then
jitters tempo, segment durations, onset, formant targets (and their undershoot), pitch
contour, loudness and level, leaves out some bursts, and may carry coloured background
noise at a random SNR. Everything is drawn from one
``numpy.random.Generator``, so a seed gives bit-identical audio.

Calibration
-----------
Measured on ``make_corpus(seed)`` at the defaults (train: 3360 clips of 48 speakers;
scored on test: 560 clips of 8 other speakers), features from
``workers.audio.extract_features`` (101 frames x 40 log-mel), linear probes with
``workers.probes.linear_probe_accuracy`` (multinomial logistic regression, L-BFGS, L2
1e-3). "Spoken span": frames within 30 dB of the clip's loudest. Seed 0 / seed 1; chance
is 2.9% for the word, 12.5% for the speaker:

- word from the time-averaged speech log-mel (one 40-dim mean per clip): 29.5% / 30.9%
  (mean and std: 46.4% / 46.6%); the average names the family, not its member.
- word from the speech log-mel pooled into 5 fixed parts of the clip: 58.0% / 66.1%;
  into 5 parts of the spoken span: 81.1% / 80.9%.
- word from a small 1-D CNN on the speech log-mel (3 conv layers of 64 channels, global
  max pool; AdamW) after 60 s on one CPU core (~40 epochs): 97.1% / 97.3% (94% after 5 s).
- word from formant vs residual, 4 parts of the spoken span: 80.4% / 78.9% vs
  33.9% / 32.1% (time averages: 28.2% / 30.4% vs 3.9% / 3.2%).
- speaker among the 8 test speakers (fit on the even word indices, scored on the odd
  ones; mean and std over the spoken span): residual 68.8% / 68.4% vs formant
  37.5% / 42.6% (speech 73.9% / 73.2%).

Making the whole default corpus (4480 clips) takes about 10 s on one core.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile

from workers.constants import CLIP_SAMPLES, SAMPLE_RATE, SPLITS

WORDS: tuple[str, ...] = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on",
    "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual",
    "wow", "yes", "zero",
)  # fmt: skip

# Vowel targets F1-F3 in Hz for an adult male vocal tract (Hillenbrand et al. 1995,
# rounded); a speaker's formant_scale stretches them.
VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (270.0, 2290.0, 3010.0),
    "e": (530.0, 1840.0, 2480.0),
    "ae": (660.0, 1720.0, 2410.0),
    "a": (730.0, 1090.0, 2440.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
    "er": (490.0, 1350.0, 1690.0),
}
F4_HZ = 3500.0
FORMANT_BANDWIDTHS_HZ = (80.0, 100.0, 140.0, 250.0)
# Consonant-like bursts: band centre (Hz), bandwidth (Hz), amplitude relative to a vowel.
BURSTS: dict[str, tuple[float, float, float]] = {
    "s": (5500.0, 2500.0, 0.35),
    "sh": (2800.0, 1200.0, 0.45),
    "k": (1800.0, 700.0, 0.5),
    "t": (4200.0, 1600.0, 0.4),
}
FAMILY_SIZE = 4  # words that share one multiset of segments
_RECIPE_SEED = 20_240_917
_MEMBER_STRETCH = 0.25  # log-sd of a member's own duration factors

# Variation of a clip beyond its speaker and word (log-sds unless stated): what makes the
# task not trivial. The calibration in the module docstring was measured with these.
_TEMPO_JITTER = 0.07  # the clip's overall speaking rate
_DURATION_JITTER = 0.2  # each segment's duration
_VTL_JITTER = 0.03  # the clip's formant scale
_PITCH_JITTER = 0.015  # the clip's mean f0
_STRESS_JITTER = 0.15  # each segment's loudness
_FORMANT_JITTER = 0.06  # log-sd of each vowel target formant
_UNDERSHOOT = 0.35  # largest share by which a vowel target moves towards _NEUTRAL_VOWEL
_NEUTRAL_VOWEL = np.array([500.0, 1500.0, 2500.0, F4_HZ])  # schwa: a uniform tube
_BURST_DROP = 0.15  # chance that a burst is silent
_BACKGROUND_CHANCE = 0.5  # share of clips with background noise ...
_SNR_DB = (10.0, 35.0)  # ... at an SNR drawn from this range
_GAIN_DB = (-20.0, 0.0)  # clip level below the 0.9 peak

# STFT used for the filtering: 16 ms Hann windows every 8 ms (the windows sum to 1) and a
# 512-point FFT, so the decaying (causal) resonator response has 16 ms before it wraps.
_WIN = 256
_HOP = 128
_NFFT = 512
_N_FRAMES = CLIP_SAMPLES // _HOP + 1  # frame t is centred on sample t * _HOP
_CHUNK = 128  # clips filtered at once: keeps the STFT arrays near 100 MB
_RAMP_S = 0.012  # onset/offset ramp of every voiced run and burst
_MAX_WORD_S = 0.9
_GRID_STEP = 16  # samples per control point (1 ms)
_GRID_T = np.arange(CLIP_SAMPLES // _GRID_STEP + 1) * _GRID_STEP / SAMPLE_RATE  # seconds
_FRAME_T = np.arange(_N_FRAMES) * _HOP / SAMPLE_RATE  # STFT frame centres, seconds


@dataclass(frozen=True)
class Segment:
    """One piece of a word recipe."""

    kind: str  # "vowel" or "burst"
    name: str  # a key of VOWELS or BURSTS
    duration: float  # seconds at speed 1


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: the traits that stay fixed across its clips."""

    id: str  # "spk017"
    f0: float  # mean pitch in Hz
    formant_scale: float  # vocal-tract length: > 1 is shorter (higher formants)
    breathiness: float  # share of noise in the voiced excitation's power, in [0, 1)
    speed: float  # duration scale: > 1 speaks slower (longer segments)


@dataclass(frozen=True, eq=False)
class Corpus:
    """One split of the synthetic corpus."""

    waves: np.ndarray  # (N, CLIP_SAMPLES) float32 in [-1, 1]
    labels: np.ndarray  # (N,) int64 indices into WORDS
    speakers: np.ndarray  # (N,) str speaker ids

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class _ClipPlan:
    """Everything random about one clip, drawn before any signal processing.

    Slow controls live on the 1 ms grid ``_GRID_T`` (G points); noise is per sample.
    """

    f0: np.ndarray  # (G,) pitch in Hz
    pulse_phase: float  # where in its period the pulse train starts, in [0, 1)
    breathiness: float  # the speaker's noise share of the voiced excitation's power
    voiced: np.ndarray  # (G,) amplitude of the voiced excitation
    bursts: np.ndarray  # (G, K) amplitude of each burst's noise
    burst_bands: np.ndarray  # (K, 2) centre and bandwidth (Hz) of each burst
    formants: np.ndarray  # (_N_FRAMES, 4) F1-F4 in Hz at the STFT frame centres
    noise: np.ndarray  # (CLIP_SAMPLES,) float32 white noise: breath and bursts
    background: np.ndarray  # (CLIP_SAMPLES,) float32 white noise, coloured later
    noise_colour: float  # exponent alpha of the 1/f^alpha background spectrum
    snr_db: float  # background level; inf means none
    gain_db: float  # level below the 0.9 peak


# --- word recipes -------------------------------------------------------------------------


def _family_segments(rng: np.random.Generator) -> list[Segment]:
    """The shared multiset of a family: 2-3 distinct vowels and 1-2 distinct bursts."""
    n_vowels = int(rng.integers(2, 4))
    n_bursts = 1 if n_vowels == 3 else int(rng.integers(1, 3))
    vowels = rng.choice(list(VOWELS), n_vowels, replace=False)
    bursts = rng.choice(list(BURSTS), n_bursts, replace=False)
    return [Segment("vowel", str(v), float(rng.uniform(0.09, 0.18))) for v in vowels] + [
        Segment("burst", str(b), float(rng.uniform(0.04, 0.09))) for b in bursts
    ]


@functools.cache
def word_recipes() -> tuple[tuple[Segment, ...], ...]:
    """The recipe of every word, aligned with WORDS; fixed by ``_RECIPE_SEED``.

    Word i belongs to family i // FAMILY_SIZE; the members of a family are distinct
    orders of the family's segments. No two words share a sequence of segment names.
    """
    recipes: list[tuple[Segment, ...]] = []
    seen: set[tuple[str, ...]] = set()
    for family in range(-(-len(WORDS) // FAMILY_SIZE)):
        rng = np.random.default_rng([_RECIPE_SEED, family])
        segments = _family_segments(rng)
        orders = list(itertools.permutations(segments))
        members = 0
        for k in rng.permutation(len(orders)):
            names = tuple(s.name for s in orders[k])
            if names in seen:
                continue
            seen.add(names)
            # Each member stretches the shared durations a little, so a time-averaged
            # spectrum carries some (not much) information about the member.
            stretch = np.exp(rng.normal(0.0, _MEMBER_STRETCH, len(names)))
            recipes.append(
                tuple(
                    replace(s, duration=float(s.duration * f))
                    for s, f in zip(orders[k], stretch, strict=True)
                )
            )
            members += 1
            if members == FAMILY_SIZE:
                break
        assert members == FAMILY_SIZE, "a family has fewer distinct orders than FAMILY_SIZE"
    return tuple(recipes[: len(WORDS)])


# --- speakers -----------------------------------------------------------------------------


def make_speakers(n: int, seed: int) -> list[Speaker]:
    """``n`` random speakers "spk000", "spk001", ...; the same seed gives the same speakers.

    Each is, with even odds, low-pitched with a long vocal tract or high-pitched with a
    short one (adult male and female voices), so pitch and formant scale correlate as in
    real speech, but only loosely within a group.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    speakers = []
    for i in range(n):
        low = rng.random() < 0.5
        f0 = rng.uniform(85.0, 150.0) if low else rng.uniform(160.0, 250.0)
        scale = rng.uniform(0.85, 1.02) if low else rng.uniform(0.98, 1.2)
        speakers.append(
            Speaker(
                id=f"spk{i:03d}",
                f0=float(f0),
                formant_scale=float(scale),
                breathiness=float(rng.uniform(0.0, 0.6)),
                speed=float(rng.uniform(0.8, 1.25)),
            )
        )
    return speakers


# --- one clip's random plan ---------------------------------------------------------------


def _timeline(recipe: Sequence[Segment], speaker: Speaker, rng: np.random.Generator):
    """Start and end (s) of each segment after tempo, duration jitter and onset jitter."""
    tempo = speaker.speed * np.exp(rng.normal(0.0, _TEMPO_JITTER))
    durations = np.array([s.duration for s in recipe]) * tempo
    durations *= np.exp(rng.normal(0.0, _DURATION_JITTER, len(recipe)))
    durations *= min(1.0, _MAX_WORD_S / durations.sum())  # a slow speaker still fits in 1 s
    total = durations.sum()
    onset = rng.uniform(0.03, max(0.03, 1.0 - total - 0.04))
    ends = onset + np.cumsum(durations)
    return ends - durations, ends


def _trapezoids(t: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """Sum of non-overlapping unit trapezoids (ramps of _RAMP_S) over the times t."""
    out = np.zeros_like(t)
    for start, end in spans:
        ramp = min(_RAMP_S, 0.45 * (end - start))
        out += np.interp(t, [start, start + ramp, end - ramp, end], [0.0, 1.0, 1.0, 0.0])
    return out


def _voiced_runs(recipe, starts, ends) -> list[tuple[float, float]]:
    """Spans of consecutive vowels: voicing continues through a glide."""
    runs: list[tuple[float, float]] = []
    for seg, start, end in zip(recipe, starts, ends, strict=True):
        if seg.kind != "vowel":
            continue
        if runs and np.isclose(runs[-1][1], start):
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _formant_track(recipe, starts, ends, speaker, rng) -> np.ndarray:
    """(frames, 4) F1-F4: each vowel holds its target over its middle half, glides between."""
    vtl = speaker.formant_scale * np.exp(rng.normal(0.0, _VTL_JITTER))
    anchor_t, anchor_f = [], []
    for seg, start, end in zip(recipe, starts, ends, strict=True):
        if seg.kind != "vowel":
            continue
        target = np.array([*VOWELS[seg.name], F4_HZ]) * np.exp(rng.normal(0.0, _FORMANT_JITTER, 4))
        # Undershoot: a quickly or carelessly said vowel drifts towards the neutral one.
        target += rng.uniform(0.0, _UNDERSHOOT) * (_NEUTRAL_VOWEL - target)
        quarter = 0.25 * (end - start)
        anchor_t += [start + quarter, end - quarter]
        anchor_f += [target, target]
    anchor_f = np.array(anchor_f) * vtl
    return np.stack([np.interp(_FRAME_T, anchor_t, anchor_f[:, k]) for k in range(4)], axis=1)


def _pitch_contour(speaker, start, end, rng) -> np.ndarray:
    """f0 (Hz) on the grid: a per-clip offset, a falling declination and a slow wobble."""
    f0 = speaker.f0 * np.exp(rng.normal(0.0, _PITCH_JITTER))
    fall = rng.uniform(0.0, 0.06)
    rate, depth, phase = rng.uniform(2.0, 5.0), rng.uniform(0.0, 0.02), rng.uniform(0, 2 * np.pi)
    progress = np.clip((_GRID_T - start) / (end - start), 0.0, 1.0)
    return f0 * (1.0 + fall * (0.5 - progress) + depth * np.sin(2 * np.pi * rate * _GRID_T + phase))


def _plan_clip(word_index: int, speaker: Speaker, rng: np.random.Generator) -> _ClipPlan:
    """Draw all of one clip's randomness, in a fixed order (determinism depends on it)."""
    if not 0 <= word_index < len(WORDS):
        raise ValueError(f"word_index must be in [0, {len(WORDS)}), got {word_index}")
    recipe = word_recipes()[word_index]
    starts, ends = _timeline(recipe, speaker, rng)
    formants = _formant_track(recipe, starts, ends, speaker, rng)
    stress = np.exp(rng.normal(0.0, _STRESS_JITTER, len(recipe)))
    released = rng.random(len(recipe)) >= _BURST_DROP  # else an unreleased stop: silence
    is_vowel = np.array([seg.kind == "vowel" for seg in recipe])
    voiced = _trapezoids(_GRID_T, _voiced_runs(recipe, starts, ends))
    voiced *= np.interp(_GRID_T, ((starts + ends) / 2)[is_vowel], stress[is_vowel])
    burst_at = np.flatnonzero(~is_vowel)
    bursts = np.stack(
        [
            _trapezoids(_GRID_T, [(starts[i], ends[i])])
            * (BURSTS[recipe[i].name][2] * stress[i] * released[i])
            for i in burst_at
        ],
        axis=1,
    )
    has_background = rng.random() < _BACKGROUND_CHANCE
    return _ClipPlan(
        f0=_pitch_contour(speaker, starts[0], ends[-1], rng),
        pulse_phase=float(rng.random()),
        breathiness=speaker.breathiness,
        voiced=voiced,
        bursts=bursts,
        burst_bands=np.array([BURSTS[recipe[i].name][:2] for i in burst_at])
        * speaker.formant_scale,
        formants=formants,
        noise=rng.standard_normal(CLIP_SAMPLES, dtype=np.float32),
        background=rng.standard_normal(CLIP_SAMPLES, dtype=np.float32),
        noise_colour=float(rng.uniform(0.0, 1.5)),
        snr_db=float(rng.uniform(*_SNR_DB)) if has_background else np.inf,
        gain_db=float(rng.uniform(*_GAIN_DB)),
    )


# --- signal processing (batched) ----------------------------------------------------------

_OMEGA = 2 * np.pi * np.arange(_NFFT // 2 + 1) / _NFFT  # bin frequencies, rad/sample
# Glottal roll-off plus lip radiation: about -6 dB/octave above 300 Hz.
_TILT = (1.0 / np.sqrt(1.0 + (_OMEGA * SAMPLE_RATE / (2 * np.pi * 300.0)) ** 2)).astype(np.float32)
_WINDOW = np.hanning(_WIN + 1)[:-1].astype(np.float32)  # periodic: sums to 1 at hop _WIN/2


def _pole_pair(freq_hz: np.ndarray, bw_hz: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (a1, a2) of 1 + a1 z^-1 + a2 z^-2 with poles at freq, bandwidth bw."""
    r = np.exp(-np.pi * np.asarray(bw_hz) / SAMPLE_RATE)
    return -2 * r * np.cos(2 * np.pi * freq_hz / SAMPLE_RATE), r * r


def _unit_power(response: np.ndarray) -> np.ndarray:
    """Scale responses (..., bins) to unit mean power gain: white input keeps its power."""
    return response / np.sqrt(np.mean(np.abs(response) ** 2, axis=-1, keepdims=True))


def _vowel_response(formants: np.ndarray) -> np.ndarray:
    """(B, T, bins) complex frequency response of the formant cascade, unit power gain."""
    poly = np.zeros((*formants.shape[:2], 9), dtype=np.float32)  # A(z): four pole pairs
    poly[..., 0] = 1.0
    for k, bw in enumerate(FORMANT_BANDWIDTHS_HZ):
        a1, a2 = _pole_pair(formants[..., k], bw)
        prev = poly.copy()
        poly[..., 1:] += a1[..., None] * prev[..., :-1]
        poly[..., 2:] += a2[..., None] * prev[..., :-2]
    return _unit_power(_TILT / scipy.fft.rfft(poly, n=_NFFT, axis=-1))


def _burst_response(bands: np.ndarray) -> np.ndarray:
    """(K, bins) complex response of each burst's 2-pole band, unit power gain."""
    a1, a2 = _pole_pair(np.minimum(bands[:, 0], 0.45 * SAMPLE_RATE), bands[:, 1])
    z1 = np.exp(-1j * _OMEGA)
    return _unit_power(1.0 / (1.0 + a1[:, None] * z1 + a2[:, None] * z1 * z1))


def _upsample(grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of (B, G) controls to (B, CLIP_SAMPLES) float32 samples."""
    grid = grid.astype(np.float32)
    frac = np.arange(_GRID_STEP, dtype=np.float32) / _GRID_STEP
    left = grid[:, :-1, None]
    return (left + frac * (grid[:, 1:, None] - left)).reshape(len(grid), -1)


def _excitation(plans: Sequence[_ClipPlan]) -> np.ndarray:
    """(B, CLIP_SAMPLES) source: pulses plus breath noise where voiced, noise in bursts."""
    f0 = _upsample(np.stack([p.f0 for p in plans]))
    phase = np.cumsum(f0 / np.float64(SAMPLE_RATE), axis=1)  # float64: 16000 terms
    phase += np.array([[p.pulse_phase] for p in plans])
    period_starts = np.diff(np.floor(phase), axis=1, prepend=0.0) > 0
    pulses = np.where(period_starts, np.sqrt(SAMPLE_RATE / f0), 0.0)  # one per period: power 1
    breath = np.array([[p.breathiness] for p in plans])
    voiced = _upsample(np.stack([p.voiced for p in plans]))
    bursts = _upsample(np.stack([p.bursts.sum(axis=1) for p in plans]))
    noise = np.stack([p.noise for p in plans])
    source = voiced * (np.sqrt(1 - breath) * pulses + np.sqrt(breath) * noise) + bursts * noise
    return source.astype(np.float32)


def _frame_responses(plans: Sequence[_ClipPlan]) -> np.ndarray:
    """(B, T, bins) filter per frame: the vowel and burst responses mixed by their weights."""
    vowel = _vowel_response(np.stack([p.formants for p in plans]))
    at_frames = np.arange(_N_FRAMES) * (_HOP // _GRID_STEP)
    for i, plan in enumerate(plans):
        # The excitation already carries the amplitudes; the filter only mixes shapes.
        # eps keeps the vowel shape where both weights vanish (silence, ramps).
        voiced, bursts = plan.voiced[at_frames] + 1e-3, plan.bursts[at_frames]
        total = voiced + bursts.sum(axis=1)
        vowel[i] *= (voiced / total)[:, None]
        # (T, K, 1) x (1, K, bins) summed over K (no BLAS: its rounding may vary by threads)
        shares = (bursts / total[:, None])[:, :, None]
        vowel[i] += (shares * _burst_response(plan.burst_bands)[None]).sum(axis=1)
    return vowel


def _filter(excitation: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Time-varying filtering by overlap-add: (B, samples) x (B, T, bins) -> (B, samples)."""
    half = _WIN // 2
    padded = np.pad(excitation, ((0, 0), (half, _NFFT)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, _WIN, axis=-1)[:, ::_HOP]
    spectra = scipy.fft.rfft(frames[:, :_N_FRAMES] * _WINDOW, n=_NFFT, axis=-1)
    pieces = scipy.fft.irfft(spectra * response, n=_NFFT, axis=-1).astype(np.float32)
    # Frame t starts at sample t * _HOP - half; add its _NFFT samples hop by hop.
    n_hops = _NFFT // _HOP
    out = np.zeros((len(excitation), _N_FRAMES + n_hops - 1, _HOP), dtype=np.float32)
    for k in range(n_hops):
        out[:, k : k + _N_FRAMES] += pieces[..., k * _HOP : (k + 1) * _HOP]
    return out.reshape(len(excitation), -1)[:, half : half + CLIP_SAMPLES]


def _add_background(clean: np.ndarray, plans: Sequence[_ClipPlan]) -> np.ndarray:
    """Add 1/f^alpha noise at each clip's SNR (relative to the clip's mean power)."""
    freqs = np.fft.rfftfreq(CLIP_SAMPLES, 1.0 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    alpha = np.array([p.noise_colour for p in plans])[:, None]
    spectra = scipy.fft.rfft(np.stack([p.background for p in plans]), axis=-1)
    noise = scipy.fft.irfft(spectra * freqs ** (-alpha / 2), n=CLIP_SAMPLES, axis=-1)
    noise /= np.sqrt(np.mean(noise**2, axis=-1, keepdims=True))
    power = np.mean(clean.astype(np.float64) ** 2, axis=-1, keepdims=True)
    # A -60 dB floor even in "clean" clips: real recordings are never digitally silent.
    snr = np.minimum([[p.snr_db] for p in plans], 60.0)
    return clean + noise * np.sqrt(power * 10 ** (-snr / 10))


def _render(plans: Sequence[_ClipPlan]) -> np.ndarray:
    """(B, CLIP_SAMPLES) float32 audio for the plans, peak 0.9 x the clip's gain."""
    out = np.empty((len(plans), CLIP_SAMPLES), dtype=np.float32)
    for lo in range(0, len(plans), _CHUNK):
        chunk = plans[lo : lo + _CHUNK]
        wave = _filter(_excitation(chunk), _frame_responses(chunk))
        wave = _add_background(wave, chunk)
        peak = np.abs(wave).max(axis=-1, keepdims=True)
        gain = 0.9 * 10 ** (np.array([[p.gain_db] for p in chunk]) / 20)
        out[lo : lo + len(chunk)] = wave * (gain / peak)
    return out


# --- public entry points ------------------------------------------------------------------


def synthesize_batch(
    word_indices: Sequence[int], speakers: Sequence[Speaker], rng: np.random.Generator
) -> np.ndarray:
    """(N, CLIP_SAMPLES) float32 clips; clip i says WORDS[word_indices[i]] as speakers[i].

    The randomness is drawn clip by clip, so this equals N calls of ``synthesize`` with
    the same generator, only faster.
    """
    if len(word_indices) != len(speakers):
        raise ValueError("word_indices and speakers must have the same length")
    pairs = zip(word_indices, speakers, strict=True)
    return _render([_plan_clip(int(word), speaker, rng) for word, speaker in pairs])


def synthesize(word_index: int, speaker: Speaker, rng: np.random.Generator) -> np.ndarray:
    """One (CLIP_SAMPLES,) float32 clip of WORDS[word_index] said by ``speaker``."""
    return synthesize_batch([word_index], [speaker], rng)[0]


def make_corpus(
    seed: int = 0,
    speakers: tuple[int, int, int] = (48, 8, 8),
    clips_per_word_speaker: int = 2,
) -> dict[str, Corpus]:
    """A corpus split BY SPEAKER into "train", "validation" and "test".

    ``speakers`` gives the number of speakers per split; every speaker says every word
    ``clips_per_word_speaker`` times. The defaults give 3360 / 560 / 560 clips.
    Speaker ids run spk000, spk001, ... across the splits, so none is in two splits.
    Speaker k has its own generator (child k of ``SeedSequence(seed)``): its traits and
    clips depend only on ``seed`` and k, not on the split sizes.
    """
    if len(speakers) != 3 or min(speakers) < 1 or clips_per_word_speaker < 1:
        raise ValueError("speakers needs three counts >= 1 and clips_per_word_speaker >= 1")
    people = make_speakers(sum(speakers), seed)
    streams = np.random.SeedSequence(seed).spawn(len(people))
    corpus: dict[str, Corpus] = {}
    first = 0
    for split, count in zip(SPLITS, speakers, strict=True):
        words, who, waves = [], [], []
        members = zip(people[first : first + count], streams[first : first + count], strict=True)
        for speaker, stream in members:
            order = np.repeat(np.arange(len(WORDS)), clips_per_word_speaker)
            rng = np.random.default_rng(stream)
            waves.append(synthesize_batch(order, [speaker] * len(order), rng))
            words.append(order)
            who += [speaker.id] * len(order)
        corpus[split] = Corpus(
            waves=np.concatenate(waves),
            labels=np.concatenate(words).astype(np.int64),
            speakers=np.array(who),
        )
        first += count
    return corpus


def write_speech_commands(root: Path, corpus_by_split: Mapping[str, Corpus]) -> Path:
    """Write the corpus as a Speech Commands v2 folder (16-bit WAV) and return ``root``.

    Layout: ``<word>/<speaker>_nohash_<n>.wav`` (n counts a speaker's clips of a word),
    ``validation_list.txt`` and ``testing_list.txt`` with the relative paths of the
    "validation" and "test" clips (everything else is training, as in the real dataset),
    and an empty ``_background_noise_/`` folder.
    """
    unknown = set(corpus_by_split) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; allowed: {', '.join(SPLITS)}")
    root = Path(root)
    (root / "_background_noise_").mkdir(parents=True, exist_ok=True)
    listed: dict[str, list[str]] = {split: [] for split in SPLITS}
    for split, corpus in corpus_by_split.items():
        counts: dict[tuple[int, str], int] = {}
        for wave, label, speaker in zip(corpus.waves, corpus.labels, corpus.speakers, strict=True):
            n = counts.get((int(label), str(speaker)), 0)
            counts[(int(label), str(speaker))] = n + 1
            relative = f"{WORDS[label]}/{speaker}_nohash_{n}.wav"
            (root / WORDS[label]).mkdir(exist_ok=True)
            soundfile.write(root / relative, wave, SAMPLE_RATE, subtype="PCM_16")
            listed[split].append(relative)
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        (root / name).write_text("".join(f"{path}\n" for path in listed[split]))
    return root
