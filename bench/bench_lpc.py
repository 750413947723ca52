"""Burg LPC + residual (workers.audio) against the author's per-frame loop and diffsptk.

    .venv/bin/python bench/bench_lpc.py [--frames 2000] [--order 20] [--rounds 5]
                                        [--device cuda] [--gpu-frames 400000]
                                        [--json results.json]

One CPU thread everywhere (torch, numba, BLAS). Checks parity first (ours in float64
against librosa.lpc row by row), then times on the same float32 frames, in the same run:

  (a) the author's method: librosa.lpc per frame + scipy.signal.lfilter residual, in a
      Python loop (numba warmed up);
  (b) workers.audio.lpc_residual (and workers.audio.lpc alone) on the whole batch: the
      compiled per-frame fast Burg recursion (workers.burg), the CPU's production path;
  (c) for reference, the batched PyTorch recursion that accelerators run, here on the CPU;
  (d) the LPC a user would otherwise pick for batched work, diffsptk's
      ``LinearPredictiveCodingAnalysis`` (FFT autocorrelation + Toeplitz solve, batched
      torch), in float64 and float32, plus the residual the batched torch way (``unfold``
      or grouped ``conv1d``), when diffsptk is installed (the ``bench`` extra). diffsptk
      solves the autocorrelation (Yule-Walker) normal equations of the rectangular frame,
      a different estimator from Burg's: its parity with librosa is reported, not asserted;
      the 1e-8 parity is dotsim's Burg against librosa's Burg. Goal: dotsim's LPC +
      residual >= 6x less CPU time per frame than diffsptk's in float64.

The contenders take turns for --rounds rounds, each round timing the best of 3
back-to-back passes over all frames; prints the median as microseconds per frame of this
thread's CPU time (robust to other processes taking turns on the cores) and of wall
time. Copy the output with the machine into bench/RESULTS_lpc.md.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy, numba and torch start their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import scipy.signal  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

try:
    import diffsptk  # noqa: E402
except ImportError:  # optional: pip install -e '.[bench]'
    diffsptk = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers import audio, burg, constants  # noqa: E402

SAMPLE_RATE = constants.SAMPLE_RATE
DIFFSPTK_GOAL = 6.0  # dotsim LPC + residual vs diffsptk float64, CPU time per frame


def speech_like_frames(n_frames: int, length: int, seed: int = 0) -> np.ndarray:
    """(n_frames, length) float32 voiced frames: a pulse train at a random pitch plus
    breath noise through 4 formant resonators, over a 60 dB noise floor, at random level."""
    rng = np.random.default_rng(seed)
    warmup = 400
    out = np.empty((n_frames, length))
    for i in range(n_frames):
        freqs = np.sort(rng.uniform(250, 3800, 4))
        radii = np.exp(-np.pi * rng.uniform(60, 250, 4) / SAMPLE_RATE)
        poles = radii * np.exp(2j * np.pi * freqs / SAMPLE_RATE)
        a = np.real(np.poly(np.concatenate([poles, poles.conj()])))
        source = np.zeros(length + warmup)
        source[rng.integers(0, 40):: int(SAMPLE_RATE / rng.uniform(90, 260))] = 1.0
        source += 0.05 * rng.standard_normal(length + warmup)
        frame = scipy.signal.lfilter([1.0], a, source)[warmup:]
        frame += 1e-3 * frame.std() * rng.standard_normal(length)
        out[i] = frame / np.abs(frame).max() * 10 ** rng.uniform(-2, -0.3)
    return out.astype(np.float32)


def interleaved(contenders: dict, rounds: int, burst: int = 3) -> dict[str, dict[str, float]]:
    """Median over rounds of the best of ``burst`` back-to-back calls, in seconds,
    {name: {"cpu": ..., "wall": ...}}. The contenders take turns round by round, so a
    busy machine slows all of them alike, and each is timed warm (its own data in cache).
    "cpu" is this thread's CPU time, which other processes taking turns on the cores do
    not inflate."""
    for fn in contenders.values():
        fn()  # warm-up
    samples = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            best = (np.inf, np.inf)
            for _ in range(burst):
                wall, cpu = time.perf_counter(), time.thread_time()
                fn()
                best = min(best, (time.thread_time() - cpu, time.perf_counter() - wall))
            samples[name].append(best)
    return {name: dict(zip(("cpu", "wall"), np.median(np.array(t), axis=0), strict=True))
            for name, t in samples.items()}


def author_method(frames: np.ndarray, order: int, residual: bool):
    def run():
        for frame in frames:
            a = librosa.lpc(frame, order=order)
            if residual:
                scipy.signal.lfilter(a, [1.0], frame)[order:]
    return run


def ours(frames: torch.Tensor, order: int, residual: bool, sync=lambda: None):
    def run():
        if residual:
            audio.lpc_residual(frames, order)
        else:
            audio.lpc(frames, order)
        sync()
    return run


def batched_on_cpu(frames: torch.Tensor, order: int):
    """The accelerators' path (burg_batched + frame_residual) run on the CPU."""
    def run():
        a, _ = burg.burg_batched(frames.double(), order)
        audio.frame_residual(frames, a.float())
    return run


