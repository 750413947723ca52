"""Training throughput: Ray Train against bare torch DDP, global against local scope, and
the similarity loss's share of a training step.

    .venv/bin/python bench/bench_train.py [--data DIR] [--epochs 3] [--rounds 2]
                                          [--blocks 5] [--block-steps 12] [--workers 2]

Everything runs the same per-rank code (``workers.train``) on the same data, model and
world size, one torch thread per rank; the bare side is torch.multiprocessing + gloo.

1. Throughput: bare DDP (--rounds runs) against one Ray Train run, global scope; the
   median epoch time over every epoch but each run's first (which warms up).
2. Step time: in one bare DDP process group, the variants (global scope, local scope,
   similarity loss replaced by 0) take turns in blocks of --block-steps training steps,
   --blocks times (the first block of each is not timed); the median step time (rank 0's
   wall time; DDP keeps the ranks in step) of each. Taking turns inside the same
   processes keeps process placement and other programs' bursts on 2 shared cores out of
   the ratios, which whole separate runs moved by several percent.

Prints Markdown tables; copy them with the machine into bench/RESULTS.md.
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
from losses import similarity_losses
from workers.config import RunConfig
from workers.data import load_prepared
from workers.sampler import epoch_batches


def _zero_losses(emb, emb_recs, **kwargs):
    """Stands in for similarity_losses to measure a step without it (same graph otherwise)."""
    return torch.stack([(emb.sum() + emb_rec.sum()) * 0 for emb_rec in emb_recs])


# The variants of the step-time comparison: (scope, loss replaced by 0).
STEP_VARIANTS = {
    "dot:minmax:global": ("global", False),
    "dot:minmax:local": ("local", False),
    "similarity loss replaced by 0": ("global", True),
}


def _setup_rank(rank, world_size, init_file, cfg):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    ctx = wt.RankContext(rank, world_size, torch.device("cpu"))
    data = load_prepared(cfg.data, splits=("train",))
    train = wt.FeatureNorm.fit(data.splits["train"])(data.splits["train"], ctx.device)
    model = wt.build_model(cfg, data.meta, classes=len(data.labels))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    return ctx, train, ddp, optimizer


def _epochs_rank(rank, world_size, init_file, cfg_dict, out):
    cfg = RunConfig.from_dict(cfg_dict)
    ctx, train, ddp, optimizer = _setup_rank(rank, world_size, init_file, cfg)
    history = [wt.train_epoch(ddp, optimizer, train, cfg, epoch, ctx)
               for epoch in range(cfg.epochs)]
    if rank == 0:
        out.put(history)
    dist.destroy_process_group()


def _steps_rank(rank, world_size, init_file, cfg_dict, blocks, block_steps, out):
    cfg = RunConfig.from_dict(cfg_dict)
    ctx, train, ddp, optimizer = _setup_rank(rank, world_size, init_file, cfg)
    batches = epoch_batches(train.labels.numpy(), classes_per_batch=cfg.groups_per_batch,
                            clips_per_class=cfg.clips_per_class, seed=cfg.seed, epoch=0)
    seconds = {name: [] for name in STEP_VARIANTS}
    step = 0
    for block in range(blocks):
        for name, (scope, zero) in STEP_VARIANTS.items():
            loss_fn = _zero_losses if zero else similarity_losses
            variant = cfg.replace(scope=scope)
            for _ in range(block_steps):
                local = batches[step % len(batches)].for_rank(ctx.rank, ctx.world_size)
                batch = wt.gather_batch(train, local, ctx)
                start = time.perf_counter()
                wt.train_step(ddp, optimizer, batch, variant, ctx, (0, step), loss_fn=loss_fn)
                if block:  # the first block warms up
                    seconds[name].append(time.perf_counter() - start)
                step += 1
    if rank == 0:
        out.put(seconds)
    dist.destroy_process_group()


def _spawn(fn, cfg: RunConfig, *args):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    mp.start_processes(fn, args=(cfg.workers, init_file, cfg.to_dict(), *args, out),
                       nprocs=cfg.workers, start_method="spawn")
    return out.get()


def bare_ddp(cfg: RunConfig) -> list[dict]:
    """Per-epoch metrics of rank 0 of a bare DDP run of cfg.epochs epochs."""
    return _spawn(_epochs_rank, cfg)


def step_times(cfg: RunConfig, blocks: int, block_steps: int) -> dict[str, list[float]]:
    """Seconds of each timed step per STEP_VARIANTS entry, the variants taking turns."""
    return _spawn(_steps_rank, cfg, blocks, block_steps)


def ray_train(cfg: RunConfig) -> tuple[list[dict], float]:
    from orchestrator.launch import launch

    start = time.perf_counter()
    summary = launch(cfg, progress=False)
    return summary["history"], time.perf_counter() - start


def warm_epoch_seconds(history: list[dict]) -> list[float]:
    """Epoch times of a run without its first epoch (start-up, allocator warm-up)."""
    return [m["epoch_seconds"] for m in history[1:]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="prepared folder (default: synthetic)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="bare DDP runs for throughput")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--block-steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 2 or args.blocks < 2:
        parser.error("--epochs and --blocks must be at least 2 (the first is not timed)")

    from orchestrator.launch import ray_session
    from orchestrator.prepare import ensure_synthetic

    data = args.data or str(ensure_synthetic(progress=False))
    storage = tempfile.mkdtemp(prefix="dotsim-bench-")
    cfg = RunConfig(data=data, workers=args.workers, epochs=args.epochs, storage_path=storage,
                    threads_per_worker=1)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.workers} ranks x 1 thread, preset {cfg.preset}, batch {cfg.batch_size}")

    bare = [t for _ in range(args.rounds) for t in warm_epoch_seconds(bare_ddp(cfg))]
    with ray_session(num_cpus=max(2, args.workers)):
        history, wall = ray_train(cfg.replace(run_name="bench-ray-global"))
    ray_ = warm_epoch_seconds(history)
    samples = history[-1]["samples_per_second"] * history[-1]["epoch_seconds"]
    print(f"\nThroughput, dot:minmax:global, {args.epochs} epochs per run (first not timed)")
    print("\n| setup | samples/s | median epoch s (spread) | epochs timed |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in (("bare DDP", bare), ("Ray Train", ray_)):
        print(f"| {name} | {samples / statistics.median(t):.0f} | {statistics.median(t):.2f} "
              f"({min(t):.2f}-{max(t):.2f}) | {len(t)} |")
    print(f"\nRay Train / bare DDP throughput: "
          f"{statistics.median(bare) / statistics.median(ray_):.3f} (goal >= 0.9)")
    print(f"Ray Train run wall time incl. start-up: {wall:.1f} s")

    steps = step_times(cfg, args.blocks, args.block_steps)
    ms = {name: statistics.median(t) * 1e3 for name, t in steps.items()}
    print(f"\nStep time, bare DDP, variants taking turns in blocks of {args.block_steps} "
          f"steps, {args.blocks} rounds (first not timed)")
    print("\n| variant | median step ms | quartiles ms | steps |\n| --- | ---: | --- | ---: |")
    for name, t in steps.items():
        q1, _, q3 = statistics.quantiles(t, n=4)
        print(f"| {name} | {ms[name]:.1f} | {q1 * 1e3:.1f}-{q3 * 1e3:.1f} | {len(t)} |")
    glob, loc, zero = ms.values()
    print(f"\nstep time global / local: {glob / loc:.3f} (goal <= 1.05)")
    print(f"similarity loss share of a step (global, both terms, communication included): "
          f"{(glob - zero) / glob:.1%} (goal <= 5%)")


if __name__ == "__main__":
    main()
