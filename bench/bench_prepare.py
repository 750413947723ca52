"""``dotsim prepare`` at scale: clips/s with and without Ray, projected to Speech Commands.

    .venv/bin/python bench/bench_prepare.py [--clips 5000] [--repeats 2] [--nodes 4]
                                            [--cores-per-node 8] [--json results.json]

1. Builds a Speech Commands v2 folder of --clips WAVs (``<word>/<speaker>_nohash_<n>.wav``,
   ``validation_list.txt``, ``testing_list.txt``): one clip per word and speaker of
   ``workers.synth.make_corpus`` (--base-speakers; 350 clips, split 80/10/10 as the real
   set), hard-linked (or copied, --copy) under new speaker names until there are --clips.
2. Runs the real CLI, ``dotsim prepare SOURCE --out OUT --no-ray`` and ``--ray`` (a
   private local Ray on all cores), as a subprocess, on that folder and on a one-chunk
   folder of --small-clips: the difference is the per-clip cost, the small run the fixed
   cost (imports, Ray start and stop). The modes take turns, --repeats times; medians.
   Timed: wall time, and CPU time of the whole process tree (driver, Ray's system
   processes, Ray's workers) from psutil, sampled every 0.1 s (a process's CPU after its
   last sample is missed: at most 0.1 s each); RUSAGE_CHILDREN is shown as a cross-check.
   Everything prepare does is inside: reading (and resampling, none here: the clips are
   16 kHz) the WAVs, the features, writing Parquet.
3. Times the seed's per-frame ``librosa.lpc`` + ``scipy.signal.lfilter`` loop and
   ``workers.audio.lpc_residual`` on the LPC frames of a sample of the clips (--lpc-clips
   clips x 100 frames x order 20, one thread, taking turns), and projects both to the
   full 105,829 clips on this machine and on clusters up to --nodes x --cores-per-node.

Projection: T = fixed + N * max((w + d) / cores, d), with w the marginal CPU seconds per
clip outside the driver (Ray workers and system processes), d the driver's (reading
results, writing Parquet: serial), fixed the small run's wall time less its clips' share
(imports, Ray start and stop); linear scaling over cores, the driver on one of them, a
cluster's start-up taken as this machine's. The seed approach is the same pipeline with the LPC
stage swapped: w_seed = w - dotsim LPC per clip + seed loop per clip (assumed: the seed's
reading, mel spectrograms and Parquet cost what dotsim's do).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # this process's LPC timing (not passed to the CLI)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from workers import synth  # noqa: E402
from workers.corpus import SPEECH_COMMANDS_FILE, FeatureSettings  # noqa: E402

FULL_CLIPS = 105_829  # Speech Commands v2, all splits
SAMPLE_PERIOD_S = 0.1
# the real CLI entry point (pyproject: dotsim = "orchestrator.cli:main")
DOTSIM = [sys.executable, "-c", "from orchestrator.cli import main; main()"]
# Left out of the CLI's environment: it runs with a user's defaults (thread pools sized by
# torch and Ray, a private local Ray), whatever this process or its caller set.
CHILD_ENV_DROP = ("RAY_ADDRESS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                  "NUMBA_NUM_THREADS")


# --- the source folder ------------------------------------------------------------------


def make_source(root: Path, clips: int, base: Path, *, copy: bool) -> Path:
    """A Speech Commands folder of ``clips`` clips: the base folder's clips under speaker
    names "<speaker>x<copy>", hard-linked (or copied), split lists carried along."""
    root.mkdir(parents=True)
    (root / "_background_noise_").mkdir()
    listed = {name: set(_lines(base / name)) for name in ("validation_list.txt",
                                                          "testing_list.txt")}
    originals = sorted(str(p.relative_to(base)) for p in base.glob("*/*.wav"))
    out_lists = {name: [] for name in listed}
    made = 0
    for n_copy in range(-(-clips // len(originals))):
        for relative in originals:
            if made == clips:
                break
            word, name = relative.split("/")
            match = SPEECH_COMMANDS_FILE.match(name)
            new = f"{word}/{match['speaker']}x{n_copy}_nohash_{match['n']}.wav"
            (root / word).mkdir(exist_ok=True)
            if copy:
                shutil.copyfile(base / relative, root / new)
            else:
                os.link(base / relative, root / new)
            for list_name, members in listed.items():
                if relative in members:
                    out_lists[list_name].append(new)
            made += 1
    for list_name, members in out_lists.items():
        (root / list_name).write_text("".join(f"{m}\n" for m in members))
    return root


def make_base(root: Path, speakers: tuple[int, int, int], seed: int = 0) -> Path:
    """One clip per word and speaker of the synthetic corpus as a Speech Commands folder."""
    corpus = synth.make_corpus(seed, speakers=speakers, clips_per_word_speaker=1)
    return synth.write_speech_commands(root, corpus)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# --- one timed run of the CLI -------------------------------------------------------------


def _kind(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    try:
        cmdline = " ".join(proc.cmdline())
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "ray_system"
    if cmdline.startswith("ray::") or name.startswith("ray::") or "default_worker.py" in cmdline:
        return "ray_workers"
    return "ray_system"


def timed_prepare(source: Path, out: Path, use_ray: bool, home: Path) -> dict:
    """Run ``dotsim prepare`` once; wall and CPU seconds by kind of process. Ray keeps its
    session files under ``home`` (a short path: Ray's socket paths must stay under 108
    characters), not in the shared /tmp/ray."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    env.update(HOME=str(home), RAY_TMPDIR=str(home), RAY_AUTH_MODE="disabled",
               PYTHONPATH=str(REPO))
    command = [*DOTSIM, "prepare", str(source), "--out", str(out),
               "--ray" if use_ray else "--no-ray", "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    driver = psutil.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    seen: dict[int, tuple[str, float]] = {}  # pid -> (kind, last user + system seconds)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                tree = [driver, *driver.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for proc in tree:
                try:
                    t = proc.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                kind = seen[proc.pid][0] if proc.pid in seen else _kind(proc, driver.pid)
                seen[proc.pid] = (kind, t.user + t.system)
            stop.wait(SAMPLE_PERIOD_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = driver.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if driver.returncode:
        raise RuntimeError(f"dotsim prepare failed ({driver.returncode}): {stderr.strip()}")
    cpu = {"driver": 0.0, "ray_workers": 0.0, "ray_system": 0.0}
    for kind, seconds in seen.values():
        cpu[kind] += seconds
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "cpu_s": cpu, "cpu_total_s": sum(cpu.values()),
            "processes": len(seen), "clips": sum(summary["counts"].values()),
            "rusage_children_cpu_s": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime)}


