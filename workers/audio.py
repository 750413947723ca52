"""Audio I/O and the source-filter features of a clip (docs/design.md, "What is trained").

A clip is split by linear prediction into

- ``speech``:   the log-mel spectrogram of the clip,
- ``formant``:  the log-mel image of each frame's LPC envelope G^2 / |A(e^jw)|^2 (the
  vocal tract),
- ``residual``: the log-mel spectrogram of the prediction error e[n] = x[n] + sum_k a_k
  x[n-k] (the excitation),

each (..., frames, n_mels), time-major (frames are the encoder's tokens). LPC frames are
``hop`` new samples carrying the previous ``order`` samples as history (the first frame's
history is zeros): 100 frames per 1 s clip, against the 101 centred mel frames, so the
formant sequence is padded with a copy of its last frame.

``lpc`` is Burg's method, equal to ``librosa.lpc`` row by row, over any leading shape
without a Python loop over frames: the fast recursion of ``workers.burg``, compiled per
frame on the CPU and batched PyTorch operations on accelerators. ``lpc_residual`` returns
the prediction error too, from the same pass.
"""

from __future__ import annotations

import operator
import os
from functools import lru_cache
from pathlib import Path

import soundfile
import torch
import torch.nn.functional as F
import torchaudio

from workers import burg
from workers.constants import CLIP_SAMPLES, HOP, LPC_ORDER, N_FFT, N_MELS, SAMPLE_RATE
from workers.errors import InputError

LOG_FLOOR = 1e-6  # log(mel + LOG_FLOOR): silence maps to log(1e-6), not -inf

# Smallest |A(e^jw)|^2 of the envelope: a zero on the unit circle (a constant frame has
# A = 1 - z^-1) caps the envelope at +100 dB over the error power instead of dividing by 0.
_MIN_A_POWER = 1e-10
# Where LPC runs the compiled per-frame recursion; elsewhere (CUDA) the batched one.
_COMPILED_DEVICES = ("cpu",)


# --------------------------------------------------------------------------------------
# LPC


def lpc(x: torch.Tensor, order: int) -> torch.Tensor:
    """Linear prediction coefficients by Burg's method over the last dimension.

    x: (..., n) floating frames; returns (..., order + 1) in x's dtype with a[..., 0] = 1,
    the prediction-error filter A(z) = sum_k a_k z^-k of ``librosa.lpc(x, order=order)``
    (error e[n] = sum_k a_k x[n-k]). Computed in float64 whatever x's dtype. Silent
    frames give [1, 0, ..., 0]; frames that are predicted exactly before ``order`` (a
    constant, a pure tone) get zeros for the remaining reflection coefficients; the result
    is always finite for finite input.
    """
    a, _ = _lpc(x, order, residual=False)
    return a


