"""workers.audio and workers.burg: Burg LPC against librosa (both implementations),
residual and envelope, feature layout, load_wav."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile
import torch
import torchaudio
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import audio, burg, constants

FRAME = constants.HOP + constants.LPC_ORDER  # 180 samples: 160 new + 20 of history


# --------------------------------------------------------------------------------------
# Signals


def _poles_to_filter(radii, angles) -> np.ndarray:
    poles = np.asarray(radii) * np.exp(1j * np.asarray(angles))
    return np.real(np.poly(np.concatenate([poles, poles.conj()])))


def _ar(rng, rows, n, a, warmup=500) -> np.ndarray:
    """AR process x = e / A(z) (white e), after its start-up transient."""
    e = rng.standard_normal((rows, n + warmup))
    return scipy.signal.lfilter([1.0], a, e, axis=-1)[:, warmup:]


def _speech_like(rng, rows, n=FRAME) -> np.ndarray:
    """Voiced frames: a pulse train at a random pitch plus breath noise through 4 formant
    resonators, each row with its own pitch and formants, over a noise floor (without it
    the empty band above the formants makes Burg so ill-conditioned that librosa itself
    is off by more than 1e-5)."""
    out = np.empty((rows, n))
    warmup = 400
    for i in range(rows):
        freqs = np.sort(rng.uniform(250, 3800, 4))
        radii = np.exp(-np.pi * rng.uniform(60, 250, 4) / constants.SAMPLE_RATE)
        a = _poles_to_filter(radii, 2 * np.pi * freqs / constants.SAMPLE_RATE)
        source = np.zeros(n + warmup)
        source[rng.integers(0, 40):: int(constants.SAMPLE_RATE / rng.uniform(90, 260))] = 1.0
        source += 0.05 * rng.standard_normal(n + warmup)
        out[i] = scipy.signal.lfilter([1.0], a, source)[warmup:]
    # A recording's noise floor, 60 dB down.
    return out + 1e-3 * out.std() * rng.standard_normal(out.shape)


def _damped_sinusoids(rng, rows, n=FRAME, noise=1e-3) -> np.ndarray:
    t = np.arange(n)
    x = sum(np.exp(-t / rng.uniform(40, 200, (rows, 1)))
            * np.cos(rng.uniform(0.1, 3.0, (rows, 1)) * t + rng.uniform(0, 6.3, (rows, 1)))
            for _ in range(5))
    return x + noise * rng.standard_normal((rows, n))


def _signals(kind: str, rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "white":
        return rng.standard_normal((rows, FRAME))
    if kind == "ar2":
        return _ar(rng, rows, FRAME, [1.0, -1.6, 0.9])
    if kind == "resonant-ar8":
        a = _poles_to_filter([0.99, 0.98, 0.97, 0.95], [0.3, 1.1, 2.0, 2.7])
        return _ar(rng, rows, FRAME, a, warmup=3000)
    if kind == "speech-like":
        return _speech_like(rng, rows)
    if kind == "damped-sinusoids":
        return _damped_sinusoids(rng, rows)
    raise AssertionError(kind)


def _librosa_rows(x: np.ndarray, order: int) -> np.ndarray:
    flat = x.reshape(-1, x.shape[-1])
    return np.stack([librosa.lpc(row, order=order) for row in flat]).reshape(
        *x.shape[:-1], order + 1)


# --------------------------------------------------------------------------------------
# lpc against librosa, for both recursions: the compiled per-frame one (the CPU's) and
# the batched PyTorch one (accelerators'), which runs on the CPU too when asked to.

IMPLEMENTATIONS = ["compiled", "batched"]


def _use(implementation: str, monkeypatch) -> None:
    if implementation == "batched":
        monkeypatch.setattr(audio, "_COMPILED_DEVICES", ())


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request, monkeypatch):
    _use(request.param, monkeypatch)
    return request.param


@pytest.mark.parametrize("kind", ["white", "ar2", "resonant-ar8", "speech-like",
                                  "damped-sinusoids"])
@pytest.mark.parametrize("order", [1, 2, 8, 20, 40])
def test_lpc_matches_librosa_float64(kind, order, impl):
    x = _signals(kind, 24)
    got = audio.lpc(torch.from_numpy(x), order)
    assert got.shape == (24, order + 1) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _librosa_rows(x, order), rtol=0, atol=1e-5)
    assert torch.all(got[:, 0] == 1)


def test_lpc_any_leading_shape(impl):
    x = _signals("speech-like", 24).reshape(2, 3, 4, FRAME)
    got = audio.lpc(torch.from_numpy(x), 20)
    assert got.shape == (2, 3, 4, 21)
    np.testing.assert_allclose(got.numpy(), _librosa_rows(x, 20), rtol=0, atol=1e-5)
    one = audio.lpc(torch.from_numpy(x[0, 0, 0]), 20)  # a single frame, no batch
    np.testing.assert_allclose(one.numpy(), got[0, 0, 0].numpy(), rtol=0, atol=1e-8)
    assert audio.lpc(torch.zeros(0, FRAME), 20).shape == (0, 21)


@pytest.mark.parametrize("kind", ["ar2", "speech-like", "resonant-ar8"])
def test_lpc_float32_is_the_float64_result_rounded(kind, impl):
    # The recursion always runs in float64, so a float32 result differs from librosa on
    # the same (float32) samples by the final rounding: half an ulp, 6e-8 relative.
    x = _signals(kind, 24).astype(np.float32)
    got = audio.lpc(torch.from_numpy(x), 20)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _librosa_rows(x.astype(np.float64), 20),
                               rtol=1e-6, atol=1e-6)


def test_lpc_float32_stays_accurate_on_a_ringing_filter(impl):
    # Nearly noiseless frames: librosa's own float32 run can be far off (even overflow);
    # this one stays within float32 rounding of the float64 answer.
    rng = np.random.default_rng(1)
    x = _damped_sinusoids(rng, 16, noise=0).astype(np.float32)
    got = audio.lpc(torch.from_numpy(x), 20).numpy()
    want = _librosa_rows(x.astype(np.float64), 20)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_ill_conditioned_frames_are_redone_directly_and_still_match(impl):
    # Low noise makes the fast recursion lose digits; those frames take librosa's path.
    x = _damped_sinusoids(np.random.default_rng(2), 32, noise=1e-4)
    frames = torch.from_numpy(x)
    for _, *_, redo in (burg.burg_frames(frames, 20, False), burg.burg_batched(frames, 20)):
        assert 0 < int(redo.sum()) < len(x)
    np.testing.assert_allclose(audio.lpc(frames, 20).numpy(), _librosa_rows(x, 20),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lpc_degenerate_frames_are_finite(dtype, impl):
    t = torch.arange(FRAME, dtype=torch.float64)
    impulse = torch.zeros(FRAME, dtype=torch.float64)
    impulse[FRAME // 2] = 1
    ends = torch.zeros(FRAME, dtype=torch.float64)
    ends[[0, -1]] = 1
    frames = torch.stack([
        torch.zeros(FRAME, dtype=torch.float64),        # silent
        torch.full((FRAME,), 0.3, dtype=torch.float64),  # constant
        torch.cos(0.3 * t),                              # a pure tone: exact at order 2
        impulse, ends,
        1e-30 * torch.randn(FRAME, dtype=torch.float64),  # squares underflow in float32
        torch.full((FRAME,), 3e4, dtype=torch.float64),    # loud constant
    ]).to(dtype)
    a = audio.lpc(frames, 20)
    assert torch.isfinite(a).all()
    assert torch.all(a[0] == torch.eye(1, 21, dtype=dtype)[0])  # silence: [1, 0, ..., 0]
    # A constant is predicted exactly at order 1 (librosa gives the same [1, -1, 0, ...]).
    for row in (1, 6):
        torch.testing.assert_close(a[row, :2], torch.tensor([1.0, -1.0], dtype=dtype))
        assert a[row, 2:].abs().max() < 1e-6


def test_redone_frames_land_in_their_rows_with_their_residual(impl):
    # The direct redo of some frames must keep every row, and its residual, in place.
    x = np.concatenate([_signals("speech-like", 12),
                        _damped_sinusoids(np.random.default_rng(2), 12, noise=1e-4)])
    x = x[np.random.default_rng(0).permutation(len(x))]
    want = _librosa_rows(x, 20)
    a, e = audio.lpc_residual(torch.from_numpy(x), 20)
    np.testing.assert_allclose(a.numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.numpy(), audio.lpc(torch.from_numpy(x), 20).numpy(), atol=0)
    want_e = np.stack([scipy.signal.lfilter(ai, [1.0], xi)[20:]
                       for ai, xi in zip(a.numpy(), x, strict=True)])
    np.testing.assert_allclose(e.numpy(), want_e, rtol=0, atol=1e-12 * np.abs(x).max())


def test_lpc_rows_are_independent_of_their_neighbours(impl):
    x = _signals("speech-like", 6)
    mixed = np.concatenate([x[:3], np.zeros((2, FRAME)), np.ones((1, FRAME)), x[3:]])
    got = audio.lpc(torch.from_numpy(mixed), 20).numpy()
    np.testing.assert_allclose(got[[0, 1, 2, 6, 7, 8]], _librosa_rows(x, 20), atol=1e-5)


@pytest.mark.parametrize("order", [0, -1, FRAME, FRAME + 5])
def test_lpc_rejects_an_order_outside_its_range(order):
    with pytest.raises(ValueError, match=r"\[1, 179\]"):
        audio.lpc(torch.randn(3, FRAME), order)


def test_lpc_rejects_integer_frames():
    with pytest.raises(TypeError, match="floating"):
        audio.lpc(torch.ones(2, FRAME, dtype=torch.int16), 4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), order=st.integers(1, 24),
       extra=st.integers(0, 200), rows=st.integers(1, 5))
def test_lpc_matches_librosa_on_random_shapes(seed, order, extra, rows):
    rng = np.random.default_rng(seed)
    n = 4 * order + extra  # Burg is well posed with a few samples per coefficient
    x = _ar(rng, rows, n, [1.0, -0.9, 0.5]) * 10.0 ** rng.uniform(-4, 4)
    want = _librosa_rows(x, order)
    for implementation in IMPLEMENTATIONS:
        with pytest.MonkeyPatch.context() as monkeypatch:
            _use(implementation, monkeypatch)
            np.testing.assert_allclose(audio.lpc(torch.from_numpy(x), order).numpy(), want,
                                       rtol=0, atol=1e-5, err_msg=implementation)


# --------------------------------------------------------------------------------------
# Residual and envelope


def test_frame_residual_is_lfilter_with_the_frame_history():
    x = _signals("speech-like", 8)
    a = audio.lpc(torch.from_numpy(x), 20)
    got = audio.frame_residual(torch.from_numpy(x), a).numpy()
    want = np.stack([scipy.signal.lfilter(ai, [1.0], xi)[20:]
                     for ai, xi in zip(a.numpy(), x, strict=True)])
    assert got.shape == (8, constants.HOP)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(x).max())
    # float32: e is a small difference of terms up to |a|_1 max|x|, each rounded.
    got32 = audio.frame_residual(torch.from_numpy(x).float(), a.float()).numpy()
    bound = 1e-6 * np.abs(a.numpy()).sum(-1).max() * np.abs(x).max()
    np.testing.assert_allclose(got32, want, rtol=0, atol=bound)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lpc_residual_is_frame_residual_of_lpc_on_overlapping_frames(dtype, impl):
    # The production input: an unfold view whose frames share their history samples.
    wave = torch.from_numpy(_signals("speech-like", 100).reshape(-1)[:16000]).to(dtype)
    frames = audio.frames_for_lpc(wave, 20, 160)
    a, e = audio.lpc_residual(frames, 20)
    assert a.dtype == e.dtype == dtype and e.shape == (100, 160)
    torch.testing.assert_close(a, audio.lpc(frames.contiguous(), 20), rtol=0, atol=0)
    want = audio.frame_residual(frames.double(), a.double())
    # float32: the residual is a small difference of terms up to |a|_1 max|x|.
    bound = (1e-6 if dtype == torch.float32 else 1e-12) * a.abs().sum(-1).max() * wave.abs().max()
    torch.testing.assert_close(e.double(), want, rtol=0, atol=float(bound))


def test_lpc_takes_half_precision_frames():
    x = torch.from_numpy(_signals("speech-like", 8)).bfloat16()
    a = audio.lpc(x, 20)
    assert a.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), audio.lpc(x.float(), 20), rtol=1e-2, atol=1e-2)


def test_frames_carry_the_previous_order_samples_as_history():
    wave = torch.arange(1, 16001, dtype=torch.float32)
    frames = audio.frames_for_lpc(wave, 20, 160)
    assert frames.shape == (100, 180)
    assert torch.all(frames[0, :20] == 0) and frames[0, 20] == 1
    assert torch.equal(frames[1], wave[140:320])
    assert torch.equal(frames[-1, 20:], wave[-160:])


def test_ar_process_lpc_recovers_the_filter_and_the_excitation():
    rng = np.random.default_rng(3)
    a_true = _poles_to_filter([0.97, 0.95, 0.9], [0.25, 0.9, 2.0])  # order 6
    e = 0.01 * rng.standard_normal(4 * constants.CLIP_SAMPLES + 2000)
    x = scipy.signal.lfilter([1.0], a_true, e)[2000:]
    e = e[2000:]
    # One long frame (4 s): Burg finds the filter, and nothing beyond its order.
    np.testing.assert_allclose(audio.lpc(torch.from_numpy(x), 6).numpy(), a_true, atol=0.02)
    a = audio.lpc(torch.from_numpy(x), 10).numpy()
    np.testing.assert_allclose(a[:7], a_true, atol=0.05)
    assert np.abs(a[7:]).max() < 0.05
    x, e = x[: constants.CLIP_SAMPLES], e[: constants.CLIP_SAMPLES]
    # 180-sample frames at order 20: the joined residual is the excitation, in energy
    # (fitting 20 coefficients to 180 samples removes about 20/180 of it), and far below
    # the signal.
    wave = torch.from_numpy(x.astype(np.float32))
    frames = audio.frames_for_lpc(wave, 20, 160)
    res = audio.frame_residual(frames, audio.lpc(frames, 20))[1:].numpy()  # skip start-up
    ratio = (res**2).sum() / (e[160:] ** 2).sum()
    assert 0.8 < ratio < 1.0
    assert (res**2).sum() / (x[160:] ** 2).sum() < 0.05


def test_formant_envelope_is_on_the_speech_scale():
    # For an AR process G^2/|A|^2 is the expected |STFT|^2: the two log-mel images agree
    # on average up to the log-of-a-mean vs mean-of-logs bias.
    rng = np.random.default_rng(4)
    a_true = _poles_to_filter([0.97, 0.95, 0.9], [0.25, 0.9, 2.0])
    x = _ar(rng, 4, constants.CLIP_SAMPLES, a_true, warmup=2000).astype(np.float32)
    f = audio.extract_features(torch.from_numpy(x))
    gap = (f["formant"] - f["speech"])[:, 2:-2].mean((0, 1))  # per band
    assert gap.abs().max() < 0.5
    # Across bands the envelope follows the spectrum (which spans several log units).
    speech = f["speech"][:, 2:-2].mean((0, 1))
    assert speech.max() - speech.min() > 5


def test_mel_filterbank_is_torchaudio_melscale():
    fb = audio.mel_filterbank()
    want = torchaudio.functional.melscale_fbanks(
        constants.N_FFT // 2 + 1, 0.0, constants.SAMPLE_RATE / 2, constants.N_MELS,
        constants.SAMPLE_RATE)
    torch.testing.assert_close(fb, want)


# --------------------------------------------------------------------------------------
# Features: shapes and alignment


@pytest.fixture(scope="module")
def burst_clips() -> torch.Tensor:
    """Two clips of faint noise with a loud noisy tone in samples [9600, 12800):
    frames 60..79 of the LPC analysis."""
    gen = torch.Generator().manual_seed(5)
    waves = 1e-4 * torch.randn(2, constants.CLIP_SAMPLES, generator=gen)
    t = torch.arange(3200) / constants.SAMPLE_RATE
    burst = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(3200, generator=gen)
    waves[:, 9600:12800] += burst
    return waves


def test_features_shapes_and_dtypes(burst_clips):
    f = audio.extract_features(burst_clips)
    assert set(f) == {"speech", "formant", "residual"}
    for value in f.values():
        assert value.shape == (2, 101, 40) and value.dtype == torch.float32
        assert torch.isfinite(value).all()
    assert audio.log_mel(burst_clips[0]).shape == (101, 40)
    # 100 LPC frames, the last repeated to line up with the 101 centred mel frames.
    assert torch.equal(f["formant"][:, 100], f["formant"][:, 99])
    # The per-feature functions give what extract_features gives.
    torch.testing.assert_close(audio.formant_envelope(burst_clips, 20), f["formant"])
    torch.testing.assert_close(audio.residual(burst_clips, 20), f["residual"])
    torch.testing.assert_close(audio.log_mel(burst_clips), f["speech"])


def test_features_follow_extract_settings(burst_clips):
    f = audio.extract_features(burst_clips, n_mels=24, order=12, n_fft=512, hop=128)
    for value in f.values():
        assert value.shape == (2, 1 + constants.CLIP_SAMPLES // 128, 24)
        assert torch.isfinite(value).all()


def _active_frames(image: torch.Tensor) -> tuple[int, int]:
    """First and last frame whose mean log-mel is above the midpoint of its range."""
    level = image.mean(-1)
    active = torch.nonzero(level > (level.min() + level.max()) / 2).squeeze(1)
    return int(active[0]), int(active[-1])


def test_a_burst_shows_up_in_the_same_frames_of_every_feature(burst_clips):
    f = audio.extract_features(burst_clips)
    for clip in range(2):
        first, last = _active_frames(f["speech"][clip])
        assert 58 <= first <= 61 and 78 <= last <= 81, (first, last)
        for name in ("formant", "residual"):
            other = _active_frames(f[name][clip])
            assert abs(other[0] - first) <= 1 and abs(other[1] - last) <= 1, (name, other)


def test_silence_gives_the_log_floor():
    f = audio.extract_features(torch.zeros(1, constants.CLIP_SAMPLES))
    for value in f.values():
        torch.testing.assert_close(value, torch.full_like(value, np.log(audio.LOG_FLOOR)))


def test_extract_features_wants_a_batch_of_clips():
    with pytest.raises(ValueError, match="clips, samples"):
        audio.extract_features(torch.zeros(constants.CLIP_SAMPLES))


# --------------------------------------------------------------------------------------
# load_wav


def _tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("subtype,tol", [("PCM_16", 2**-15), ("PCM_24", 2**-23),
                                         ("PCM_32", 2**-31), ("FLOAT", 1e-7),
                                         ("PCM_U8", 2**-7)])
def test_load_wav_reads_every_subtype(tmp_path, subtype, tol):
    data = _tone(16_000, 1.0)
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(path, data, 16_000, subtype=subtype)
    wave = audio.load_wav(path)
    assert wave.shape == (16_000,) and wave.dtype == torch.float32
    np.testing.assert_allclose(wave.numpy(), data, rtol=0, atol=tol + 1e-7)


def test_load_wav_averages_channels(tmp_path):
    left, right = _tone(16_000, 1.0, 440.0), _tone(16_000, 1.0, 1000.0, amp=0.25)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    np.testing.assert_allclose(audio.load_wav(path).numpy(), (left + right) / 2, atol=1e-7)


def test_load_wav_resamples_and_keeps_the_pitch(tmp_path):
    path = tmp_path / "8k.wav"
    soundfile.write(path, _tone(8_000, 1.0, 440.0), 8_000, subtype="PCM_16")
    wave = audio.load_wav(path)
    assert wave.shape == (16_000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over 1 s
    assert 0.3 < wave.abs().max() < 0.6


def test_load_wav_trims_and_pads(tmp_path):
    long = _tone(16_000, 2.0)
    soundfile.write(tmp_path / "long.wav", long, 16_000, subtype="FLOAT")
    np.testing.assert_allclose(audio.load_wav(tmp_path / "long.wav").numpy(), long[:16_000])
    short = _tone(16_000, 0.25)
    soundfile.write(tmp_path / "short.wav", short, 16_000, subtype="FLOAT")
    wave = audio.load_wav(tmp_path / "short.wav", num_samples=8_000)
    assert wave.shape == (8_000,)
    np.testing.assert_allclose(wave[:4_000].numpy(), short)
    assert torch.all(wave[4_000:] == 0)


def _corrupt(path):
    path.write_bytes(np.random.default_rng(6).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _empty(path):
    path.write_bytes(b"")


def _truncated_header(path):
    soundfile.write(path, _tone(16_000, 0.1), 16_000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:20])


def _no_samples(path):
    soundfile.write(path, np.zeros(0, dtype=np.float32), 16_000, subtype="PCM_16")


@pytest.mark.parametrize("make", [_corrupt, _empty, _truncated_header, _no_samples])
def test_load_wav_bad_files_raise_one_line_value_errors(tmp_path, make):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(ValueError) as err:
        audio.load_wav(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_wav_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing.wav"):
        audio.load_wav(tmp_path / "missing.wav")