def diffsptk_lpc(frames: torch.Tensor, order: int) -> torch.Tensor:
    """diffsptk's LPC in librosa's convention: (B, n) -> (B, order + 1), a[:, 0] = 1.

    diffsptk returns [K, a_1..a_p]: the gain K = sqrt(r_0 + r_1 . a), the square root of
    the autocorrelation method's error energy, then the coefficients of
    A(z) = 1 + sum_k a_k z^-k, the same sign as librosa's. So the gain is replaced by 1.
    """
    out = _diffsptk_module(frames.shape[-1], order, frames.dtype)(frames)
    return torch.cat([torch.ones_like(out[:, :1]), out[:, 1:]], dim=-1)


_DIFFSPTK_MODULES: dict = {}


def _diffsptk_module(length: int, order: int, dtype: torch.dtype):
    """One module per shape and dtype, built once, as a user's pipeline would (its default
    eps: 0 in float64, 1e-5 added to the Toeplitz diagonal in float32)."""
    key = (length, order, dtype)
    if key not in _DIFFSPTK_MODULES:
        _DIFFSPTK_MODULES[key] = diffsptk.LPC(length, order, dtype=dtype)
    return _DIFFSPTK_MODULES[key]


def residual_unfold(frames: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """frames (B, hop + p), a (B, p + 1) -> (B, hop): e[t] = sum_k a_k x[p + t - k], the
    first p samples as history (``workers.audio.frame_residual``'s definition), by sliding
    windows of p + 1 samples times the reversed filter."""
    return (frames.unfold(-1, a.shape[-1], 1) * a.flip(-1)[:, None, :]).sum(-1)


def residual_conv1d(frames: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The same residual as one grouped conv1d: one channel and one filter per frame
    (conv1d is a correlation, hence the reversed filter)."""
    return F.conv1d(frames[None], a.flip(-1)[:, None, :], groups=len(frames))[0]


RESIDUALS = {"unfold": residual_unfold, "conv1d": residual_conv1d}


def diffsptk_method(frames: torch.Tensor, order: int, residual=None):
    def run():
        a = diffsptk_lpc(frames, order)
        if residual is not None:
            residual(frames, a)
    return run


def _parity_against_burg(label, a, e, want, e_want) -> dict:
    """How far coefficients ``a`` and residual ``e`` are from librosa's Burg ones."""
    coef = np.abs(a - want).max(axis=1)
    out = {"coef_max_abs_diff": float(coef.max()),
           "coef_median_frame_max_abs_diff": float(np.median(coef)),
           "residual_max_abs_diff": float(np.abs(e - e_want).max()),
           "residual_rms_ratio": float(np.sqrt((e**2).sum() / (e_want**2).sum()))}
    print(f"{label} vs librosa.lpc (Burg, float64): coefficients max |diff| {coef.max():.2e} "
          f"(median frame {np.median(coef):.2e}); residual max |diff| "
          f"{out['residual_max_abs_diff']:.2e} (max |e| {np.abs(e_want).max():.2e}), residual "
          f"energy {out['residual_rms_ratio'] ** 2:.2f}x Burg's")
    return out


def check_diffsptk_parity(frames32: np.ndarray, order: int) -> dict:
    """diffsptk against librosa's Burg (float64 frames): max |diff| of the coefficient
    vectors and of the residuals (each with its own coefficients, librosa's by lfilter);
    checks that both batched residuals match lfilter with diffsptk's own coefficients."""
    frames64 = frames32.astype(np.float64)
    want = np.stack([librosa.lpc(f, order=order) for f in frames64])
    e_want = np.stack([scipy.signal.lfilter(a, [1.0], f)[order:]
                       for a, f in zip(want, frames64, strict=True)])
    out, coefficients = {}, {}
    for name, frames in (("float64", frames64), ("float32", frames32)):
        x = torch.from_numpy(frames)
        a = coefficients[name] = diffsptk_lpc(x, order)
        e_own = np.stack([scipy.signal.lfilter(c, [1.0], f)[order:]
                          for c, f in zip(a.double().numpy(), frames64, strict=True)])
        e = residual_unfold(x, a).double().numpy()
        e_conv = residual_conv1d(x, a).double().numpy()
        tol = 1e-9 if name == "float64" else 1e-4
        for got in (e, e_conv):
            assert np.abs(got - e_own).max() <= tol * np.abs(e_own).max(), \
                "batched residual does not match lfilter with the same coefficients"
        out[name] = _parity_against_burg(f"diffsptk {name}", a.double().numpy(), e, want,
                                         e_want)
    # A user of the autocorrelation method would taper the frame first: coefficients of
    # the Hann-windowed frame, residual of the frame itself (timings are rectangular; the
    # window is one multiply)
    a_hann = diffsptk_lpc(torch.from_numpy(frames64 * np.hanning(frames64.shape[1])), order)
    e_hann = residual_unfold(torch.from_numpy(frames64), a_hann).numpy()
    out["float64_hann"] = _parity_against_burg("diffsptk float64 on Hann-windowed frames",
                                               a_hann.numpy(), e_hann, want, e_want)
    out["float32_vs_float64_coef_max_abs_diff"] = float(
        (coefficients["float32"].double() - coefficients["float64"]).abs().max())
    print(f"diffsptk float32 vs its float64: coefficients max |diff| "
          f"{out['float32_vs_float64_coef_max_abs_diff']:.2e}")
    print("  (diffsptk solves the autocorrelation normal equations of the rectangular frame, "
          "not Burg's: no 1e-8 parity is expected; that figure is dotsim's Burg vs librosa's)")
    return out


def check_parity(frames32: np.ndarray, order: int) -> dict:
    frames64 = frames32.astype(np.float64)
    want = np.stack([librosa.lpc(f, order=order) for f in frames64])
    got64 = audio.lpc(torch.from_numpy(frames64), order).numpy()
    got32 = audio.lpc(torch.from_numpy(frames32), order).numpy()
    lib32 = np.stack([librosa.lpc(f, order=order) for f in frames32])
    *_, redo = burg.burg_frames(torch.from_numpy(frames64), order, False)
    err64 = np.abs(got64 - want).max()
    print(f"parity float64 ours vs librosa.lpc: max |diff| {err64:.2e} "
          f"({int(redo.sum())}/{len(frames64)} frames redone by the direct recursion)")
    print(f"float32 ours vs librosa (float64): max |diff| {np.abs(got32 - want).max():.2e}; "
          f"librosa on float32 frames: {np.abs(lib32 - want).max():.2e}")
    a32, e = audio.lpc_residual(torch.from_numpy(frames32), order)
    assert torch.equal(a32, torch.from_numpy(got32))
    e = e.numpy()
    e_ref = np.stack([scipy.signal.lfilter(a, [1.0], f)[order:]
                      for a, f in zip(want, frames64, strict=True)])
    rel = np.sqrt(((e - e_ref) ** 2).sum() / (e_ref**2).sum())
    print(f"float32 residual vs lfilter (float64): relative error {rel:.1e}")
    assert err64 < 1e-5, "float64 parity with librosa.lpc is broken"
    return {"float64_coef_max_abs_diff": float(err64),
            "float32_coef_max_abs_diff": float(np.abs(got32 - want).max()),
            "float32_residual_relative_error": float(rel)}


def cpu_benchmark(frames32: np.ndarray, order: int, rounds: int) -> dict:
    librosa.lpc(frames32[0], order=order)  # numba compiles for float32 here, not in the timing
    n = len(frames32)
    frames_t = torch.from_numpy(frames32)
    contenders = {
        "(a) librosa.lpc loop": author_method(frames32, order, False),
        "(a) librosa.lpc + lfilter loop": author_method(frames32, order, True),
        "(b) lpc, float32": ours(frames_t, order, False),
        "(b) lpc + residual, float32": ours(frames_t, order, True),
        "    lpc + residual, float64": ours(frames_t.double(), order, True),
        "(c) batched torch lpc + residual, f32": batched_on_cpu(frames_t, order),
    }
    if diffsptk is not None:
        # frames converted once outside the timing, as for ours in float64
        for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
            x = frames_t.to(dtype)
            contenders[f"(d) diffsptk lpc, {tag}"] = diffsptk_method(x, order)
            for how, residual in RESIDUALS.items():
                contenders[f"(d) diffsptk lpc + {how} residual, {tag}"] = \
                    diffsptk_method(x, order, residual)
    timings = interleaved(contenders, rounds)
    per_frame = {name: {k: v / n * 1e6 for k, v in t.items()} for name, t in timings.items()}
    print(f"\nmedian of {rounds} rounds of the best of 3 back-to-back passes")
    print(f"{'method':44s} {'CPU us/frame':>13s} {'wall us/frame':>14s}")
    for name, t in per_frame.items():
        print(f"{name:44s} {t['cpu']:13.2f} {t['wall']:14.2f}")
    ratios = {}
    for label, slow, fast in [
        ("lpc + residual", "(a) librosa.lpc + lfilter loop", "(b) lpc + residual, float32"),
        ("lpc alone", "(a) librosa.lpc loop", "(b) lpc, float32"),
    ]:
        ratios[f"author / dotsim, {label}"] = timings[slow]["cpu"] / timings[fast]["cpu"]
        print(f"speedup, {label}: {timings[slow]['cpu'] / timings[fast]['cpu']:.1f}x CPU time, "
              f"{timings[slow]['wall'] / timings[fast]['wall']:.1f}x wall")
    if diffsptk is None:
        print("(d) diffsptk is not installed (pip install -e '.[bench]'): skipped")
    else:
        ratios.update(_diffsptk_ratios(per_frame))
    return {"us_per_frame": per_frame, "ratios": ratios}


def _diffsptk_ratios(per_frame: dict) -> dict:
    """dotsim LPC + residual against diffsptk's in float64 with the faster of the two
    batched residuals (the comparison most favourable to diffsptk), CPU time."""
    ratios = {}
    for tag in ("f64", "f32"):
        fastest = min(RESIDUALS, key=lambda how: per_frame[
            f"(d) diffsptk lpc + {how} residual, {tag}"]["cpu"])
        theirs = per_frame[f"(d) diffsptk lpc + {fastest} residual, {tag}"]["cpu"]
        for ours_name, ours_tag in (("(b) lpc + residual, float32", "f32 frames"),
                                    ("    lpc + residual, float64", "f64 frames")):
            ratio = theirs / per_frame[ours_name]["cpu"]
            key = f"diffsptk {tag} ({fastest} residual) / dotsim ({ours_tag})"
            ratios[key] = ratio
            goal = (f"; goal >= {DIFFSPTK_GOAL:.0f}x: "
                    f"{'met' if ratio >= DIFFSPTK_GOAL else 'NOT met'}") if tag == "f64" else ""
            print(f"dotsim lpc + residual ({ours_tag}) vs diffsptk {tag} lpc + {fastest} "
                  f"residual: {ratio:.1f}x less CPU time{goal}")
    return ratios


def features_benchmark(clips: int, rounds: int) -> float:
    waves = torch.from_numpy(speech_like_frames(clips * 100, 160, seed=1).reshape(clips, -1))
    t = interleaved({"extract_features": lambda: audio.extract_features(waves)}, rounds, 1)
    print(f"\nextract_features on {clips} clips of 1 s (speech-like): "
          f"{t['extract_features']['cpu'] / clips * 1e3:.2f} ms CPU per clip")
    return t["extract_features"]["cpu"] / clips * 1e3


def gpu_benchmark(n_frames: int, frames32: np.ndarray, order: int, rounds: int) -> None:
    if not torch.cuda.is_available():
        print("\n--device cuda: CUDA is not available here; skipped")
        return
    reps = -(-n_frames // len(frames32))
    frames = torch.from_numpy(np.tile(frames32, (reps, 1))[:n_frames]).cuda()
    got = audio.lpc(frames[: len(frames32)].double(), order).cpu().numpy()
    want = np.stack([librosa.lpc(f, order=order) for f in frames32.astype(np.float64)])
    print(f"\nGPU: {torch.cuda.get_device_name()}; float64 parity on CUDA: "
          f"max |diff| {np.abs(got - want).max():.2e}")
    timings = interleaved({
        name: ours(frames, order, residual, torch.cuda.synchronize)
        for name, residual in [("lpc", False), ("lpc + residual", True)]
    }, rounds)
    for name, t in timings.items():
        print(f"GPU {name}, float32, {n_frames} frames: "
              f"{n_frames / t['wall'] / 1e6:.2f} M frames/s ({t['wall'] * 1e3:.1f} ms)")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--order", type=int, default=constants.LPC_ORDER)
    parser.add_argument("--hop", type=int, default=constants.HOP)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpu-frames", type=int, default=400_000)
    parser.add_argument("--clips", type=int, default=64,
                        help="clips for the extract_features timing (0: skip it)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the parity figures, timings and ratios to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    versions = {"torch": torch.__version__, "librosa": librosa.__version__,
                "diffsptk": diffsptk.__version__ if diffsptk else None}
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; "
          + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + "; 1 thread")
    frames32 = speech_like_frames(args.frames, args.hop + args.order)
    print(f"{args.frames} speech-like frames of {args.hop + args.order} samples, "
          f"order {args.order}")
    results = {"machine": cpu_name(), "cpus": os.cpu_count(), "versions": versions,
               "frames": args.frames, "frame_length": args.hop + args.order,
               "order": args.order, "rounds": args.rounds,
               "parity": {"dotsim": check_parity(frames32, args.order)}}
    if diffsptk is not None:
        results["parity"]["diffsptk"] = check_diffsptk_parity(frames32, args.order)
    results.update(cpu_benchmark(frames32, args.order, args.rounds))
    if args.clips:
        results["extract_features_ms_cpu_per_clip"] = features_benchmark(
            args.clips, min(args.rounds, 3))
    if args.device == "cuda":
        gpu_benchmark(args.gpu_frames, frames32, args.order, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
