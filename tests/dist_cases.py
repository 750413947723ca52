"""Functions that run on every rank of a GlooPool (importable, so spawn can find them)."""

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from losses import similarity_loss
from losses.distributed import gather_rows


class TwoTower(nn.Module):
    """A small model with shared and separate parameters: (x, y) -> (emb, emb_rec)."""

    def __init__(self, d_in=6, d_emb=5):
        super().__init__()
        self.shared = nn.Linear(d_in, d_emb)
        self.head_rec = nn.Linear(d_emb, d_emb)

    def forward(self, x, y):
        return torch.tanh(self.shared(x)) * 3, self.head_rec(torch.tanh(self.shared(y)))


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


def gather_grad(rank, world_size, rows):
    """Gather unequal row blocks, take a nonlinear function of all of them, return the
    gathered rows and the gradient that arrives at this rank's own block."""
    x = rows[rank].clone().requires_grad_()
    everything = gather_rows(x, None)
    (everything.square().sum(dim=1) * torch.arange(1, len(everything) + 1)).sum().backward()
    return everything.detach(), x.grad
