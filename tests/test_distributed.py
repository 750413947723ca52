"""Multi-process parity on CPU/gloo: every rank's loss and every DDP-averaged parameter
gradient equal the single-process result on the concatenated batch (global scope) or
the per-shard result (local scope), for every variant, with unequal and empty shards."""

import itertools

import pytest
import torch
from dist_cases import (
    collectives_per_call,
    ddp_multi_cases,
    final_evaluation_case,
    gather_grad,
    loss_and_grads,
    make_model,
    multi_losses_and_grads,
    outside_group,
)

from losses.distributed import gather_rows

pytestmark = pytest.mark.distributed

CASES = [
    {"similarity": s, "norm": n, "scope": sc, "detach_stats": d}
    for s, n, sc, d in itertools.product(
        ["cosine", "dot", "dot-legacy"], ["minmax", "meanstd"], ["global", "local"],
        [False, True]
    )
]
LAYOUTS = {  # rows per rank
    "equal-2": [4, 4],
    "unequal-2": [3, 6],
    "unequal-3": [2, 5, 3],
    "empty-rank-3": [4, 0, 3],
}


def _shards(sizes, seed=0, recs=1):
    """(x, y_1, ..., y_recs) per rank; each further y has its own spread of norms."""
    gen = torch.Generator().manual_seed(seed)
    shards = []
    for n in sizes:
        x = torch.randn(n, 6, generator=gen, dtype=torch.float64) * 2
        y = x + 0.5 * torch.randn(n, 6, generator=gen, dtype=torch.float64)
        more = [torch.randn(n, 6, generator=gen, dtype=torch.float64) * (j + 2)
                for j in range(recs - 1)]
        shards.append((x, y, *more))
    return shards


def _separate_calls(model, x, *ys, **case):
    return multi_losses_and_grads(model, x, ys, fused=False, **case)


def _expected(shards, case, run=loss_and_grads):
    """(loss per rank, DDP-averaged grads) computed in one process; ``run(model, x, *ys,
    **case)`` gives (loss, grads) on one batch."""
    model = make_model()
    if case["scope"] == "global":
        whole = [torch.cat(parts) for parts in zip(*shards, strict=True)]
        loss, grads = run(model, *whole, **case)
        return [loss] * len(shards), grads
    per_rank = [run(model, *shard, **case) for shard in shards]
    names = per_rank[0][1]
    avg = {n: sum(g[n] for _, g in per_rank) / len(shards) for n in names}
    return [loss for loss, _ in per_rank], avg


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ddp_parity_every_variant(gloo_pool, layout):
    sizes = LAYOUTS[layout]
    shards = _shards(sizes)
    from dist_cases import ddp_cases

    by_rank = gloo_pool(len(sizes)).run(ddp_cases, shards, CASES)
    for k, case in enumerate(CASES):
        want_losses, want_grads = _expected(shards, case)
        for rank in range(len(sizes)):
            loss, grads = by_rank[rank][k]
            torch.testing.assert_close(loss, want_losses[rank], rtol=1e-6, atol=1e-9,
                                       msg=f"loss {case} rank {rank}")
            for name, want in want_grads.items():
                torch.testing.assert_close(grads[name], want, rtol=1e-6, atol=1e-9,
                                           msg=f"grad {name} {case} rank {rank}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_losses_equal_separate_calls(gloo_pool, layout):
    """similarity_losses(emb, [rec_1, rec_2]) equals two similarity_loss calls on the
    same ranks, and the single-process result, in every loss and DDP-averaged gradient."""
    sizes = LAYOUTS[layout]
    shards = _shards(sizes, recs=2)
    by_rank = gloo_pool(len(sizes)).run(ddp_multi_cases, shards, CASES)
    for k, case in enumerate(CASES):
        want_losses, want_grads = _expected(shards, case, run=_separate_calls)
        for rank in range(len(sizes)):
            (losses, grads), (sep_losses, sep_grads) = by_rank[rank][k]
            assert losses.shape == (2,)
            for want, what in ((sep_losses, "separate calls"), (want_losses[rank], "one process")):
                torch.testing.assert_close(losses, want, rtol=1e-6, atol=1e-9,
                                           msg=f"losses vs {what} {case} rank {rank}")
            for name, want in want_grads.items():
                for other, what in ((sep_grads[name], "separate calls"), (want, "one process")):
                    torch.testing.assert_close(grads[name], other, rtol=1e-6, atol=1e-9,
                                               msg=f"grad {name} vs {what} {case} rank {rank}")


@pytest.mark.parametrize(
    "case,per_call",
    # forward: row counts, padded norms, [sim sums, count]; backward: a gradient all-reduce
    [
        ({"similarity": "dot", "norm": "minmax"}, 4),
        ({"similarity": "dot-legacy", "norm": "meanstd", "detach_stats": True}, 3),
        ({"similarity": "cosine", "norm": "minmax"}, 1),  # no statistics to gather
    ],
)
def test_fused_losses_use_the_collectives_of_one_call(gloo_pool, case, per_call):
    calls = [(1, True), (2, True), (3, True), (2, False)]  # (reconstructions, fused)
    by_rank = gloo_pool(2).run(collectives_per_call, {**case, "scope": "global"}, calls)
    for rank, (one, two, three, separate) in enumerate(by_rank):
        assert (one, two, three) == (per_call,) * 3, f"rank {rank}"
        assert separate == 2 * per_call, f"rank {rank}"  # the counter sees every call


def test_global_differs_from_local_on_unequal_shards(gloo_pool):
    """A guard against a test that cannot fail: the two scopes really give other numbers."""
    shards = _shards(LAYOUTS["unequal-2"])
    cases = [{"similarity": "dot", "norm": "meanstd", "scope": s} for s in ("global", "local")]
    from dist_cases import ddp_cases

    glob, loc = gloo_pool(2).run(ddp_cases, shards, cases)[0]
    assert not torch.isclose(glob[0], loc[0])


@pytest.mark.parametrize("sizes", [[2, 3], [0, 4], [3, 0, 1]])
def test_gather_rows_sums_gradients_back_to_owners(gloo_pool, sizes):
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randn(n, 2, generator=gen, dtype=torch.float64) for n in sizes]
    results = gloo_pool(len(sizes)).run(gather_grad, rows)
    whole = torch.cat(rows).requires_grad_()
    weights = torch.arange(1, len(whole) + 1)
    (whole.square().sum(dim=1) * weights).sum().backward()
    # every rank computed the same function of all rows: its gradient reaches each owner
    # once per rank, summed
    want = whole.grad * len(sizes)
    offset = 0
    for rank, (gathered, grad) in enumerate(results):
        torch.testing.assert_close(gathered, whole.detach())
        torch.testing.assert_close(grad, want[offset: offset + sizes[rank]])
        offset += sizes[rank]


