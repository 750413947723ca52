"""The per-rank training loop that every Ray Train worker runs.

Read ``train_loop_per_worker`` top to bottom: it is a list of calls of the small steps
below. Rank 0 writes checkpoints; every rank calls the collectives (the loss's global
statistics, the epoch's metric reduction) in the same order, so none waits forever.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from losses import similarity_losses
from workers import checkpoints, fskil, phases, preemption, storage
from workers.config import RunConfig
from workers.constants import FEATURES
from workers.data import Split, load_prepared
from workers.metrics import (
    FSKIL_DETAIL,
    FSKIL_HEADLINE,
    LOGMEL_HEADLINE,
    PREEMPTION_REPORT,
    SELECTION_METRIC,
    STEP_METRICS,
    session_metric,
)
from workers.model import KeywordModel
from workers.preemption import PreemptionWatch
from workers.probes import linear_probe_accuracy
from workers.sampler import LocalBatch, check_classes, epoch_batches
from workers.sampler import steps_per_epoch as sampler_steps


@dataclass
class RankContext:
    rank: int
    world_size: int
    device: torch.device
    # Clips per evaluation forward. The loop sets the rank's share of a training batch:
    # evaluation then never needs more memory than a step did (at 4 workers a larger
    # chunk grew the workers' heaps past their training peak).
    eval_batch: int = 256

    @classmethod
    def for_run(cls, cfg: RunConfig, rank: int, world_size: int,
                device: torch.device) -> RankContext:
        return cls(rank, world_size, device, eval_batch=max(1, cfg.batch_size // world_size))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()


@dataclass
class TrainState:
    """What a checkpoint holds besides the model and optimizer: plain values only, so
    ``torch.load(weights_only=True)`` reads it."""

    epoch: int = 0  # epochs finished
    history: list[dict] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = -1
    best_model: dict | None = None
    so_far: EpochSoFar | None = None  # epoch ``epoch`` stopped mid-way by a notice


@dataclass
class EpochSoFar:
    """An epoch stopped mid-way by a preemption notice: the steps done, and its running
    step-metric sums (means over the ranks) and time, so that the resumed epoch reports
    what an uninterrupted one would."""

    steps: int
    sums: list[float]
    skipped: int
    seconds: float
    global_step: int  # steps done in the run


@dataclass(frozen=True)
class Batch:
    """One rank's share of a step, on its device: the features (B, frames, n_mels) in
    FEATURES order, the labels (B,), and for each clip the position in this batch of the
    clip whose formant / residual part its shuffled reconstruction borrows (B,)."""

    features: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    formant_partner: torch.Tensor
    residual_partner: torch.Tensor

    def replace(self, **changes) -> Batch:
        return dataclasses.replace(self, **changes)


# --- the loop ------------------------------------------------------------------------


def train_loop_per_worker(config: dict, *, step: StepFn | None = None,
                          watch_preemption: bool = True) -> None:
    """What every Ray Train worker runs. ``step`` replaces ``train_step`` (same signature):
    a caller that wants to see or change every step (a test, a benchmark) wraps it.
    ``watch_preemption=False`` answers no preemption notice (a benchmark's baseline: the
    epoch checkpoints alone)."""
    cfg = RunConfig.from_dict(config)
    _quiet_ray_report_lines()
    ctx = _rank_context(cfg)
    phases.mark("loop start", ctx.rank)
    data = load_prepared(cfg.data)  # the node's mapped copy, shared by its workers
    words = Words(cfg, data.labels, data.splits["train"].labels)
    normalise = FeatureNorm.fit(words.trained(data.splits["train"]))
    splits = {name: normalise(split, ctx.device) for name, split in data.splits.items()}
    trained = {name: words.trained(split) for name, split in splits.items()}
    phases.mark("data ready", ctx.rank)  # the node's copy mapped, the statistics fitted
    model = build_model(cfg, data.meta, classes=words.classes)
    del data  # on an accelerator the features are there now: let the host mapping go
    ddp_model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = restore(model, optimizer)
    phases.mark("set up", ctx.rank)  # the model built, wrapped for DDP, restored
    where = storage.join(cfg.storage_path, cfg.run_name)  # the run folder
    per_epoch = sampler_steps(len(trained["train"].labels), cfg.batch_size)
    watch = PreemptionWatch(ctx.distributed, device=ctx.device, on_notice=(
        (lambda notice: preemption.record_notice(where, notice, steps_per_epoch=per_epoch))
        if ctx.rank == 0 else None))
    if (state.epoch or state.so_far) and ctx.rank == 0:
        preemption.record_resume(where, state.so_far.global_step if state.so_far else
                                 state.epoch * per_epoch)  # the driver says it at the end

    for epoch in range(state.epoch, cfg.epochs):
        _seed_dropout(cfg, epoch, ctx, state.so_far)
        result = train_epoch(ddp_model, optimizer, trained["train"], cfg, epoch, ctx,
                             step=step or train_step, so_far=state.so_far,
                             watch=watch if watch_preemption else None)
        if isinstance(result, EpochSoFar):  # a preemption notice: save this step, stop
            state.so_far = result
            save_on_notice(model, optimizer, state, ctx, watch, where)
        state.so_far = None
        phases.mark("epoch trained", ctx.rank)
        val = evaluate(model, trained["validation"], ctx)
        phases.mark("validated", ctx.rank)
        metrics = {"epoch": epoch + 1, **result, "world_size": ctx.world_size,
                   **_prefixed("val_", val)}
        state = _track_best(state, model, metrics)
        detail = {}
        if epoch + 1 == cfg.epochs:
            final, detail = final_evaluation(model, state, splits, trained, words, ctx,
                                             normalise)
            metrics.update(final)
        state.epoch = epoch + 1
        state.history.append({**metrics, **detail})  # the detail is for the history only
        started = time.perf_counter()
        report(metrics, model, optimizer, state, ctx)
        watch.timed_checkpoint(time.perf_counter() - started)
        phases.mark("reported", ctx.rank)
        if watch_preemption and epoch + 1 < cfg.epochs and watch.ask_now(state.epoch * per_epoch):
            _wait_on_notice(state, ctx, watch, where, per_epoch)  # answered by that report
    phases.mark("loop end", ctx.rank)
    if watch.notices and ctx.rank == 0:  # a notice whose deadline the run outlasted
        preemption.record_finished(where, cfg.epochs * per_epoch)


# --- set-up --------------------------------------------------------------------------


def _quiet_ray_report_lines() -> None:
    """Ray 2.60 logs every ``ray.train.report`` of every rank at INFO under a logger named
    by its source file, outside ``ray.train``, where ``LoggingConfig``'s level does not
    reach: a cluster's terminal (worker logs forwarded) fills with them. Hold those
    loggers to warnings. (Their names are Ray's file paths, not an API: if they change,
    the lines are back and nothing else changes; tests/test_preemption_ray.py looks.)"""
    for name in list(logging.root.manager.loggerDict):
        if name.endswith(".py") and "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def _rank_context(cfg: RunConfig) -> RankContext:
    train_ctx = ray.train.get_context()
    threads = cfg.threads_per_worker or max(1, math.floor(cfg.cpus_per_worker))
    torch.set_num_threads(threads)
    return RankContext.for_run(cfg, train_ctx.get_world_rank(), train_ctx.get_world_size(),
                               ray.train.torch.get_device())


class FeatureNorm:
    """Standardises each feature type per mel bin with the training rows' statistics."""

    def __init__(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.stats = stats

    @classmethod
    def fit(cls, train: Split) -> FeatureNorm:
        """Mean and standard deviation per mel bin over every frame of the split's rows."""
        stats = {}
        for name in FEATURES:
            x = train.features[name]
            if train.rows is None:  # the whole array: no copy of the (mapped) features
                x = x.reshape(-1, x.shape[-1])
                stats[name] = (x.mean(0), x.std(0).clamp_min(1e-5))
            else:
                stats[name] = _subset_stats(x, train.rows)
        return cls(stats)

    def __call__(self, split: Split, device: torch.device) -> Split:
        """The split ready for ``device``. On the CPU the features stay mapped (one copy per
        node) and are standardised as rows are taken; on an accelerator they are copied
        there standardised, chunk by chunk, and the host mapping is not needed again."""
        if device.type == "cpu":
            return dataclasses.replace(split, scale=self.stats)
        rows = split.rows if split.rows is not None else torch.arange(len(split))
        features = {}
        for name, (mean, std) in self.stats.items():
            source = split.features[name]
            out = torch.empty((len(rows), *source.shape[1:]), device=device)
            for i in range(0, len(rows), STAGE_ROWS):
                out[i:i + STAGE_ROWS] = source[rows[i:i + STAGE_ROWS]].to(device)
            features[name] = out.sub_(mean.to(device)).div_(std.to(device))
        return Split(features, split.labels.to(device), split.speakers, split.clips)


STAGE_ROWS = 4096  # clips per host-to-device copy (about 190 MB of one feature type)


def _subset_stats(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and (unbiased) std of x[rows] (N, frames, n_mels) in float64, two passes
    over chunks of rows, so a subset is never copied whole."""
    n_mels, total, count = x.shape[-1], 0.0, 0
    for i in range(0, len(rows), STAGE_ROWS):
        part = x[rows[i:i + STAGE_ROWS]].reshape(-1, n_mels).double()
        total, count = total + part.sum(0), count + len(part)
    mean, squares = total / count, 0.0
    for i in range(0, len(rows), STAGE_ROWS):
        part = x[rows[i:i + STAGE_ROWS]].reshape(-1, n_mels).double()
        squares = squares + (part - mean).square().sum(0)
    std = (squares / max(count - 1, 1)).sqrt()
    return mean.float(), std.float().clamp_min(1e-5)


class Words:
    """Which words a run trains on: every word (standard protocol), or the base words of
    the FSKIL protocol in its class order, relabelled 0..base_classes-1; the novel words
    then never reach training, its shuffled pairs or its feature statistics."""

    def __init__(self, cfg: RunConfig, labels: list[str], train_labels: torch.Tensor):
        self.cfg, self.labels = cfg, labels
        self.order = None
        if cfg.protocol == "fskil":
            self.order = cfg.class_order or fskil.default_class_order(labels)
            fskil.check_shots(train_labels, fskil.class_ids(self.order, labels), cfg.fskil,
                              labels)

    @property
    def classes(self) -> int:
        return self.cfg.base_classes if self.order else len(self.labels)

    def trained(self, split: Split) -> Split:
        if self.order is None:
            return split
        return fskil.base_split(split, fskil.class_ids(self.order, self.labels), self.cfg.fskil)


def check_data(cfg: RunConfig, labels: list[str], train_labels: torch.Tensor) -> None:
    """What the driver checks of a run against its data before anything starts, from the
    training labels alone (``InputError``): under FSKIL the class order and the shots, and
    enough words with enough clips for a batch of the words trained on."""
    words = Words(cfg, labels, train_labels)
    trained = train_labels
    if words.order:
        order = fskil.class_ids(words.order, labels)
        trained = fskil.base_rows(train_labels, order, cfg.fskil)[1]
    check_classes(trained.numpy(), cfg.groups_per_batch, cfg.clips_per_class)


def build_model(cfg: RunConfig, meta: dict, *, classes: int) -> KeywordModel:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and world size
    return KeywordModel(
        classes=classes, temperature=cfg.temperature, n_mels=meta["n_mels"],
        frames=meta["frames"], frames_per_token=cfg.frames_per_token,
        dropout=cfg.dropout, **cfg.sizes,
    )


def _seed_dropout(cfg: RunConfig, epoch: int, ctx: RankContext,
                  so_far: EpochSoFar | None = None) -> None:
    # Derived from (seed, epoch, rank), so a resumed epoch draws what it drew the first time.
    # An epoch resumed mid-way from a preemption checkpoint draws from (seed, epoch, step,
    # rank): its dropout masks differ from the uninterrupted run's (with dropout 0 nothing
    # is drawn and the resumed run is exact).
    seed = cfg.seed * 1_000_003 + epoch * 1009 + ctx.rank
    if so_far is not None:
        seed += 7_919 * (so_far.steps + 1) * 1_000_003
    torch.manual_seed(seed)


# --- one epoch -----------------------------------------------------------------------


def train_epoch(model, optimizer, train: Split, cfg: RunConfig, epoch: int,
                ctx: RankContext, *, step: StepFn | None = None,
                so_far: EpochSoFar | None = None,
                watch: PreemptionWatch | None = None) -> dict[str, float] | EpochSoFar:
    """The epoch's steps from ``so_far`` (a preemption checkpoint's place) on; its step
    means and bookkeeping, or, when ``watch`` says a notice's deadline is near, where it
    stopped (``EpochSoFar``)."""
    step_fn = step or train_step
    model.train()
    batches = epoch_batches(train.labels.cpu().numpy(), classes_per_batch=cfg.groups_per_batch,
                            clips_per_class=cfg.clips_per_class, seed=cfg.seed, epoch=epoch)
    sums = torch.zeros(len(STEP_METRICS), dtype=torch.float64)
    skipped, done_before, seconds_before = 0, 0, 0.0
    if so_far is not None:  # every rank starts from the mean over the ranks so far
        sums += torch.tensor(so_far.sums, dtype=torch.float64)
        skipped, done_before, seconds_before = so_far.skipped, so_far.steps, so_far.seconds
    start = time.perf_counter()
    for index in range(done_before, len(batches)):
        began = time.perf_counter()
        _set_lr(optimizer, cfg, epoch * len(batches) + index, cfg.epochs * len(batches))
        batch = gather_batch(train, batches[index].for_rank(ctx.rank, ctx.world_size), ctx)
        metrics = step_fn(model, optimizer, batch, cfg, ctx, (epoch, index))
        if metrics is None:
            skipped += 1  # every rank skips the same step
        else:
            sums += metrics
        if (watch is not None
                and watch.after_step(time.perf_counter() - began,
                                     epoch * len(batches) + index + 1)
                and index + 1 < len(batches)):
            return EpochSoFar(steps=index + 1, sums=_mean_over_ranks(sums, ctx).tolist(),
                              skipped=skipped,
                              seconds=seconds_before + time.perf_counter() - start,
                              global_step=epoch * len(batches) + index + 1)
    seconds = seconds_before + time.perf_counter() - start
    means = _mean_over_ranks(sums / max(1, len(batches) - skipped), ctx)
    return {
        **dict(zip(STEP_METRICS, means.tolist(), strict=True)),
        "skipped_steps": skipped,
        "epoch_seconds": seconds,
        "samples_per_second": len(batches) * cfg.batch_size / seconds,
        "peak_rss_mb": _peak_rss_mb(ctx),
        "lr": optimizer.param_groups[0]["lr"],
    }


def gather_batch(train: Split, local: LocalBatch, ctx: RankContext) -> Batch:
    """This rank's rows of the step, indexed out of the split on the device."""
    rows = torch.as_tensor(local.indices, device=ctx.device)
    return Batch(
        features=train.take(rows),
        labels=train.labels[rows],
        formant_partner=torch.as_tensor(local.formant_partner, device=ctx.device),
        residual_partner=torch.as_tensor(local.residual_partner, device=ctx.device),
    )


def train_step(model, optimizer, batch: Batch, cfg: RunConfig, ctx: RankContext,
               where: tuple[int, int], *, loss_fn=similarity_losses):
    """One optimisation step on this rank's groups; returns STEP_METRICS as a tensor, or
    None when a loss part or gradient was not finite and the step was skipped.
    ``loss_fn`` has ``losses.similarity_losses``' signature (a benchmark swaps it)."""
    with _autocast(cfg, ctx):
        emb, emb_formant, emb_residual, logits = model(*batch.features)
    ce = F.cross_entropy(logits.float(), batch.labels)
    emb_rec = emb_formant + emb_residual
    # the shuffled reconstruction borrows formant and residual from two other clips of
    # the same group (never the clip itself)
    shuffled = emb_formant[batch.formant_partner] + emb_residual[batch.residual_partner]
    loss_kwargs = {"similarity": cfg.similarity, "norm": cfg.norm, "scope": cfg.scope,
                   "eps": cfg.eps, "detach_stats": cfg.detach_stats}
    # both terms in one call: in global scope they share one set of collectives
    lpc, shuf = loss_fn(emb, [emb_rec, shuffled], **loss_kwargs).unbind()
    total = ce + cfg.w_lpc * lpc + cfg.w_shuffled * shuf
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    bad = nonfinite_parts({"ce": ce, "lpc": lpc, "shuffled": shuf}, model, ctx)
    if bad:
        handle_nonfinite(bad, cfg, where)
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    with torch.no_grad():
        cos_rec = F.cosine_similarity(emb.float(), emb_rec.float(), dim=-1).mean()
        cos_shuf = F.cosine_similarity(emb.float(), shuffled.float(), dim=-1).mean()
    return torch.stack([total, ce, lpc, shuf, cos_rec, cos_shuf]).detach().double().cpu()


StepFn = Callable[..., "torch.Tensor | None"]  # train_step's signature


class NonFiniteLossError(RuntimeError):
    """A loss part or the gradient was NaN or infinite (with on_nonfinite="stop")."""


def nonfinite_parts(parts: dict[str, torch.Tensor], model, ctx: RankContext) -> list[str]:
    """Names of the loss parts (and "gradient") that are not finite on any rank, as
    "part (rank r)". Every rank gets the same answer: one small all-reduce per step."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    values = [*parts.values(), grad_norm]
    flags = torch.zeros(ctx.world_size, len(values), dtype=torch.float64, device=ctx.device)
    flags[ctx.rank] = torch.stack([(~torch.isfinite(v.detach())).double() for v in values])
    if ctx.distributed:
        dist.all_reduce(flags)  # every rank calls it every step, so all agree on skipping
    names = [*parts, "gradient"]
    return [f"{names[k]} (rank {r})" for r, k in flags.nonzero().tolist()]


def handle_nonfinite(bad: list[str], cfg: RunConfig, where: tuple[int, int]) -> None:
    epoch, step = where
    message = f"non-finite {', '.join(bad)} at epoch {epoch + 1} step {step}"
    if cfg.on_nonfinite == "stop":
        raise NonFiniteLossError(message + " (on_nonfinite=stop; use skip to drop such steps)")
    print(f"dotsim: skipping step: {message}", flush=True)


def _set_lr(optimizer, cfg: RunConfig, step: int, total_steps: int) -> None:
    """Linear warm-up over the first epoch, then cosine decay to 5% of the peak."""
    warmup = max(1, total_steps // cfg.epochs)
    if step < warmup:
        scale = (step + 1) / warmup
    else:
        progress = (step - warmup) / max(1, total_steps - warmup)
        scale = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * scale


def _autocast(cfg: RunConfig, ctx: RankContext):
    # bf16 on GPU (no loss scaling needed); float32 on CPU, where bf16 is slower
    return torch.autocast(ctx.device.type, dtype=torch.bfloat16,
                          enabled=cfg.gpu and cfg.bf16 and ctx.device.type == "cuda")


def _mean_over_ranks(values: torch.Tensor, ctx: RankContext) -> torch.Tensor:
    """Mean over ranks; every rank has the same batch size, so this is the global mean."""
    if not ctx.distributed:
        return values
    values = values.to(ctx.device)
    dist.all_reduce(values)  # every rank calls this once per epoch
    return (values / ctx.world_size).cpu()


def _peak_rss_mb(ctx: RankContext) -> float:
    """Largest peak resident set size over the ranks, in MiB."""
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0],
                        dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return float(peak.item())


# --- evaluation ----------------------------------------------------------------------


@torch.no_grad()
def embed(model, split: Split, rows: torch.Tensor, chunk: int):
    """(emb, emb_formant, emb_residual, logits) of the given rows, ``chunk`` at a time, in
    eval mode."""
    model.eval()
    outs = [model(*split.take(rows[i:i + chunk])) for i in range(0, len(rows), chunk)]
    if not outs:  # an empty shard: a rank with no rows still joins the reduction
        dim, classes = model.classifier.weight.shape[1], model.classifier.weight.shape[0]
        empty = torch.zeros(0, dim, device=rows.device)
        return empty, empty, empty, torch.zeros(0, classes, device=rows.device)
    return [torch.cat(parts).float() for parts in zip(*outs, strict=True)]


def evaluate(model, split: Split, ctx: RankContext) -> dict[str, float]:
    """Accuracy and raw cosine(emb, emb_formant + emb_residual) over the whole split.

    Each rank takes rows rank::world (shards may differ by one); no similarity loss is
    computed, so no global-statistics collective runs on the uneven shards. The unwrapped
    model is used: DDP's forward is for training steps only.
    """
    rows = torch.arange(ctx.rank, len(split), ctx.world_size, device=ctx.device)
    emb, emb_formant, emb_residual, logits = embed(model, split, rows, ctx.eval_batch)
    sums = torch.tensor([
        (logits.argmax(-1) == split.labels[rows]).sum().item(),
        F.cosine_similarity(emb, emb_formant + emb_residual, dim=-1).sum().item(),
        len(rows),
    ], dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(sums)  # every rank calls this, whatever its shard size
    correct, cos_sum, count = sums.tolist()
    return {"acc": correct / max(count, 1), "cos_rec": cos_sum / max(count, 1)}


def _track_best(state: TrainState, model, metrics: dict) -> TrainState:
    if metrics[SELECTION_METRIC] > state.best_val_acc:
        state.best_val_acc = metrics[SELECTION_METRIC]
        state.best_epoch = metrics["epoch"]
        state.best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state


def final_evaluation(model, state: TrainState, splits: dict[str, Split],
                     trained: dict[str, Split], words: Words, ctx: RankContext,
                     normalise: FeatureNorm) -> tuple[dict[str, float], dict]:
    """With the best-validation weights: the test accuracy on the trained words, the two
    linear probes on the whole test split, and under FSKIL the protocol's sessions.
    Returns (metrics, detail for the history)."""
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state.best_model)
    test = evaluate(model, trained["test"], ctx)
    phases.mark("test pass", ctx.rank)
    metrics = {"test_acc": test["acc"], "test_cos_rec": test["cos_rec"],
               "best_epoch": state.best_epoch}
    jobs = [lambda: (probe_accuracies(model, splits["test"], ctx.eval_batch), {})]
    if words.order:
        jobs.append(lambda: fskil_evaluation(model, splits, words, normalise, ctx.eval_batch))
    detail = {}
    for part, part_detail in shared_among_ranks(jobs, ctx):
        metrics.update(part)
        detail.update(part_detail)
    model.load_state_dict(current)
    return metrics, detail


def shared_among_ranks(jobs: list[Callable[[], object]], ctx: RankContext) -> list:
    """Every job's result on every rank, job i computed on rank i % world size only: the
    final evaluation's parts are deterministic and need no other rank (every rank holds
    the same weights), so the ranks split them and exchange the results (rank 0 fits the
    probes while rank 1 runs the FSKIL sessions), not each computing all of them."""
    mine = {i: job() for i, job in enumerate(jobs)
            if not ctx.distributed or i % ctx.world_size == ctx.rank}
    phases.mark("own final parts", ctx.rank)
    if ctx.distributed:
        gathered = [None] * ctx.world_size
        # under nccl the objects travel on torch.cuda.current_device(): Ray Train sets each
        # worker's own GPU as current before the loop runs (TorchConfigContextManager)
        dist.all_gather_object(gathered, mine)
        mine = {i: result for part in gathered for i, result in part.items()}
    phases.mark("final parts exchanged", ctx.rank)
    return [mine[i] for i in range(len(jobs))]


def fskil_evaluation(model, splits: dict[str, Split], words: Words, normalise: FeatureNorm,
                     chunk: int) -> tuple[dict, dict]:
    """The FSKIL sessions with the frozen encoder, and the plain log-mel baseline (on the
    features as prepared) under the same order, shots and test. Any rank computes the
    same numbers (deterministic); ``final_evaluation`` runs it on one."""
    cfg = words.cfg
    args = (splits["train"], splits["test"], words.order, words.labels, cfg.fskil)
    result = fskil.run_protocol(lambda split, rows: embed_speech(model, split, rows, chunk), *args,
                                seed=cfg.seed)
    phases.mark("fskil sessions")
    baseline = fskil.logmel_baseline(*args, seed=cfg.seed,
                                     standardised_with=normalise.stats["speech"])
    metrics = {
        **{name: result.headline[name.removeprefix("fskil_")] for name in FSKIL_HEADLINE},
        **{name: baseline.headline[name.removeprefix("logmel_")] for name in LOGMEL_HEADLINE},
        **{session_metric(s, kind): value for s, accuracies in enumerate(result.per_session)
           for kind, value in accuracies.items()},
        **{session_metric(s, kind, "logmel"): value
           for s, accuracies in enumerate(baseline.per_session)
           for kind, value in accuracies.items()},
    }
    detail = {FSKIL_DETAIL: {**dataclasses.asdict(result),
                             "logmel_per_session": baseline.per_session}}
    return metrics, detail


@torch.no_grad()
def embed_speech(model, split: Split, rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """(N, emb_dim) speech embeddings of ``rows``, ``chunk`` at a time, in eval mode (the
    frozen encoder)."""
    model.eval()
    outs = [model.encoder(split.take(rows[i:i + chunk], ("speech",))[0])
            for i in range(0, len(rows), chunk)]
    return torch.cat(outs) if outs else torch.zeros(0, model.classifier.weight.shape[1])


def probe_accuracies(model, split: Split, chunk: int) -> dict[str, float]:
    """Held-out linear probes: the word from emb_formant, the speaker from emb_residual.

    The test split's speakers were never trained on. The word probe is fitted on half of
    the speakers and scored on the others (words of unseen voices); the speaker probe is
    fitted on every other clip of each speaker and scored on the rest. Any rank computes
    the same numbers (deterministic); ``final_evaluation`` runs it on one.
    """
    rows = torch.arange(len(split), device=split.labels.device)
    _, emb_formant, emb_residual, _ = embed(model, split, rows, chunk)
    names = sorted(set(split.speakers))
    speaker_ids = torch.tensor([names.index(s) for s in split.speakers])
    first_half = torch.tensor([names.index(s) < len(names) // 2 for s in split.speakers])
    return {
        "probe_word_from_formant": linear_probe_accuracy(
            emb_formant.cpu(), split.labels.cpu(), fit=first_half),
        "probe_speaker_from_residual": linear_probe_accuracy(
            emb_residual.cpu(), speaker_ids, fit=_every_other_clip(split.speakers)),
    }


def _every_other_clip(speakers: list[str]) -> torch.Tensor:
    """Boolean mask: clips 0, 2, 4, ... of each speaker, in split order."""
    seen: dict[str, int] = {}
    mask = []
    for s in speakers:
        mask.append(seen.get(s, 0) % 2 == 0)
        seen[s] = seen.get(s, 0) + 1
    return torch.tensor(mask)


def _prefixed(prefix: str, values: dict) -> dict:
    return {prefix + k: v for k, v in values.items()}


# --- checkpoints ---------------------------------------------------------------------


def save_on_notice(model, optimizer, state: TrainState, ctx: RankContext,
                   watch: PreemptionWatch, where: str) -> NoReturn:
    """Write the checkpoint of this step (rank 0), tell the driver in one report, and take
    no further step on this group (``PreemptionWatch.wait_for_teardown``)."""
    notice = watch.notice
    started = time.perf_counter()
    report({PREEMPTION_REPORT: {"epoch": state.epoch + 1, "step": state.so_far.steps,
                                "global_step": state.so_far.global_step,
                                "deadline": notice.deadline, "nodes": notice.nodes}},
           model, optimizer, state, ctx)
    if ctx.rank == 0:
        preemption.record_checkpoint(where, step=state.so_far.global_step,
                                     seconds=time.perf_counter() - started)
    watch.wait_for_teardown()


def _wait_on_notice(state: TrainState, ctx: RankContext, watch: PreemptionWatch, where: str,
                    per_epoch: int) -> NoReturn:
    """A notice seen right after an epoch's checkpoint: that checkpoint answers it."""
    if ctx.rank == 0:
        preemption.record_checkpoint(where, step=state.epoch * per_epoch, seconds=None)
    watch.wait_for_teardown()


