"""The dot-similarity loss family: pure tensor math (docs/design.md, "The loss").

For sample i with n_i = ||emb_i|| and m_i = ||emb_rec_i||, the scales are
s_i = sigmoid(z(n_i)) and t_i = sigmoid(z(m_i)), where z normalises a norm by the batch
statistics of a set S of samples (min-max or mean/std). The per-sample similarity is

    cosine:      cos_i
    dot:         s_i * t_i * cos_i      (both vectors scaled, the seed's fix)
    dot-legacy:  s_i * cos_i            (the seed's published get_dot_sim_loss)

and the loss is 1 - mean over S of sim_i. With ``scope="global"``, S is the union of all
ranks' batches; the only communication is in ``losses.distributed``: per call, one
gather of the per-sample norms (row counts, then the padded norms; an all-reduce of
their gradient in backward) and one all-reduce of [sim sums, count].
``similarity_losses`` computes several reconstructions' losses against one emb with that
one set of collectives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, reduce

import torch

from losses import distributed, names

# F.cosine_similarity's default: a norm below this counts as this.
COSINE_EPS = 1e-8


@dataclass(frozen=True)
class Pair:
    """One batch of (emb, emb_rec) with what every similarity needs, computed once.

    Shapes: emb and emb_rec (B, D) in the compute dtype; norms and scales (B,).
    A custom similarity is any function ``Pair -> (B,) tensor``.
    """

    emb: torch.Tensor
    emb_rec: torch.Tensor
    norm_emb: torch.Tensor
    norm_rec: torch.Tensor
    scale_emb: torch.Tensor  # s_i = sigmoid(z(n_i)), in (0, 1)
    scale_rec: torch.Tensor  # t_i = sigmoid(z(m_i))

    @cached_property
    def cos(self) -> torch.Tensor:
        """Row-wise cosine with F.cosine_similarity's value, x.y / (max(|x|, eps) max(|y|, eps)),
        clamped to [-1, 1]; reuses the norms (F.cosine_similarity would recompute them)."""
        dot = (self.emb * self.emb_rec).sum(dim=-1)
        scale = self.norm_emb.clamp_min(COSINE_EPS) * self.norm_rec.clamp_min(COSINE_EPS)
        return (dot / scale).clamp(-1.0, 1.0)


SimilarityFn = Callable[[Pair], torch.Tensor]


def cosine(pair: Pair) -> torch.Tensor:
    """Plain cosine similarity; no batch statistics."""
    return pair.cos


def dot(pair: Pair) -> torch.Tensor:
    """(s_i * emb_i / n_i) . (t_i * emb_rec_i / m_i) = s_i * t_i * cos_i."""
    return pair.scale_emb * pair.scale_rec * pair.cos


def dot_legacy(pair: Pair) -> torch.Tensor:
    """s_i * cos_i: only emb is scaled, as in the seed's published function."""
    return pair.scale_emb * pair.cos


SIMILARITIES: dict[str, SimilarityFn] = {"cosine": cosine, "dot": dot, "dot-legacy": dot_legacy}
assert tuple(SIMILARITIES) == names.SIMILARITIES
# Similarities that never read the scales skip the statistics (and their communication).
_SCALE_FREE = {cosine}


def minmax(values: torch.Tensor, ref: torch.Tensor, eps: float) -> torch.Tensor:
    """(v - min ref) / max(max ref - min ref, eps)."""
    low = ref.min()
    return (values - low) / (ref.max() - low).clamp_min(eps)


def meanstd(values: torch.Tensor, ref: torch.Tensor, eps: float) -> torch.Tensor:
    """(v - mean ref) / sqrt(var ref + eps), population variance (two-pass: no cancellation)."""
    mean = ref.mean()
    var = (ref - mean).square().mean()
    return (values - mean) / (var + eps).sqrt()


NORMS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "minmax": minmax,
    "meanstd": meanstd,
}
assert tuple(NORMS) == names.NORMS


def resolve_similarity(name: str) -> SimilarityFn:
    """A built-in similarity by name, or a custom one given as ``package.module:function``."""
    return SIMILARITIES[name] if name in SIMILARITIES else names.load_custom(name)


def validate(similarity: str, norm: str, scope: str) -> SimilarityFn:
    """Check the variant names; return the similarity function."""
    names.validate(similarity, norm, scope)
    return resolve_similarity(similarity)


def _check_inputs(emb: torch.Tensor, emb_recs: list[torch.Tensor], eps: float) -> None:
    if not emb_recs:
        raise ValueError("emb_recs must hold at least one reconstruction; got none")
    for j, emb_rec in enumerate(emb_recs):
        name = "emb_rec" if len(emb_recs) == 1 else f"emb_recs[{j}]"
        if emb.dim() != 2 or emb.shape != emb_rec.shape:
            raise ValueError(
                f"emb and {name} must both be (batch, dim) with the same shape; "
                f"got {tuple(emb.shape)} and {tuple(emb_rec.shape)}"
            )
        if not (emb.is_floating_point() and emb_rec.is_floating_point()):
            raise ValueError(
                f"emb and {name} must be floating point; got {emb.dtype}, {emb_rec.dtype}"
            )
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}")


