"""What answering preemption notices costs, and what it saves.

    HOME=/tmp/home-bench .venv/bin/python bench/bench_preemption.py overhead [--rounds 10]
    HOME=/tmp/home-bench .venv/bin/python bench/bench_preemption.py redone

``overhead``: on a local Ray (2 workers x 1 CPU, the tiny model on a synthetic corpus of
``--speakers`` training speakers), epochs with the preemption watch
(``workers.preemption.PreemptionWatch``: an ask of ``ray.train.get_preemption_info``
every ``every`` steps) alternate with epochs without it; prints each one's time per
step, the asks' cost, the ``every`` the watch chose, and the watch's share of a step
(goal: at most 1%).

``redone``: the two-node scenario below, once with the watch and once with it off (the
epoch checkpoints alone, as before): a worker node drained for preemption with a
deadline while the run is in its second epoch, killed at the deadline, a node added back.
Prints the steps the restarted group trained again, and their worker-seconds.

``scenario``: one such run, as JSON on the last line (``tests/test_preemption_ray.py``
runs it): the cluster is a head without CPUs and one 2-CPU worker node on 127.0.0.1
(``ray.cluster_utils.Cluster``), the drain goes through ``ray drain-node`` as
``dotsim cluster watch-spot`` sends it, or through the watcher itself from a fake IMDSv2
(``--imds URL``, the test's server, which the caller arms when it sees ``NOTICE``).
Every step logs its place (``steps.log`` in the storage), so the steps redone are counted
from what the workers did, apart from the run's own record.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SMALL = {"speakers": (4, 2, 2), "clips_per_word_speaker": 1}  # tests' small corpus
STEP_SLEEP_S = 0.3  # scenario steps this long: the notice lands mid-epoch
DEADLINE_S = 12  # the notice comes this long before the kill (the test's, via the watcher)
REDONE_DEADLINE_S = 8  # the bench's: the kill lands in the middle of epoch 2


# --- overhead -------------------------------------------------------------------------


def overhead(rounds: int, speakers: int) -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from orchestrator.prepare import prepare

    data = Path(tempfile.mkdtemp()) / "corpus"
    prepare(None, data, seed=0, progress=False,
            corpus_sizes=SMALL | {"speakers": (speakers, 2, 2)})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = Path(tempfile.mkdtemp()) / "overhead.json"
    TorchTrainer(
        functools.partial(_overhead_loop, str(data), rounds, str(out)),
        scaling_config=ray.train.ScalingConfig(num_workers=2,
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp()),
    ).fit()
    m = json.loads(out.read_text())
    print(f"# Preemption watch overhead ({platform.node()}, {os.cpu_count()} CPUs, "
          f"2 workers x 1 CPU, tiny model, batch {m['batch']}, {m['steps']} steps an "
          f"epoch, {rounds} epochs each way)\n")
    print("| | seconds per step (median over rounds) |")
    print("|---|---|")
    print(f"| without the watch | {m['plain']:.4f} |")
    print(f"| with the watch | {m['watched']:.4f} |")
    print(f"\nAn ask: {1000 * m['ask']:.2f} ms; asked every {m['every']} steps; expected "
          f"share of a step {100 * m['ask'] / (m['every'] * m['plain']):.2f}%, measured "
          f"{100 * (m['watched'] / m['plain'] - 1):+.2f}% (the difference of two medians)")
    ray.shutdown()


def _overhead_loop(data: str, rounds: int, out: str, _config) -> None:
    import ray.train
    import torch

    from workers.config import RunConfig
    from workers.data import load_prepared
    from workers.preemption import PreemptionWatch
    from workers.sampler import steps_per_epoch
    from workers.train import FeatureNorm, RankContext, build_model, train_epoch

    ctx_ = ray.train.get_context()
    cfg = RunConfig(data=data, preset="tiny", batch_size=32, clips_per_class=2, workers=2,
                    dropout=0.0)
    ctx = RankContext(ctx_.get_world_rank(), ctx_.get_world_size(), torch.device("cpu"))
    torch.set_num_threads(1)
    prepared = load_prepared(cfg.data)
    train = FeatureNorm.fit(prepared.splits["train"])(prepared.splits["train"], ctx.device)
    model = ray.train.torch.prepare_model(build_model(cfg, prepared.meta,
                                                      classes=len(prepared.labels)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    watch = PreemptionWatch(ctx.distributed)
    steps = steps_per_epoch(len(train.labels), cfg.batch_size)
    times = {"plain": [], "watched": []}
    train_epoch(model, optimizer, train, cfg, 0, ctx)  # warm-up
    for r in range(rounds):
        for kind in ("plain", "watched") if r % 2 else ("watched", "plain"):
            start = time.perf_counter()
            train_epoch(model, optimizer, train, cfg, 1 + r, ctx,
                        watch=watch if kind == "watched" else None)
            times[kind].append((time.perf_counter() - start) / steps)
    if ctx.rank == 0:  # (a report without a checkpoint leaves Result.metrics empty)
        Path(out).write_text(json.dumps({
            "plain": statistics.median(times["plain"]),
            "watched": statistics.median(times["watched"]),
            "ask": watch.ask_seconds / max(1, watch.asks), "every": watch.every,
            "batch": cfg.batch_size, "steps": steps}))


# --- the two-node scenario ------------------------------------------------------------


def _logged_step(log_path: str, per_epoch: int, *args, **kwargs):
    """The training step, slowed so that a notice lands mid-epoch, logging its place."""
    from workers.train import train_step

    time.sleep(STEP_SLEEP_S)
    out = train_step(*args, **kwargs)
    epoch, index = args[5]
    with open(log_path, "a") as log:
        log.write(f"{os.getpid()} {epoch * per_epoch + index + 1}\n")
    return out


def scenario(data: str, storage: str, *, watch: bool, reference: bool,
             imds: str | None, deadline_s: float = DEADLINE_S) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.launch import launch, run_history
    from workers.config import RunConfig
    from workers.data import load_prepared
    from workers.sampler import steps_per_epoch
    from workers.train import train_loop_per_worker

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logging.getLogger("dotsim").addHandler(Keep())  # dotsim.progress's records too
    logging.getLogger("dotsim").setLevel(logging.INFO)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    cfg = RunConfig(data=data, storage_path=storage, preset="tiny", epochs=3, batch_size=4,
                    clips_per_class=2, workers=2, cpus_per_worker=1.0, dropout=0.0,
                    max_failures=0)
    per_epoch = steps_per_epoch(len(load_prepared(data).splits["train"]), cfg.batch_size)
    ref = launch(cfg.replace(run_name="reference"), progress=False) if reference else None
    steps_log = str(Path(storage) / "steps.log")
    loop = functools.partial(train_loop_per_worker, watch_preemption=watch,
                             step=functools.partial(_logged_step, steps_log, per_epoch))
    outcome = {}

    def preempted_run():
        try:
            outcome["summary"] = launch(cfg.replace(run_name="preempted"), loop=loop)
        except Exception as err:  # noqa: BLE001 - reported to the caller as it is
            outcome["error"] = repr(err)[:3000]

    thread = threading.Thread(target=preempted_run)
    thread.start()
    run = Path(storage) / "preempted"
    while not run_history(str(run)):  # epoch 1 is saved: the notice comes in epoch 2
        time.sleep(0.2)
    noticed = time.time()
    watcher = _notify(cluster.address, node.node_id, imds, deadline_s)
    time.sleep(max(0.0, noticed + deadline_s - time.time()))
    done_before_kill = _steps_done(steps_log)
    cluster.remove_node(node, allow_graceful=False)  # the reclaim, at the deadline
    cluster.add_node(num_cpus=2)
    thread.join(timeout=600)
    if watcher is not None:
        watcher.terminate()
        watcher.wait(timeout=30)
    record = json.loads((run / "dotsim_run.json").read_text())
    ray.shutdown()
    cluster.shutdown()
    resumed = outcome.get("summary", {}).get("history")
    return {"reference": ref["history"] if ref else None, "resumed": resumed,
            "error": outcome.get("error"), "preemptions": record.get("preemptions", []),
            "steps_done_before_kill": done_before_kill,
            "steps_trained": _steps_trained(steps_log), "per_epoch": per_epoch,
            "epochs": cfg.epochs, "workers": cfg.workers, "lines": lines}


def _notify(address: str, node_id: str, imds: str | None, deadline_s: float):
    """The notice: ``ray drain-node`` at once, or the spot watcher polling ``imds`` (the
    caller arms the fake IMDSv2 when it reads NOTICE)."""
    if imds is None:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "drain-node",
                        "--address", address, "--node-id", node_id,
                        "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                        "--reason-message", "spot reclaim (bench)",
                        "--deadline-remaining-seconds", str(int(deadline_s))], check=True)
        return None
    env = {**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds}
    dotsim = os.path.join(os.path.dirname(sys.executable), "dotsim")
    watcher = subprocess.Popen([dotsim, "cluster", "watch-spot", "--address", address,
                                "--node-id", node_id, "--interval", "0.5"], env=env)
    print(f"NOTICE {time.time() + deadline_s}", flush=True)
    return watcher


def _steps_done(path: str) -> int:
    """The run's steps done so far (the highest step any worker logged)."""
    if not os.path.exists(path):
        return 0
    return max(int(line.split()[1]) for line in Path(path).read_text().splitlines())


