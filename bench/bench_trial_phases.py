"""What one FSKIL trial spends besides its epochs, phase by phase, in process (no Ray).

    HOME=/tmp/home-bench .venv/bin/python bench/bench_trial_phases.py [--repeats 3]

On the default synthetic corpus (``orchestrator.prepare.ensure_synthetic()``) under the
default FSKIL config (``RunConfig(protocol="fskil", batch_size=80)``), every phase is
timed with the calls ``workers.train.train_loop_per_worker`` makes, on a freshly
initialised model (none of these timings depends on training). A trial's ranks run
2 workers x 1 CPU, so the phases run with one torch thread and the rank's evaluation
chunk (batch_size // workers); every rank runs the final evaluation in full, in parallel,
so one rank's time is the trial's. The training epoch for scale runs single-process over
the whole global batch (``train_epoch`` needs no process group at world size 1) with
``--epoch-threads`` threads (default 2: the two ranks' CPUs, without their all-reduces).
Prints a Markdown table: median seconds over ``--repeats``, and the share of one epoch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from orchestrator.prepare import ensure_synthetic
from workers import fskil, node_cache
from workers.config import RunConfig
from workers.data import load_prepared
from workers.train import (
    FeatureNorm,
    RankContext,
    TrainState,
    Words,
    _seed_dropout,
    _track_best,
    build_model,
    embed_speech,
    evaluate,
    probe_accuracies,
    train_epoch,
)

# phase -> what its result depends on (a "data only" result could be computed once per
# sweep, or once per seed, and reused without changing any reported number)
PER_EPOCH = "per epoch"
ONCE = "once per trial"


def _forget_node_copy() -> None:
    """Let the next load_prepared go through node_copy again, as a fresh worker process
    does (the copy on disk stays)."""
    for folder, lock in list(node_cache._IN_USE.items()):
        lock.close()
        del node_cache._IN_USE[folder]


def timed(fn, repeats: int, before=None) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the phases (a trial's rank: 1)")
    parser.add_argument("--epoch-threads", type=int, default=2,
                        help="torch threads of the single-process training epoch")
    parser.add_argument("--workers", type=int, default=2,
                        help="the trial's workers: sets the evaluation chunk")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs to time")
    args = parser.parse_args()

    data_dir = str(ensure_synthetic())
    cfg = RunConfig(protocol="fskil", batch_size=80, data=data_dir, workers=args.workers)
    torch.set_num_threads(args.threads)
    ctx = RankContext.for_run(cfg, rank=0, world_size=1, device=torch.device("cpu"))
    ctx.eval_batch = max(1, cfg.batch_size // args.workers)  # a rank's chunk in the trial
    rows = []  # (phase, how often, seconds, depends on)

    # --- data: the first trial on a node makes the node's copy; every worker maps it --
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("DOTSIM_NODE_CACHE")
        os.environ["DOTSIM_NODE_CACHE"] = tmp
        start = time.perf_counter()
        load_prepared(cfg.data)
        first_copy = time.perf_counter() - start
        _forget_node_copy()
        if old is None:
            del os.environ["DOTSIM_NODE_CACHE"]
        else:
            os.environ["DOTSIM_NODE_CACHE"] = old
    load_prepared(cfg.data)  # the node copy exists from here on
    rows.append(("node copy of the prepared data (first trial on a node only)",
                 "once per node", first_copy, "data"))
    t, data = timed(lambda: load_prepared(cfg.data), args.repeats, before=_forget_node_copy)
    rows.append(("load_prepared (copy exists: meta check + memory maps)", ONCE, t, "data"))

    t, words = timed(lambda: Words(cfg, data.labels, data.splits["train"].labels), args.repeats)
    rows.append(("Words (class order, shot check)", ONCE, t, "data, protocol"))
    t, normalise = timed(lambda: FeatureNorm.fit(words.trained(data.splits["train"])),
                         args.repeats)
    rows.append(("FeatureNorm.fit (base training rows)", ONCE, t, "data, protocol"))

    def apply():
        splits = {name: normalise(split, ctx.device) for name, split in data.splits.items()}
        return splits, {name: words.trained(split) for name, split in splits.items()}

    t, (splits, trained) = timed(apply, args.repeats)
    rows.append(("FeatureNorm apply + base views of the splits", ONCE, t, "data, protocol"))
    t, model = timed(lambda: build_model(cfg, data.meta, classes=words.classes), args.repeats)
    rows.append(("build_model", ONCE, t, "seed, variant"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # --- per epoch besides train_epoch ------------------------------------------------
    t, _ = timed(lambda: evaluate(model, trained["validation"], ctx), args.repeats)
    rows.append((f"validation pass (evaluate, {len(trained['validation'])} clips)",
                 PER_EPOCH, t, "model"))
    metrics = {"epoch": 1, "val_acc": 0.5}
    t, state = timed(lambda: _track_best(TrainState(), model, metrics), args.repeats)
    rows.append(("_track_best (copy of the best weights, when improved)", PER_EPOCH, t,
                 "model"))

    def checkpoint():
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "best_model": state.best_model}, Path(tmp) / "state.pt")

    t, _ = timed(checkpoint, args.repeats)
    rows.append(("checkpoint torch.save, rank 0 (Ray's persisting not included)",
                 PER_EPOCH, t, "model"))

    # --- final evaluation, once, after the last epoch --------------------------------
    t, _ = timed(lambda: evaluate(model, trained["test"], ctx), args.repeats)
    rows.append((f"test pass (evaluate, {len(trained['test'])} base clips)", ONCE, t, "model"))
    t, _ = timed(lambda: probe_accuracies(model, splits["test"], ctx.eval_batch), args.repeats)
    rows.append((f"probes (probe_accuracies, {len(splits['test'])} clips)", ONCE, t, "model"))
    fskil_args = (splits["train"], splits["test"], words.order, words.labels, cfg.fskil)
    t, _ = timed(lambda: fskil.run_protocol(
        lambda split, r: embed_speech(model, split, r, ctx.eval_batch), *fskil_args,
        seed=cfg.seed), args.repeats)
    rows.append(("FSKIL protocol on the encoder (run_protocol)", ONCE, t, "model"))
    results = []
    t, _ = timed(lambda: results.append(fskil.logmel_baseline(
        *fskil_args, seed=cfg.seed, standardised_with=normalise.stats["speech"])),
        args.repeats)
    same = all(r.per_episode == results[0].per_episode for r in results)
    rows.append(("log-mel baseline (logmel_baseline)", ONCE, t,
                 "data, protocol, seed only" + ("" if same else " (NOT repeatable!)")))

    # --- one training epoch for scale -------------------------------------------------
    torch.set_num_threads(args.epoch_threads)
    epoch_times = []
    for epoch in range(args.epochs):
        _seed_dropout(cfg, epoch, ctx)
        out = train_epoch(model, optimizer, trained["train"], cfg, epoch, ctx)
        epoch_times.append(out["epoch_seconds"])
    epoch = statistics.median(epoch_times)

    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{len(trained['train'])} base training clips, batch {cfg.batch_size}, "
          f"eval chunk {ctx.eval_batch}, phases at {args.threads} thread(s), "
          f"median of {args.repeats}\n")
    print("| phase | runs | median s | share of one epoch | result depends on |")
    print("| --- | --- | ---: | ---: | --- |")
    for name, when, seconds, depends in rows:
        print(f"| {name} | {when} | {seconds:.3f} | {seconds / epoch:.0%} | {depends} |")
    print(f"| one training epoch (train_epoch, single process, {args.epoch_threads} threads, "
          f"epoch_seconds) | {cfg.epochs} per trial | {epoch:.3f} | 100% | model |")
    per_epoch = sum(s for _, w, s, _ in rows if w == PER_EPOCH)
    once = sum(s for name, w, s, _ in rows if w == ONCE)
    print(f"\nper epoch besides training: {per_epoch:.2f} s ({per_epoch / epoch:.0%}); "
          f"once per trial: {once:.2f} s ({once / epoch:.0%} of an epoch); "
          f"a {cfg.epochs}-epoch trial: {cfg.epochs * epoch:.1f} s of epochs, "
          f"{cfg.epochs * per_epoch + once:.1f} s of these phases")


if __name__ == "__main__":
    main()