def similarity_loss(
    emb: torch.Tensor,
    emb_rec: torch.Tensor,
    *,
    similarity: str = "dot",
    norm: str = "minmax",
    scope: str = "local",
    eps: float = 1e-6,
    detach_stats: bool = False,
    group=None,
) -> torch.Tensor:
    """1 - mean similarity of ``emb`` and ``emb_rec`` (both (B, D)); a scalar.

    ``scope="global"`` takes the batch statistics and the mean over the union of the
    ranks of ``group`` (the default group when None; with no process group both scopes
    are the same). Every rank then returns the loss of the concatenated batch, and its
    gradient is scaled so that DDP's gradient average equals the single-process gradient.
    All ranks must call it, including those with an empty batch. bf16/fp16 inputs are
    computed in float32; the result has the compute dtype.
    """
    return similarity_losses(
        emb, [emb_rec], similarity=similarity, norm=norm, scope=scope, eps=eps,
        detach_stats=detach_stats, group=group,
    )[0]


def similarity_losses(
    emb: torch.Tensor,
    emb_recs: Sequence[torch.Tensor],
    *,
    similarity: str = "dot",
    norm: str = "minmax",
    scope: str = "local",
    eps: float = 1e-6,
    detach_stats: bool = False,
    group=None,
) -> torch.Tensor:
    """``similarity_loss(emb, emb_recs[j], ...)`` for every j, as a (k,) tensor, in value
    and gradient; with ``scope="global"`` all k terms share one set of collectives.

    Each column keeps its own statistics: emb's norms are normalised by emb's, each
    reconstruction's by its own, exactly as in separate calls; emb's norms are computed
    once. Every reconstruction must have emb's shape (B, D). The inputs are computed in
    their common promoted dtype (at least float32), which the result has.
    """
    sim_fn = validate(similarity, norm, scope)
    if isinstance(emb_recs, torch.Tensor):
        raise ValueError("emb_recs must be a sequence of (batch, dim) tensors, not one tensor")
    emb_recs = list(emb_recs)
    _check_inputs(emb, emb_recs, eps)
    dtype = reduce(torch.promote_types, [r.dtype for r in emb_recs],
                   torch.promote_types(emb.dtype, torch.float32))
    emb, emb_recs = emb.to(dtype), [r.to(dtype) for r in emb_recs]
    ws = distributed.world_size(group) if scope == "global" else 1
    # The set S of the statistics: this batch, or the union of all ranks' batches.
    gather = (lambda x: distributed.gather_rows(x, group)) if ws > 1 else (lambda x: x)

    # (B, 1 + k): column 0 is emb's norms, column 1 + j emb_recs[j]'s
    norms = torch.stack([emb.norm(dim=-1), *(r.norm(dim=-1) for r in emb_recs)], dim=-1)
    scales = norms.new_ones(norms.shape)
    if sim_fn not in _SCALE_FREE:
        scales = _scales(norms, NORMS[norm], eps, detach_stats, gather)
    sim_sums = torch.stack([  # (k,)
        sim_fn(Pair(emb, r, norms[:, 0], norms[:, j], scales[:, 0], scales[:, j])).sum()
        for j, r in enumerate(emb_recs, start=1)
    ])

    if ws == 1:
        count = emb.shape[0]
        # An empty batch gives 0, still attached to the graph so DDP sees every parameter.
        return 1 - sim_sums / count if count else sim_sums * 0
    # This rank's term l_r = 1 - (W/N) sum_{i in r} sim_i; the ranks' mean of l_r is the
    # loss of the concatenated batch, L. Return L's value with l_r's gradient: after DDP
    # averages, every parameter sees dL/dparam. One all-reduce: [sim sum per term, count].
    summed = distributed.all_reduce_sum(
        torch.cat([sim_sums.detach(), sim_sums.new_tensor([emb.shape[0]])]), group
    )
    totals, count = summed[:-1], summed[-1]
    if count == 0:
        return sim_sums * 0
    own = 1 - ws * sim_sums / count
    return (1 - totals / count) + (own - own.detach())


def _scales(norms, norm_fn, eps, detach_stats, gather):
    """(B, C) sigmoid of the batch-normalised norms (emb's, then each reconstruction's),
    each column normalised by its own statistics over the set S that ``gather`` returns."""
    ref = gather(norms.detach() if detach_stats else norms)  # (N, C): the whole set S
    if ref.shape[0] == 0:
        return norms  # every rank is empty: nothing to normalise
    columns = range(norms.shape[1])
    return torch.sigmoid(torch.stack([norm_fn(norms[:, c], ref[:, c], eps) for c in columns], -1))
