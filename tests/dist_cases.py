"""Functions that run on every rank of a GlooPool (importable, so spawn can find them)."""

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from losses import similarity_loss, similarity_losses
from losses.distributed import gather_rows


class TwoTower(nn.Module):
    """A small model with shared and separate parameters: (x, y) -> (emb, emb_rec), and
    (x, y_1, ..., y_k) -> (emb, emb_rec_1, ..., emb_rec_k)."""

    def __init__(self, d_in=6, d_emb=5):
        super().__init__()
        self.shared = nn.Linear(d_in, d_emb)
        self.head_rec = nn.Linear(d_emb, d_emb)

    def forward(self, x, *ys):
        recs = [self.head_rec(torch.tanh(self.shared(y))) for y in ys]
        return torch.tanh(self.shared(x)) * 3, *recs


def make_model(seed=0):
    torch.manual_seed(seed)
    return TwoTower().double()


def loss_and_grads(model, x, y, **loss_kwargs):
    model.zero_grad()
    emb, emb_rec = model(x, y)
    loss = similarity_loss(emb, emb_rec, **loss_kwargs)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def ddp_cases(rank, world_size, shards, cases):
    """Each case on a fresh DDP model; returns [(loss, grads)] for this rank."""
    x, y = shards[rank]
    out = []
    for case in cases:
        model = DDP(make_model())
        loss, grads = loss_and_grads(model, x, y, **case)
        out.append((loss, {n.removeprefix("module."): g for n, g in grads.items()}))
    return out


# The training defaults w_lpc and w_shuffled: distinct, so that a gradient that went to
# the wrong term shows.
WEIGHTS = (1.0, 0.5)


def multi_losses_and_grads(model, x, ys, fused, **loss_kwargs):
    """(k,) losses of emb against each of the k reconstructions, and the parameter
    gradients of their WEIGHTS-weighted sum; ``fused``: one similarity_losses call, else
    one similarity_loss call per reconstruction."""
    model.zero_grad()
    emb, *recs = model(x, *ys)
    if fused:
        losses = similarity_losses(emb, recs, **loss_kwargs)
    else:
        losses = torch.stack([similarity_loss(emb, rec, **loss_kwargs) for rec in recs])
    (losses * losses.new_tensor(WEIGHTS[: len(recs)])).sum().backward()
    return losses.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def ddp_multi_cases(rank, world_size, shards, cases):
    """Each case on fresh DDP models, fused and separate; returns [(fused, separate)] for
    this rank, each (losses, grads). shards[rank] is (x, y_1, ..., y_k)."""
    x, *ys = shards[rank]
    out = []
    for case in cases:
        both = []
        for fused in (True, False):
            model = DDP(make_model())
            losses, grads = multi_losses_and_grads(model, x, ys, fused, **case)
            both.append((losses, {n.removeprefix("module."): g for n, g in grads.items()}))
        out.append(tuple(both))
    return out


def collectives_per_call(rank, world_size, case, calls):
    """For each (k, fused) in ``calls``: how many collectives one loss evaluation and its
    backward run on this rank's group, counted by the backend's sequence number (so any
    collective API counts, and the backward's all-reduce too). No DDP: its own
    all-reduce would count."""
    gen = torch.Generator().manual_seed(rank)
    group = torch.distributed.distributed_c10d._get_default_group()
    counts = []
    for k, fused in calls:
        emb = torch.randn(3 + rank, 4, generator=gen, dtype=torch.float64, requires_grad=True)
        recs = [torch.randn(3 + rank, 4, generator=gen, dtype=torch.float64,
                            requires_grad=True) for _ in range(k)]
        before = group._get_sequence_number_for_group()
        if fused:
            losses = similarity_losses(emb, recs, **case)
        else:
            losses = torch.stack([similarity_loss(emb, rec, **case) for rec in recs])
        losses.sum().backward()
        counts.append(group._get_sequence_number_for_group() - before)
    return counts


def gather_grad(rank, world_size, rows):
    """Gather unequal row blocks, take a nonlinear function of all of them, return the
    gathered rows and the gradient that arrives at this rank's own block."""
    x = rows[rank].clone().requires_grad_()
    everything = gather_rows(x, None)
    (everything.square().sum(dim=1) * torch.arange(1, len(everything) + 1)).sum().backward()
    return everything.detach(), x.grad


def outside_group(rank, world_size, case):
    """Ranks 0 and 1 form a subgroup and take the global loss over it; the last rank, not
    a member, calls the loss with that group too. Returns (loss, grad of emb) on members
    and the error message on the outsider."""
    import torch.distributed as dist

    group = dist.new_group([0, 1])  # every rank of the default group must call new_group
    gen = torch.Generator().manual_seed(rank)
    emb = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    rec = emb.detach() + torch.randn(3, 4, generator=gen, dtype=torch.float64)
    try:
        loss = similarity_loss(emb, rec, scope="global", group=group, **case)
    except ValueError as err:
        return str(err)
    loss.backward()
    return loss.detach(), emb.grad, emb.detach(), rec



def final_evaluation_case(rank, world_size, data, ranks):
    """``final_evaluation`` of a tiny untrained FSKIL model as rank ``rank`` of a run on
    ``ranks`` workers (1: alone, the group unused). Returns (metrics, detail, the parts
    this rank computed itself)."""
    import workers.train as wt
    from workers.config import RunConfig
    from workers.data import load_prepared

    cfg = RunConfig(data=data, protocol="fskil", preset="tiny", batch_size=32,
                    clips_per_class=2, workers=ranks, shots=3, episodes=2)
    data = load_prepared(cfg.data)
    words = wt.Words(cfg, data.labels, data.splits["train"].labels)
    normalise = wt.FeatureNorm.fit(words.trained(data.splits["train"]))
    splits = {name: normalise(split, torch.device("cpu")) for name, split in data.splits.items()}
    trained = {name: words.trained(split) for name, split in splits.items()}
    torch.manual_seed(0)
    model = wt.build_model(cfg, data.meta, classes=words.classes)
    state = wt.TrainState(best_model=model.state_dict(), best_epoch=1)
    # one chunk size for both runs: the parts are then computed exactly alike
    ctx = wt.RankContext(rank if ranks > 1 else 0, ranks, torch.device("cpu"), eval_batch=16)
    computed, originals = [], {}
    for name in ("probe_accuracies", "fskil_evaluation"):
        originals[name] = getattr(wt, name)

        def counted(*args, _name=name):
            computed.append(_name)
            return originals[_name](*args)

        setattr(wt, name, counted)
    try:
        metrics, detail = wt.final_evaluation(model, state, splits, trained, words, ctx,
                                              normalise)
    finally:
        for name, original in originals.items():
            setattr(wt, name, original)
    return metrics, detail, computed