def lpc_residual(frames: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``lpc`` of each frame and its prediction error, in one pass over the frames.

    frames (..., hop + order) -> a (..., order + 1) and e (..., hop), both in frames'
    dtype: e = ``frame_residual(frames, a)``, the first ``order`` samples as history.
    """
    return _lpc(frames, order, residual=True)


def _lpc(x: torch.Tensor, order: int, residual: bool):
    n = x.shape[-1]
    order = operator.index(order)
    if not 1 <= order < n:
        raise ValueError(
            f"lpc order must be in [1, {n - 1}] for frames of {n} samples, got {order}")
    if not x.is_floating_point():
        raise TypeError(f"lpc needs a floating-point tensor, got {x.dtype}")
    lead = x.shape[:-1]
    if x.numel() == 0:
        return x.new_zeros(*lead, order + 1), x.new_zeros(*lead, n - order)
    frames = x.reshape(-1, n)
    if frames.device.type in _COMPILED_DEVICES:
        if frames.dtype not in (torch.float32, torch.float64):
            frames = frames.float()  # numpy has no bfloat16
        a, e, redo = burg.burg_frames(frames, order, residual)
    else:
        (a, redo), e = burg.burg_batched(frames.double(), order), None
    redo = redo.nonzero().squeeze(1)
    if len(redo):
        a[redo] = burg.burg_direct(frames[redo].double(), order)
    if residual and e is None:
        e = frame_residual(frames, a)
    elif residual and len(redo):
        e[redo] = frame_residual(frames[redo], a[redo])
    a = a.to(x.dtype).reshape(*lead, order + 1)
    return a, e.to(x.dtype).reshape(*lead, n - order) if residual else None


def frames_for_lpc(wave: torch.Tensor, order: int, hop: int = HOP) -> torch.Tensor:
    """(..., samples) -> (..., ceil(samples / hop), hop + order) overlapping frames.

    Frame t holds samples [t*hop - order, (t+1)*hop): ``hop`` new samples after ``order``
    samples of history (zeros before the clip; zeros pad the last frame).
    """
    samples = wave.shape[-1]
    tail = -samples % hop
    return F.pad(wave, (order, tail)).unfold(-1, hop + order, hop)


def frame_residual(frames: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Prediction error of each frame's new samples with its own filter.

    frames (..., hop + order), a (..., order + 1) -> (..., hop):
    e[t] = sum_k a_k x[order + t - k], the first ``order`` samples serving as history.
    """
    length, order = frames.shape[-1], a.shape[-1] - 1
    a = a.to(frames.dtype)
    e = frames[..., order:] * a[..., :1]
    for k in range(1, order + 1):
        e.addcmul_(frames[..., order - k : length - k], a[..., k : k + 1])
    return e


# --------------------------------------------------------------------------------------
# Features


@lru_cache(maxsize=8)
def _mel_spectrogram(sample_rate: int, n_fft: int, hop: int, n_mels: int,
                     device: torch.device) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, center=True,
        power=2.0,
    ).to(device)