def report(metrics: dict, model, optimizer, state: TrainState, ctx: RankContext) -> None:
    """Every rank reports the metrics; rank 0 attaches the checkpoint (``workers.checkpoints``:
    weights, optimizer, best weights and the history so far)."""
    if ctx.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": state.epoch,
            "best_val_acc": state.best_val_acc,
            "best_epoch": state.best_epoch,
            "best_model": state.best_model,
            # a preemption checkpoint mid-epoch: where in the epoch, its sums so far
            "so_far": dataclasses.asdict(state.so_far) if state.so_far else None,
        }
        checkpoints.write(tmp, payload, state.history)
        # named by dotsim, so that a folder Ray never registered is recognised and removed
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoints.new_name(state.epoch))


def restore(model, optimizer) -> TrainState:
    """Continue from Ray Train's latest checkpoint (a resumed run or a restarted group), or
    from the newest intact one when it is damaged (rank 0 says which, in its log)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()
    rank0 = ray.train.get_context().get_world_rank() == 0
    saved, history = checkpoints.read_newest_intact(checkpoint, say=print if rank0 else None)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return TrainState(epoch=saved["epoch"], history=history,
                      best_val_acc=saved["best_val_acc"], best_epoch=saved["best_epoch"],
                      best_model=saved["best_model"],
                      so_far=EpochSoFar(**saved["so_far"]) if saved.get("so_far") else None)
