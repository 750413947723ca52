"""Training throughput: Ray Train against bare torch DDP, global against local scope, and
the similarity loss's share of a training step.

    .venv/bin/python bench/bench_train.py [--data DIR] [--epochs 3] [--rounds 2] [--workers 2]

Both sides run the same per-rank code (``workers.train.train_epoch``) on the same data,
model and world size, one torch thread per rank; the bare side is torch.multiprocessing
+ gloo. The bare variants (global scope, local scope, loss replaced by 0) take turns for
--rounds rounds, so a busy machine slows all of them alike; each figure is the median
epoch time over every epoch but each run's first (which warms up). Prints a Markdown
table; copy it with the machine into README.md's performance section.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import workers.train as wt
from workers.config import RunConfig
from workers.data import load_prepared


def _zero_losses(emb, emb_recs, **kwargs):
    """Stands in for similarity_losses to measure a step without it (same graph otherwise)."""
    return torch.stack([(emb.sum() + emb_rec.sum()) * 0 for emb_rec in emb_recs])


def _bare_rank(rank, world_size, init_file, cfg_dict, epochs, without_loss, out):
    cfg = RunConfig.from_dict(cfg_dict)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    if without_loss:
        wt.similarity_losses = _zero_losses
    ctx = wt.RankContext(rank, world_size, torch.device("cpu"))
    data = load_prepared(cfg.data, splits=("train",))
    train = wt.FeatureNorm.fit(data.splits["train"])(data.splits["train"], ctx.device)
    model = wt.build_model(cfg, data)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    history = [wt.train_epoch(ddp, optimizer, train, cfg, epoch, ctx) for epoch in range(epochs)]
    if rank == 0:
        out.put(history)
    dist.destroy_process_group()


def bare_ddp(cfg: RunConfig, epochs: int, without_loss: bool = False) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    mp.start_processes(_bare_rank, args=(cfg.workers, init_file, cfg.to_dict(), epochs,
                                         without_loss, out),
                       nprocs=cfg.workers, start_method="spawn")
    return out.get()


def ray_train(cfg: RunConfig) -> tuple[list[dict], float]:
    from orchestrator.launch import run_training

    start = time.perf_counter()
    summary = run_training(cfg, progress=False)
    return summary["history"], time.perf_counter() - start


def warm_epoch_seconds(history: list[dict]) -> list[float]:
    """Epoch times of a run without its first epoch (start-up, allocator warm-up)."""
    return [m["epoch_seconds"] for m in history[1:]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="prepared folder (default: synthetic)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not timed)")

    from orchestrator.launch import ray_session
    from orchestrator.prepare import ensure_synthetic

    data = args.data or str(ensure_synthetic(progress=False))
    storage = tempfile.mkdtemp(prefix="dotsim-bench-")
    cfg = RunConfig(data=data, workers=args.workers, epochs=args.epochs, storage_path=storage,
                    threads_per_worker=1)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.workers} ranks x 1 thread, preset {cfg.preset}, batch {cfg.batch_size}, "
          f"{args.epochs} epochs x {args.rounds} rounds (first epoch of each run not timed)")
    variants = {
        "bare DDP, dot:minmax:global": (cfg.replace(scope="global"), False),
        "bare DDP, dot:minmax:local": (cfg.replace(scope="local"), False),
        "bare DDP, similarity loss replaced by 0": (cfg, True),
    }
    seconds = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (variant, without_loss) in variants.items():
            seconds[name] += warm_epoch_seconds(bare_ddp(variant, args.epochs, without_loss))
    with ray_session(num_cpus=max(2, args.workers)):
        history, wall = ray_train(cfg.replace(run_name="bench-ray-global"))
    seconds["Ray Train, dot:minmax:global"] = warm_epoch_seconds(history)

    samples = history[-1]["samples_per_second"] * history[-1]["epoch_seconds"]
    median = {name: statistics.median(t) for name, t in seconds.items()}
    print("\n| setup | samples/s | median epoch s | epochs timed | spread (min-max) s |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, t in seconds.items():
        print(f"| {name} | {samples / median[name]:.0f} | {median[name]:.2f} | {len(t)} "
              f"| {min(t):.2f}-{max(t):.2f} |")
    glob, loc, none, ray_ = median.values()
    print(f"\nRay Train / bare DDP throughput: {glob / ray_:.3f} (goal >= 0.9)")
    print(f"step time global / local: {glob / loc:.3f} (goal <= 1.05)")
    print(f"similarity loss share of a step (global): {(glob - none) / glob:.1%} (goal <= 5%)")
    print(f"Ray Train run wall time incl. start-up: {wall:.1f} s")


if __name__ == "__main__":
    main()