def test_gather_rows_without_process_group_is_identity():
    x = torch.randn(3, 2)
    assert gather_rows(x, None) is x


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_a_rank_outside_the_group_is_refused(gloo_pool, similarity):
    """torch gives a non-member world size -1: the loss must refuse it (computing with it
    would flip the gradient's sign) while the members compute as usual."""
    from losses import similarity_loss

    case = {"similarity": similarity, "norm": "minmax"}
    member0, member1, outsider = gloo_pool(3).run(outside_group, case)
    assert isinstance(outsider, str) and "not a member" in outsider
    # the members: the single-process loss of their two batches, and its gradient
    emb = torch.cat([member0[2], member1[2]]).requires_grad_()
    loss = similarity_loss(emb, torch.cat([member0[3], member1[3]]), **case)
    loss.backward()
    for got in (member0, member1):
        torch.testing.assert_close(got[0], loss.detach())
    # each rank holds its own rows' gradient of its term; DDP's average over the 2 ranks
    # would halve it, so twice the local gradient is the single-process one
    torch.testing.assert_close(torch.cat([member0[1], member1[1]]) / 2, emb.grad)


def test_the_final_evaluation_is_split_among_the_ranks_and_equals_one_rank_alone(
        gloo_pool, small_prepared):
    """At the end of a run rank 0 fits the probes while rank 1 runs the FSKIL sessions,
    and every rank ends with every number: the numbers one rank computes alone, in the
    same order (each part is deterministic and needs no other rank)."""
    alone, alone_detail, alone_parts = final_evaluation_case(0, 1, str(small_prepared), 1)
    by_rank = gloo_pool(2).run(final_evaluation_case, str(small_prepared), 2)
    assert alone_parts == ["probe_accuracies", "fskil_evaluation"]
    assert [parts for *_, parts in by_rank] == [["probe_accuracies"], ["fskil_evaluation"]]
    assert "probe_word_from_formant" in alone and "fskil_mean_acc" in alone
    for metrics, detail, _ in by_rank:
        assert list(metrics) == list(alone) and detail == alone_detail
        # the test pass is sharded over the ranks: its sums add up in another order
        assert metrics.pop("test_cos_rec") == pytest.approx(alone["test_cos_rec"])
        assert metrics == {k: v for k, v in alone.items() if k != "test_cos_rec"}