def run_modes(sources: dict[str, Path], work: Path, repeats: int, modes: list[str]) -> dict:
    """{mode: {size: [run, ...]}}, the modes and sizes taking turns."""
    runs = {mode: {size: [] for size in sources} for mode in modes}
    for r in range(repeats):
        for mode in modes:
            for size, source in sources.items():
                out = work / f"out-{mode}-{size}-{r}"
                home = Path(tempfile.mkdtemp(prefix="dsh"))
                try:
                    run = timed_prepare(source, out, mode == "ray", home)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(home, ignore_errors=True)
                runs[mode][size].append(run)
                print(f"  {mode:6s} {size:5s} run {r + 1}: {run['clips']} clips, "
                      f"{run['wall_s']:.1f} s wall, {run['cpu_total_s']:.1f} s CPU "
                      f"({run['processes']} processes)", flush=True)
    return runs


def _median(runs: list[dict], key: str, sub: str | None = None) -> float:
    return float(np.median([r[key][sub] if sub else r[key] for r in runs]))


def rates(runs: dict) -> dict:
    """Per mode: medians of the big and small runs, marginal per-clip CPU and wall."""
    out = {}
    for mode, by_size in runs.items():
        big, small = by_size["big"], by_size["small"]
        clips = big[0]["clips"] - small[0]["clips"]
        m = {"clips": big[0]["clips"], "small_clips": small[0]["clips"]}
        for size, rs in (("big", big), ("small", small)):
            m[f"{size}_wall_s"] = _median(rs, "wall_s")
            m[f"{size}_cpu_s"] = {k: _median(rs, "cpu_s", k) for k in big[0]["cpu_s"]}
            m[f"{size}_cpu_total_s"] = _median(rs, "cpu_total_s")
            m[f"{size}_rusage_children_cpu_s"] = _median(rs, "rusage_children_cpu_s")
        m["clips_per_s_wall"] = m["clips"] / m["big_wall_s"]
        m["clips_per_cpu_s"] = m["clips"] / m["big_cpu_total_s"]
        wall = (m["big_wall_s"] - m["small_wall_s"]) / clips
        driver = (m["big_cpu_s"]["driver"] - m["small_cpu_s"]["driver"]) / clips
        total = (m["big_cpu_total_s"] - m["small_cpu_total_s"]) / clips
        if mode == "no-ray":  # everything is the driver: all of it runs serially
            driver = total
        # A difference at or below zero is noise larger than the signal (too few clips, a
        # busy machine): fall back to the big run's whole cost per clip, an overestimate.
        m["marginal_reliable"] = wall > 0 and driver > 0 and total >= driver
        if not m["marginal_reliable"]:
            wall = m["big_wall_s"] / m["clips"]
            total = m["big_cpu_total_s"] / m["clips"]
            driver = (m["big_cpu_s"]["driver"] if mode == "ray" else m["big_cpu_total_s"]) \
                / m["clips"]
        m["marginal_wall_s_per_clip"] = wall
        # start-up and tear-down: the small run less its clips' share
        m["fixed_wall_s"] = max(m["small_wall_s"] - m["small_clips"] * wall, 0.0) \
            if m["marginal_reliable"] else m["small_wall_s"]
        m["marginal_cpu_ms_per_clip"] = {"total": total * 1e3, "driver": driver * 1e3,
                                         "outside_driver": (total - driver) * 1e3}
        m["marginal_clips_per_cpu_s"] = 1 / total
        out[mode] = m
    return out