def _steps_trained(path: str) -> int:
    """Steps trained, counted over the worker groups (each rank logs each step)."""
    groups: dict[int, int] = {}
    for line in Path(path).read_text().splitlines():
        pid, step = map(int, line.split())
        groups[pid] = groups.get(pid, 0) + 1
    return sum(groups.values()) // 2  # 2 ranks


def redone() -> None:
    from orchestrator.prepare import prepare

    base = Path(tempfile.mkdtemp())
    prepare(None, base / "small", seed=0, progress=False, corpus_sizes=SMALL)
    rows = []
    for watch in (True, False):
        result = _scenario_subprocess(base / "small", base / f"runs-{watch}", watch)
        extra = result["steps_trained"] - result["epochs"] * result["per_epoch"]
        rows.append((watch, extra, result))
    per_epoch = rows[0][2]["per_epoch"]
    print(f"# Steps redone per preemption ({platform.node()}, {os.cpu_count()} CPUs; 2 "
          f"workers; {per_epoch} steps an epoch of {STEP_SLEEP_S} s or more; notice "
          f"{REDONE_DEADLINE_S} s before the kill, sent after epoch 1's checkpoint)\n")
    print("| checkpoints | notice at step | saved at step | steps trained again | "
          "worker-seconds redone |")
    print("|---|---|---|---|---|")
    for watch, extra, result in rows:
        [entry] = result["preemptions"] or [{}]
        print(f"| {'on notice (the watch)' if watch else 'each epoch only'} | "
              f"{entry.get('notice_step', '-')} | {entry.get('step_checkpointed', '-')} | "
              f"{extra} | {extra * STEP_SLEEP_S * result['workers']:.1f} |")


