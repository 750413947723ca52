"""Single-GPU training throughput: bf16 autocast against float32.

    .venv/bin/python bench/bench_gpu.py [--data DIR] [--preset base] [--batch-size 512]
                                        [--epochs 4] [--device cuda]

One rank, in this process (no Ray, no DDP: one GPU), the production training step
(``workers.train.train_epoch``) on the same data and model, once with ``bf16=False``
(float32) and once with bf16 autocast (the GPU default). Figures are the median
samples/s over every epoch but the first (warm-up: cuDNN autotuning, the allocator);
the last epoch's training loss shows that both train alike. ``--device cpu`` is a dry
run of the script itself: autocast is GPU-only, so both sides run float32 there.
Copy the output with the machine into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_train import warm_epoch_seconds

import workers.train as wt
from workers.config import RunConfig
from workers.data import load_prepared


def train(cfg: RunConfig, device: torch.device) -> list[dict]:
    ctx = wt.RankContext(0, 1, device)
    torch.manual_seed(cfg.seed)
    data = load_prepared(cfg.data, splits=("train",))
    split = wt.FeatureNorm.fit(data.splits["train"])(data.splits["train"], device)
    model = wt.build_model(cfg, data.meta, classes=len(data.labels)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history = []
    for epoch in range(cfg.epochs):
        history.append(wt.train_epoch(model, optimizer, split, cfg, epoch, ctx))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if device.type == "cuda":
        history[-1]["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="prepared folder (default: synthetic)")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not timed)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run it on a GPU machine (or --device cpu to "
                     "try the script)")

    from orchestrator.prepare import ensure_synthetic

    device = torch.device(args.device)
    data = args.data or str(ensure_synthetic(progress=False))
    cfg = RunConfig(data=data, preset=args.preset, batch_size=args.batch_size,
                    epochs=args.epochs, workers=1, gpu=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"# {name}, torch {torch.__version__}; 1 rank, preset {cfg.preset}, "
          f"batch {cfg.batch_size}, {cfg.epochs} epochs (first not timed)")
    print("\n| precision | samples/s | median epoch s | last train loss | peak GPU MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rate = {}
    for label, bf16 in (("float32", False), ("bf16 autocast", True)):
        history = train(cfg.replace(bf16=bf16), device)
        seconds = statistics.median(warm_epoch_seconds(history))
        last = history[-1]
        rate[label] = last["samples_per_second"] * last["epoch_seconds"] / seconds
        print(f"| {label} | {rate[label]:.0f} | {seconds:.3f} | {last['train_loss']:.4f} | "
              f"{last.get('peak_gpu_mib', float('nan')):.0f} |")
    print(f"\nbf16 / float32 samples/s: {rate['bf16 autocast'] / rate['float32']:.2f}")


if __name__ == "__main__":
    main()