# --- the seed's LPC loop against dotsim's, on the clips' frames ----------------------------


def lpc_sample(source: Path, clips: int, order: int, rounds: int = 3) -> dict:
    """CPU seconds per clip (one thread) of the seed's per-frame librosa.lpc +
    scipy.signal.lfilter loop and of workers.audio.lpc_residual on the same LPC frames
    (100 frames of 180 samples per 1 s clip), the two taking turns, best of ``rounds``."""
    import librosa
    import scipy.signal
    import torch

    from workers import audio

    torch.set_num_threads(1)
    paths = sorted(source.glob("*/*.wav"))
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, clips).astype(int)]
    waves = torch.stack([audio.load_wav(p) for p in picks])
    frames = audio.frames_for_lpc(waves, order).contiguous()  # (clips, 100, hop + order)
    flat = frames.reshape(-1, frames.shape[-1])
    flat_np = flat.numpy()

    def seed_loop():
        for frame in flat_np:
            a = librosa.lpc(frame, order=order)
            scipy.signal.lfilter(a, [1.0], frame)[order:]

    def ours():
        audio.lpc_residual(flat, order)

    seed_loop(), ours()  # numba compiles and warms up here
    best = {"seed": np.inf, "dotsim": np.inf}
    for _ in range(rounds):
        for name, fn in (("seed", seed_loop), ("dotsim", ours)):
            start = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - start)
    return {"clips": clips, "frames_per_clip": frames.shape[1], "order": order,
            "frame_length": frames.shape[-1],
            "cpu_ms_per_clip": {k: v / clips * 1e3 for k, v in best.items()},
            "cpu_us_per_frame": {k: v / len(flat) * 1e6 for k, v in best.items()}}


# --- projection -----------------------------------------------------------------------------


def project(fixed_s: float, w_ms: float, d_ms: float, cores: int, clips: int = FULL_CLIPS):
    """Seconds for ``clips``: fixed + N * max((w + d) / cores, d)."""
    w, d = w_ms / 1e3, d_ms / 1e3
    return fixed_s + clips * max((w + d) / cores, d)