def _scenario_subprocess(data: Path, storage: Path, watch: bool) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1"}
    command = [sys.executable, __file__, "scenario", "--data", str(data),
               "--storage", str(storage), "--deadline", str(REDONE_DEADLINE_S)] + (
                   [] if watch else ["--no-watch"])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    [line] = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    cost = sub.add_parser("overhead")
    cost.add_argument("--rounds", type=int, default=10, help="epochs each way")
    cost.add_argument("--speakers", type=int, default=16,
                      help="training speakers of the synthetic corpus (35 clips each)")
    sub.add_parser("redone")
    one = sub.add_parser("scenario")
    one.add_argument("--data", required=True)
    one.add_argument("--storage", required=True)
    one.add_argument("--no-watch", action="store_true")
    one.add_argument("--reference", action="store_true",
                     help="also train the same run uninterrupted first")
    one.add_argument("--imds", help="notice through the spot watcher from this IMDSv2")
    one.add_argument("--deadline", type=float, default=DEADLINE_S,
                     help="seconds from the notice to the kill")
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.rounds, args.speakers)
    elif args.what == "redone":
        redone()
    else:
        result = scenario(args.data, args.storage, watch=not args.no_watch,
                          reference=args.reference, imds=args.imds,
                          deadline_s=args.deadline)
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