def mel_filterbank(*, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                   n_mels: int = N_MELS, device=None) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, the ones ``log_mel`` applies."""
    return _mel_spectrogram(sample_rate, n_fft, HOP, n_mels,
                            torch.device(device or "cpu")).mel_scale.fb


def log_mel(wave: torch.Tensor, *, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
            hop: int = HOP, n_mels: int = N_MELS) -> torch.Tensor:
    """(..., samples) -> (..., 1 + samples // hop, n_mels) float32 log-mel power.

    Centred Hann frames of ``n_fft`` samples; log(mel + 1e-6).
    """
    transform = _mel_spectrogram(sample_rate, n_fft, hop, n_mels, wave.device)
    mel = transform(wave.to(torch.float32))  # (..., n_mels, frames)
    return torch.log(mel + LOG_FLOOR).transpose(-1, -2)


def _window_energy(n_fft: int) -> float:
    # sum w^2 of the periodic Hann window that MelSpectrogram uses.
    return float(torch.hann_window(n_fft, dtype=torch.float64).square().sum())


def _envelope_log_mel(a: torch.Tensor, e: torch.Tensor, frames: int, *, sample_rate: int,
                      n_fft: int, n_mels: int) -> torch.Tensor:
    """Log-mel image of the LPC power envelope, padded to ``frames`` frames.

    a (..., T, order + 1), e (..., T, hop) -> (..., frames, n_mels). The envelope is
    G^2 / |A(e^jw)|^2 with G^2 = mean(e^2) * sum(window^2): for an all-pole process driven
    by white noise of power mean(e^2) this is the expected |STFT|^2 under the speech
    spectrogram's window, so formant and speech share one scale.
    """
    a_power = torch.fft.rfft(a.to(torch.float32), n=n_fft).abs().square()  # (..., T, bins)
    gain = e.to(torch.float32).square().mean(-1, keepdim=True) * _window_energy(n_fft)
    envelope = gain / a_power.clamp_min(_MIN_A_POWER)
    fb = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels,
                        device=a.device)
    image = torch.log(envelope @ fb + LOG_FLOOR)  # (..., T, n_mels)
    missing = frames - image.shape[-2]
    assert missing >= 0, (frames, image.shape)
    last = image[..., -1:, :].expand(*image.shape[:-2], missing, n_mels)
    return torch.cat([image, last], dim=-2)


def _analyse(wave: torch.Tensor, order: int, hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., samples) -> a (..., T, order + 1) float32, e (..., T, hop) float32."""
    return lpc_residual(frames_for_lpc(wave.to(torch.float32), order, hop), order)


def formant_envelope(wave: torch.Tensor, order: int = LPC_ORDER, *,
                     sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP,
                     n_mels: int = N_MELS) -> torch.Tensor:
    """(..., samples) -> (..., 1 + samples // hop, n_mels) log-mel LPC envelope."""
    a, e = _analyse(wave, order, hop)
    return _envelope_log_mel(a, e, 1 + wave.shape[-1] // hop, sample_rate=sample_rate,
                             n_fft=n_fft, n_mels=n_mels)


def residual(wave: torch.Tensor, order: int = LPC_ORDER, *, sample_rate: int = SAMPLE_RATE,
             n_fft: int = N_FFT, hop: int = HOP, n_mels: int = N_MELS) -> torch.Tensor:
    """(..., samples) -> (..., 1 + samples // hop, n_mels) log-mel of the LPC residual."""
    _, e = _analyse(wave, order, hop)
    return log_mel(_join(e, wave.shape[-1]), sample_rate=sample_rate, n_fft=n_fft, hop=hop,
                   n_mels=n_mels)


def _join(e: torch.Tensor, samples: int) -> torch.Tensor:
    """(..., T, hop) frame residuals -> (..., samples) signal."""
    return e.flatten(-2)[..., :samples]


def extract_features(waves: torch.Tensor, *, sample_rate: int = SAMPLE_RATE,
                     n_mels: int = N_MELS, order: int = LPC_ORDER, n_fft: int = N_FFT,
                     hop: int = HOP) -> dict[str, torch.Tensor]:
    """(N, samples) clips -> {"speech", "formant", "residual"}, each (N, frames, n_mels).

    float32, frames = 1 + samples // hop (101 for 1 s at 16 kHz); LPC runs once and
    serves both the formant envelope and the residual.
    """
    if waves.dim() != 2:
        raise ValueError(f"waves must be (clips, samples), got shape {tuple(waves.shape)}")
    mel = {"sample_rate": sample_rate, "n_fft": n_fft, "n_mels": n_mels}
    frames = 1 + waves.shape[-1] // hop
    a, e = _analyse(waves, order, hop)
    return {
        "speech": log_mel(waves, hop=hop, **mel),
        "formant": _envelope_log_mel(a, e, frames, **mel),
        "residual": log_mel(_join(e, waves.shape[-1]), hop=hop, **mel),
    }


# --------------------------------------------------------------------------------------
# I/O


def load_wav(path: str | Path, sample_rate: int = SAMPLE_RATE,
             num_samples: int = CLIP_SAMPLES) -> torch.Tensor:
    """Read an audio file -> (num_samples,) float32 mono at ``sample_rate``.

    Any soundfile subtype; channels are averaged, other rates resampled, the result
    zero-padded or trimmed. ``InputError`` (one line, naming the file) when the file
    cannot be read or holds no samples.
    """
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)  # (samples, ch)
    except (soundfile.SoundFileError, RuntimeError) as err:
        reason = " ".join(str(err).split())
        raise InputError(f"cannot read audio file {path}: {reason}") from err
    if data.size == 0:
        raise InputError(f"audio file {path} holds no samples")
    _check_not_truncated(path)
    wave = torch.from_numpy(data).mean(dim=1)
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return F.pad(wave, (0, max(num_samples - len(wave), 0)))[:num_samples].contiguous()


def _check_not_truncated(path: str | Path) -> None:
    """InputError when a RIFF/WAVE file's data chunk is shorter than its header says.

    libsndfile reads a truncated WAV without complaint, returning the samples that are
    there; a cut-off clip would then enter the data set silently padded.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not RIFF/WAVE: soundfile has already judged it
        while chunk := f.read(8):
            if len(chunk) < 8:
                return
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                left = os.fstat(f.fileno()).st_size - f.tell()
                if size > left:
                    raise InputError(f"audio file {path} is truncated: its header promises "
                                     f"{size} bytes of audio, {left} are there; copy it again")
                return
            f.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