def projections(r: dict, lpc: dict, nodes: int, cores_per_node: int) -> list[dict]:
    """Rows of (setup, cores, dotsim seconds, seed seconds) for the full data set."""
    swap = lpc["cpu_ms_per_clip"]["seed"] - lpc["cpu_ms_per_clip"]["dotsim"]
    rows = []
    for mode, m in r.items():
        rows.append({"setup": f"this machine, --{mode}, measured wall", "cores": os.cpu_count(),
                     "dotsim_s": m["fixed_wall_s"] + FULL_CLIPS * m["marginal_wall_s_per_clip"],
                     "seed_s": None})
    if "no-ray" in r:  # one process: everything, the LPC included, runs in the driver
        m = r["no-ray"]
        d = m["marginal_cpu_ms_per_clip"]["driver"]
        rows.append({"setup": "--no-ray, 1 core (CPU model)", "cores": 1,
                     "dotsim_s": project(m["fixed_wall_s"], 0, d, 1),
                     "seed_s": project(m["fixed_wall_s"], 0, d + swap, 1)})
    if "ray" in r:
        m = r["ray"]
        w, d = (m["marginal_cpu_ms_per_clip"][k] for k in ("outside_driver", "driver"))
        counts = sorted({1, 2, nodes} | {n for n in (4, 8, 16) if n < nodes})
        setups = [(os.cpu_count(), f"--ray, this machine's {os.cpu_count()} cores (CPU model)")]
        setups += [(n * cores_per_node, f"--ray, {n} node(s) x {cores_per_node} cores")
                   for n in counts]
        for cores, label in setups:
            rows.append({"setup": label, "cores": cores,
                         "dotsim_s": project(m["fixed_wall_s"], w, d, cores),
                         "seed_s": project(m["fixed_wall_s"], w + swap, d, cores),
                         # were the shards written by the tasks, not the driver
                         "dotsim_cores_only_s": m["fixed_wall_s"]
                         + FULL_CLIPS * (w + d) / 1e3 / cores,
                         "seed_cores_only_s": m["fixed_wall_s"]
                         + FULL_CLIPS * (w + swap + d) / 1e3 / cores,
                         "limit": "driver" if d * cores > w + d else "cores",
                         "seed_limit": "driver" if d * cores > w + swap + d else "cores"})
    return rows


def core_hours(r: dict, lpc: dict) -> dict:
    """CPU hours of the whole process tree for the full data set, per mode, dotsim and the
    seed's LPC loop in its place (marginal costs only: the work, wherever it runs)."""
    swap = lpc["cpu_ms_per_clip"]["seed"] - lpc["cpu_ms_per_clip"]["dotsim"]
    return {mode: {"dotsim_h": FULL_CLIPS * m["marginal_cpu_ms_per_clip"]["total"] / 3.6e6,
                   "seed_h": FULL_CLIPS * (m["marginal_cpu_ms_per_clip"]["total"] + swap)
                   / 3.6e6} for mode, m in r.items()}


# --- report ---------------------------------------------------------------------------------


