"""Forward+backward time of every loss variant against the memory-bound baseline, and the
global/local time ratio at world size 2 on gloo.

    .venv/bin/python bench/bench_loss.py [--batch 4096] [--dim 256] [--repeats 50]

Prints one table; copy it with the machine into bench/RESULTS.md.
"""

import argparse
import itertools
import os
import platform
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from losses import similarity_loss

VARIANTS = [("cosine", "minmax")] + list(itertools.product(["dot", "dot-legacy"],
                                                           ["minmax", "meanstd"]))


def timed(fn, repeats):
    """Median seconds of fn() over repeats, after warm-up."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


def step(loss_fn, emb, emb_rec):
    def run():
        emb.grad = emb_rec.grad = None
        loss_fn(emb, emb_rec).backward()
    return run


def inputs(batch, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, dim, generator=gen).requires_grad_()
    emb_rec = (emb.detach() + torch.randn(batch, dim, generator=gen)).requires_grad_()
    return emb, emb_rec


def single_process(batch, dim, repeats):
    emb, emb_rec = inputs(batch, dim)
    base = timed(step(lambda a, b: (a * b).sum(), emb, emb_rec), repeats)
    rows = [("baseline (emb * emb_rec).sum()", base)]
    for sim, norm in VARIANTS:
        t = timed(step(lambda a, b, s=sim, n=norm: similarity_loss(a, b, similarity=s, norm=n),
                       emb, emb_rec), repeats)
        rows.append((f"{sim}:{norm}", t))
    return rows


def _ranked(rank, world_size, init_file, batch, dim, repeats, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    emb, emb_rec = inputs(batch // world_size, dim, seed=rank)
    times = {}
    for sim, norm in VARIANTS:
        for scope in ("local", "global"):
            dist.barrier()
            times[(sim, norm, scope)] = timed(
                step(lambda a, b, s=sim, n=norm, sc=scope: similarity_loss(
                    a, b, similarity=s, norm=n, scope=sc), emb, emb_rec), repeats)
    if rank == 0:
        out.put(times)
    dist.destroy_process_group()


def world_size_two(batch, dim, repeats):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    mp.start_processes(_ranked, args=(2, init_file, batch, dim, repeats, out), nprocs=2,
                       start_method="spawn")
    return out.get()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {threads} threads; B={args.batch}, D={args.dim}")
    rows = single_process(args.batch, args.dim, args.repeats)
    base = rows[0][1]
    print("\n| variant (one process, fwd+bwd) | ms | x baseline |\n| --- | ---: | ---: |")
    for name, t in rows:
        print(f"| {name} | {t * 1e3:.2f} | {t / base:.1f} |")
    times = world_size_two(args.batch, args.dim, args.repeats)
    print(f"\n| variant (world size 2, gloo, B={args.batch // 2} per rank, 1 thread each)"
          " | local ms | global ms | global / local |\n| --- | ---: | ---: | ---: |")
    for sim, norm in VARIANTS:
        loc, glob = times[(sim, norm, "local")], times[(sim, norm, "global")]
        print(f"| {sim}:{norm} | {loc * 1e3:.2f} | {glob * 1e3:.2f} | {glob / loc:.2f} |")


if __name__ == "__main__":
    main()
