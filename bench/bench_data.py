"""Memory and start-up of training on Speech-Commands-sized data, 1, 2 and 4 workers.

Writes, once, a prepared folder the size of Speech Commands v2 (105,829 clips: 84,843
train, 9,981 validation, 11,005 test; 35 words; random features in the real schema,
about 5 GB), makes the node's copy (``workers.node_cache.node_copy``, timed on its own), then
trains one epoch (preset tiny) with 1, 2 and 4 Ray Train workers on this machine and
reports for each:

- the summed PSS (proportional set size) of the Train worker processes, the peak of a
  sample every 0.5 s: shared pages count once over the processes that map them;
- the time from ``launch`` to the first training step of rank 0;
- the epoch's samples/s.

Goal (issue 10): summed PSS at 4 workers at most 1.3x the 1-worker figure.

    python bench/bench_data.py                     # about 15 minutes on 2 cores
    python bench/bench_data.py --workers 1,2 --clips 20000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from workers.node_cache import node_copy
from workers.prepared import PreparedWriter
from workers.train import train_loop_per_worker, train_step

GSC_V2 = {"train": 84_843, "validation": 9_981, "test": 11_005}  # 105,829 clips
FRAMES, N_MELS, WORDS = 101, 40, 35
SHARD = 1024  # clips per Parquet shard


def write_gsc_sized(out: Path, scale: float, seed: int = 0) -> Path:
    """A prepared folder with GSC v2's split sizes (times ``scale``) of random features."""
    if (out / "meta.json").is_file():
        return out
    rng = np.random.default_rng(seed)
    writer = PreparedWriter(out, frames=FRAMES, n_mels=N_MELS, overwrite=True)
    for split, full in GSC_V2.items():
        count, speakers = round(full * scale), 20 if split == "train" else 10
        for start in range(0, count, SHARD):
            n = min(SHARD, count - start)
            features = {name: rng.standard_normal((n, FRAMES, N_MELS), dtype=np.float32)
                        for name in ("speech", "formant", "residual")}
            ids = np.arange(start, start + n)
            writer.write(split, features, labels=ids % WORDS,
                         speakers=[f"{split}{i % speakers}" for i in ids],
                         clips=[f"{split}/{i}" for i in ids])
    return Path(writer.commit({"labels": [f"word{i:02d}" for i in range(WORDS)],
                               "sample_rate": 16000, "source": "bench_data (random)"}))


def _first_step(marker: str, model, optimizer, batch, cfg, ctx, where, **kwargs):
    """train_step, noting the wall time of rank 0's first step in ``marker``."""
    if ctx.rank == 0 and not os.path.exists(marker):
        Path(marker).write_text(str(time.time()))
    return train_step(model, optimizer, batch, cfg, ctx, where, **kwargs)


class PssSampler(threading.Thread):
    """Peak over time of the summed PSS of the Ray Train worker processes."""

    def __init__(self, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.per_worker, self.done = every_s, 0, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            sizes = []
            for proc in psutil.process_iter(["cmdline"]):
                if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
                    try:
                        sizes.append(proc.memory_full_info().pss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            if sum(sizes) > self.peak:
                self.peak, self.per_worker = sum(sizes), sorted(sizes)
            self.done.wait(self.every_s)


def run(data: Path, workers: int, storage: Path, batch_size: int) -> dict:
    from orchestrator.launch import launch
    from workers.config import RunConfig

    # the step wrapper lives in __main__, so Ray sends it by value to the workers
    marker = storage / f"first-step-{workers}"
    marker.unlink(missing_ok=True)  # a marker left by an earlier run of the bench
    cfg = RunConfig(data=str(data), storage_path=str(storage),
                    run_name=f"w{workers}-{time.strftime('%H%M%S')}",  # a new run each time
                    preset="tiny", epochs=1, batch_size=batch_size, workers=workers,
                    clips_per_class=batch_size // 32,  # 32 words of the 35 per batch
                    cpus_per_worker=round(1.9 / workers, 2) if workers > 1 else 1.0)
    loop = functools.partial(train_loop_per_worker,
                             step=functools.partial(_first_step, str(marker)))
    sampler = PssSampler()
    sampler.start()
    start = time.time()
    summary = launch(cfg, loop=loop, progress=False)
    sampler.done.set()
    sampler.join()
    epoch = summary["history"][0]
    return {"workers": workers, "pss_gib": sampler.peak / 2**30,
            "pss_per_worker_gib": [s / 2**30 for s in sampler.per_worker],
            "first_step_s": float(marker.read_text()) - start,
            "samples_per_s": epoch["samples_per_second"], "run_s": time.time() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of GSC v2's size (1: 105,829 clips)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--folder", default=None, help="where the prepared folder goes")
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()

    from orchestrator.launch import ray_session

    base = Path(args.folder or tempfile.mkdtemp(prefix="dotsim-bench-data-"))
    start = time.perf_counter()
    data = write_gsc_sized(base / "gsc-sized", args.scale)
    written = time.perf_counter() - start
    start = time.perf_counter()
    node_copy(data)
    copied = time.perf_counter() - start
    size = sum(p.stat().st_size for p in data.glob("*.parquet")) / 2**30
    print(f"# {platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; prepared folder {size:.2f} GiB "
          f"written in {written:.0f} s; node copy made in {copied:.0f} s (once per node)")
    rows = []
    with ray_session(num_cpus=2):
        for workers in [int(w) for w in args.workers.split(",")]:
            rows.append(run(data, workers, base / "runs", args.batch_size))
            print(json.dumps(rows[-1]), flush=True)
    one = rows[0]["pss_gib"]
    print("\n| workers | summed PSS GiB | x 1 worker | per worker GiB | launch to first step s "
          "| samples/s |\n| ---: | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        print(f"| {r['workers']} | {r['pss_gib']:.2f} | {r['pss_gib'] / one:.2f} | "
              f"{', '.join(f'{p:.2f}' for p in r['pss_per_worker_gib'])} | "
              f"{r['first_step_s']:.1f} | {r['samples_per_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "copy_s": copied,
                                               "folder_gib": size}, indent=2))


if __name__ == "__main__":
    main()