def _minutes(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def report(r: dict, lpc: dict, rows: list[dict], hours: dict) -> None:
    print("\n| mode | clips | wall s | CPU s (driver / Ray workers / Ray system) | clips/s "
          "(wall) | clips per CPU-s | fixed s | marginal CPU ms/clip "
          "(driver + rest) |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | --- |")
    for mode, m in r.items():
        cpu = m["big_cpu_s"]
        per = m["marginal_cpu_ms_per_clip"]
        print(f"| --{mode} | {m['clips']} | {m['big_wall_s']:.1f} | {cpu['driver']:.1f} / "
              f"{cpu['ray_workers']:.1f} / {cpu['ray_system']:.1f} | "
              f"{m['clips_per_s_wall']:.0f} | {m['clips_per_cpu_s']:.0f} | "
              f"{m['fixed_wall_s']:.1f} | {per['total']:.2f} "
              f"({per['driver']:.2f} + {per['outside_driver']:.2f}) |")
    for mode, m in r.items():
        if not m["marginal_reliable"]:
            print(f"WARNING --{mode}: the big and small runs differ by less than their noise; "
                  "below, whole-run costs per clip (fixed costs included) stand in for the "
                  "marginal ones: rerun with more --clips on a quiet machine")
        print(f"--{mode}: marginal per-core rate {m['marginal_clips_per_cpu_s']:.0f} clips per "
              f"CPU-second; RUSAGE_CHILDREN of the big run {m['big_rusage_children_cpu_s']:.1f} s "
              f"(sampled tree: {m['big_cpu_total_s']:.1f} s)")
    c, f = lpc["cpu_ms_per_clip"], lpc["cpu_us_per_frame"]
    print(f"\nLPC + residual on {lpc['clips']} clips x {lpc['frames_per_clip']} frames of "
          f"{lpc['frame_length']} samples, order {lpc['order']}, one thread: seed loop "
          f"{f['seed']:.1f} us/frame ({c['seed']:.2f} ms/clip), dotsim {f['dotsim']:.2f} "
          f"us/frame ({c['dotsim']:.2f} ms/clip): {c['seed'] / c['dotsim']:.1f}x")
    print(f"\nProjected for all {FULL_CLIPS:,} clips (seed: the same pipeline with its LPC "
          "loop; see the docstring for the model)")
    print("| setup | cores | dotsim prepare | seed's LPC loop | seed / dotsim | limited by "
          "(dotsim / seed) | no driver bound: dotsim / seed |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for row in rows:
        ratio = f"{row['seed_s'] / row['dotsim_s']:.1f}x" if row["seed_s"] else "-"
        limit = f"{row['limit']} / {row['seed_limit']}" if "limit" in row else "-"
        print(f"| {row['setup']} | {row['cores']} | {_minutes(row['dotsim_s'])} | "
              f"{_minutes(row['seed_s'])} | {ratio} | {limit} | "
              + (f"{_minutes(row['dotsim_cores_only_s'])} / "
                 f"{_minutes(row['seed_cores_only_s'])} |" if "limit" in row else "- |"))
    print("'driver': the driver's serial share (results from the object store, Parquet "
          "writing) bounds the time, not the cores; last column: the same work spread over "
          "all cores, as if the tasks wrote their own shards")
    for mode, h in hours.items():
        print(f"CPU time for all clips, --{mode}: dotsim {h['dotsim_h']:.2f} core-hours, "
              f"seed's loop {h['seed_h']:.2f} ({h['seed_h'] / h['dotsim_h']:.1f}x)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=5000, help="clips in the timed folder")
    parser.add_argument("--small-clips", type=int, default=256,
                        help="clips in the folder that measures the fixed cost")
    parser.add_argument("--base-speakers", type=int, nargs=3, default=(8, 1, 1),
                        metavar=("TRAIN", "VALIDATION", "TEST"),
                        help="synthetic speakers per split (35 clips each) to copy from")
    parser.add_argument("--copy", action="store_true",
                        help="copy the WAVs instead of hard-linking them")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each mode and size, taking turns (medians reported)")
    parser.add_argument("--mode", choices=["both", "no-ray", "ray"], default="both")
    parser.add_argument("--lpc-clips", type=int, default=50,
                        help="clips (x 100 frames) for the seed's LPC loop timing")
    parser.add_argument("--nodes", type=int, default=4,
                        help="largest cluster in the projection table")
    parser.add_argument("--cores-per-node", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the folders go (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.small_clips >= args.clips:
        parser.error("--small-clips must be below --clips")
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=args.workdir))
    try:
        print(f"# {_cpu_name()}, {os.cpu_count()} CPUs; {args.clips} clips "
              f"({'copied' if args.copy else 'hard-linked'}), fixed cost from "
              f"{args.small_clips}; work folder {work}")
        start = time.perf_counter()
        base = make_base(work / "base", tuple(args.base_speakers))
        sources = {"big": make_source(work / "big", args.clips, base, copy=args.copy),
                   "small": make_source(work / "small", args.small_clips, base, copy=args.copy)}
        print(f"source folders made in {time.perf_counter() - start:.1f} s "
              f"({len(list(base.glob('*/*.wav')))} distinct clips)", flush=True)
        modes = ["no-ray", "ray"] if args.mode == "both" else [args.mode]
        runs = run_modes(sources, work, args.repeats, modes)
        lpc = lpc_sample(sources["big"], args.lpc_clips, FeatureSettings().lpc_order)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r = rates(runs)
    rows = projections(r, lpc, args.nodes, args.cores_per_node)
    hours = core_hours(r, lpc)
    report(r, lpc, rows, hours)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": _cpu_name(), "cpus": os.cpu_count(), "clips": args.clips,
            "full_clips": FULL_CLIPS, "runs": runs, "rates": r, "lpc": lpc,
            "projections": rows, "core_hours": hours}, indent=2) + "\n")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
