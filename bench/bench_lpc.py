"""Burg LPC + residual (workers.audio) against the author's per-frame loop.

    .venv/bin/python bench/bench_lpc.py [--frames 2000] [--order 20] [--rounds 5]
                                        [--device cuda] [--gpu-frames 400000]

One CPU thread everywhere (torch, numba, BLAS). Checks parity first (ours in float64
against librosa.lpc row by row), then times on the same float32 frames, in the same run:

  (a) the author's method: librosa.lpc per frame + scipy.signal.lfilter residual, in a
      Python loop (numba warmed up);
  (b) workers.audio.lpc_residual (and workers.audio.lpc alone) on the whole batch: the
      compiled per-frame fast Burg recursion (workers.burg), the CPU's production path;
  (c) for reference, the batched PyTorch recursion that accelerators run, here on the CPU.

The contenders take turns for --rounds rounds, each round timing the best of 3
back-to-back passes over all frames; prints the median as microseconds per frame of this
thread's CPU time (robust to other processes taking turns on the cores) and of wall
time. Copy the output with the machine into bench/RESULTS_lpc.md.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy, numba and torch start their thread pools

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import scipy.signal  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers import audio, burg  # noqa: E402

SAMPLE_RATE = audio.SAMPLE_RATE


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


def check_parity(frames32: np.ndarray, order: int) -> None:
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


def cpu_benchmark(frames32: np.ndarray, order: int, rounds: int) -> None:
    librosa.lpc(frames32[0], order=order)  # numba compiles for float32 here, not in the timing
    n = len(frames32)
    frames_t = torch.from_numpy(frames32)
    timings = interleaved({
        "(a) librosa.lpc loop": author_method(frames32, order, False),
        "(a) librosa.lpc + lfilter loop": author_method(frames32, order, True),
        "(b) lpc, float32": ours(frames_t, order, False),
        "(b) lpc + residual, float32": ours(frames_t, order, True),
        "    lpc + residual, float64": ours(frames_t.double(), order, True),
        "(c) batched torch lpc + residual, f32": batched_on_cpu(frames_t, order),
    }, rounds)
    print(f"\nmedian of {rounds} rounds of the best of 3 back-to-back passes")
    print(f"{'method':40s} {'CPU us/frame':>13s} {'wall us/frame':>14s}")
    for name, t in timings.items():
        print(f"{name:40s} {t['cpu'] / n * 1e6:13.2f} {t['wall'] / n * 1e6:14.2f}")
    for label, slow, fast in [
        ("lpc + residual", "(a) librosa.lpc + lfilter loop", "(b) lpc + residual, float32"),
        ("lpc alone", "(a) librosa.lpc loop", "(b) lpc, float32"),
    ]:
        print(f"speedup, {label}: {timings[slow]['cpu'] / timings[fast]['cpu']:.1f}x CPU time, "
              f"{timings[slow]['wall'] / timings[fast]['wall']:.1f}x wall")


def features_benchmark(clips: int, rounds: int) -> None:
    waves = torch.from_numpy(speech_like_frames(clips * 100, 160, seed=1).reshape(clips, -1))
    t = interleaved({"extract_features": lambda: audio.extract_features(waves)}, rounds, 1)
    print(f"\nextract_features on {clips} clips of 1 s (speech-like): "
          f"{t['extract_features']['cpu'] / clips * 1e3:.2f} ms CPU per clip")


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
    parser.add_argument("--order", type=int, default=audio.LPC_ORDER)
    parser.add_argument("--hop", type=int, default=audio.HOP)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpu-frames", type=int, default=400_000)
    parser.add_argument("--clips", type=int, default=64,
                        help="clips for the extract_features timing (0: skip it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}, librosa {librosa.__version__}; 1 thread")
    frames32 = speech_like_frames(args.frames, args.hop + args.order)
    print(f"{args.frames} speech-like frames of {args.hop + args.order} samples, "
          f"order {args.order}")
    check_parity(frames32, args.order)
    cpu_benchmark(frames32, args.order, args.rounds)
    if args.clips:
        features_benchmark(args.clips, min(args.rounds, 3))
    if args.device == "cuda":
        gpu_benchmark(args.gpu_frames, frames32, args.order, args.rounds)


if __name__ == "__main__":
    main()
