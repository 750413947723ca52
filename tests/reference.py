"""Naive references for the loss, written straight from docs/design.md's formulas ("The loss").

Deliberately loop-based and independent of ``losses``: per-sample Python arithmetic on
tensors (so autograd still gives the reference gradient), no shared helpers.
"""

import torch
import torch.nn.functional as F


def _norm(v):
    return torch.sqrt(sum(x * x for x in v))


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    scale = torch.clamp(_norm(a), min=1e-8) * torch.clamp(_norm(b), min=1e-8)
    return torch.clamp(dot / scale, -1, 1)


def _z(values, ref, norm, eps):
    """z(v) for each v in values, with the statistics of the list ``ref``."""
    if norm == "minmax":
        lo, hi = min(ref), max(ref)
        rng = hi - lo if hi - lo > eps else torch.tensor(eps, dtype=lo.dtype)
        return [(v - lo) / rng for v in values]
    mean = sum(ref) / len(ref)
    var = sum((v - mean) ** 2 for v in ref) / len(ref)
    return [(v - mean) / torch.sqrt(var + eps) for v in values]


def reference_loss(emb, emb_rec, similarity, norm, eps=1e-6, detach_stats=False):
    """1 - mean_i sim_i over the rows of (emb, emb_rec); 0 for an empty batch."""
    rows = len(emb)
    if rows == 0:
        return emb.sum() * 0
    n = [_norm(emb[i]) for i in range(rows)]
    m = [_norm(emb_rec[i]) for i in range(rows)]

    def scales(vals):
        ref = [v.detach() for v in vals] if detach_stats else vals
        return [1 / (1 + torch.exp(-z)) for z in _z(vals, ref, norm, eps)]

    s, t = scales(n), scales(m)
    total = 0
    for i in range(rows):
        c = _cos(emb[i], emb_rec[i])
        if similarity == "cosine":
            total = total + c
        elif similarity == "dot":
            total = total + s[i] * t[i] * c
        elif similarity == "dot-legacy":
            total = total + s[i] * c
        else:
            raise AssertionError(similarity)
    return 1 - total / rows


def seed_get_dot_sim_loss(emb, emb_rec):
    """The seed's ``get_dot_sim_loss`` as published (helper.py), verbatim in its math."""
    norm_emb = torch.norm(emb, p=2, dim=1)
    emb_scale = F.sigmoid(
        (norm_emb - torch.min(norm_emb)) / (torch.max(norm_emb) - torch.min(norm_emb))
    )
    cos_sim_lpc = torch.sum(emb * emb_rec, dim=1) / (
        torch.norm(emb, dim=1) * torch.norm(emb_rec, dim=1)
    )
    return 1 - torch.mean(emb_scale * cos_sim_lpc)

