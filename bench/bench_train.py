"""Training throughput: Ray Train against bare torch DDP, global against local scope, and
the similarity loss's share of a training step.

    .venv/bin/python bench/bench_train.py [--data DIR] [--epochs 2] [--workers 2]

Both sides run the same per-rank code (``workers.train.train_epoch``) on the same data,
model and world size, one torch thread per rank; the bare side is torch.multiprocessing
+ gloo. Figures are samples/s of the last epoch (the first warms up). Prints a Markdown
table; copy it with the machine into README.md's performance section.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import workers.train as wt
from workers.config import RunConfig
from workers.data import load_prepared


def _zero_loss(emb, emb_rec, **kwargs):
    """Stands in for similarity_loss to measure a step without it (same graph otherwise)."""
    return (emb.sum() + emb_rec.sum()) * 0


def _bare_rank(rank, world_size, init_file, cfg_dict, epochs, without_loss, out):
    cfg = RunConfig.from_dict(cfg_dict)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    if without_loss:
        wt.similarity_loss = _zero_loss
    ctx = wt.RankContext(rank, world_size, torch.device("cpu"))
    data = load_prepared(cfg.data, splits=("train",))
    train = wt.FeatureNorm.fit(data.splits["train"])(data.splits["train"], ctx.device)
    model = wt.build_model(cfg, data)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    for epoch in range(epochs):
        metrics = wt.train_epoch(ddp, optimizer, train, cfg, epoch, ctx)
    if rank == 0:
        out.put(metrics)
    dist.destroy_process_group()


def bare_ddp(cfg: RunConfig, epochs: int, without_loss: bool = False) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    mp.start_processes(_bare_rank, args=(cfg.workers, init_file, cfg.to_dict(), epochs,
                                         without_loss, out),
                       nprocs=cfg.workers, start_method="spawn")
    return out.get()


def ray_train(cfg: RunConfig) -> tuple[dict, float]:
    from orchestrator.launch import run_training

    start = time.perf_counter()
    summary = run_training(cfg, progress=False)
    return summary["history"][-1], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="prepared folder (default: synthetic)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from orchestrator.launch import ray_session
    from orchestrator.prepare import ensure_synthetic

    data = args.data or str(ensure_synthetic(progress=False))
    storage = tempfile.mkdtemp(prefix="dotsim-bench-")
    cfg = RunConfig(data=data, workers=args.workers, epochs=args.epochs, storage_path=storage,
                    threads_per_worker=1)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.workers} ranks x 1 thread, preset {cfg.preset}, batch {cfg.batch_size}, "
          f"{args.epochs} epochs (last one timed)")
    rows = []
    for scope in ("global", "local"):
        m = bare_ddp(cfg.replace(scope=scope), args.epochs)
        rows.append((f"bare DDP, dot:minmax:{scope}", m["samples_per_second"],
                     m["epoch_seconds"]))
    m = bare_ddp(cfg, args.epochs, without_loss=True)
    rows.append(("bare DDP, similarity loss replaced by 0", m["samples_per_second"],
                 m["epoch_seconds"]))
    with ray_session(num_cpus=max(2, args.workers)):
        m, wall = ray_train(cfg.replace(run_name="bench-ray-global"))
    rows.append(("Ray Train, dot:minmax:global", m["samples_per_second"], m["epoch_seconds"]))

    print("\n| setup | samples/s | epoch s |\n| --- | ---: | ---: |")
    for name, sps, sec in rows:
        print(f"| {name} | {sps:.0f} | {sec:.2f} |")
    glob, loc, none, ray_ = (r[2] for r in rows)
    print(f"\nRay Train / bare DDP throughput: {rows[0][2] / ray_:.3f} (goal >= 0.9)")
    print(f"step time global / local: {glob / loc:.3f} (goal <= 1.05)")
    print(f"similarity loss share of a step (global): {(glob - none) / glob:.1%} (goal <= 5%)")
    print(f"Ray Train run wall time incl. start-up: {wall:.1f} s")


if __name__ == "__main__":
    main()
