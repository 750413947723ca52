"""The loss family against naive references, gradcheck, the seed, and odd batches."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_loss, seed_get_dot_sim_loss

from losses import similarity_loss, similarity_losses

SIMILARITIES = ["cosine", "dot", "dot-legacy"]
NORMS = ["minmax", "meanstd"]
VARIANTS = list(itertools.product(SIMILARITIES, NORMS, [False, True]))


def _batch(rows=7, dim=5, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.rand(rows, 1, generator=gen, dtype=dtype) * 3 + 0.1
    emb = torch.randn(rows, dim, generator=gen, dtype=dtype) * scale
    emb_rec = emb + 0.7 * torch.randn(rows, dim, generator=gen, dtype=dtype)
    return emb.requires_grad_(), emb_rec.requires_grad_()


@pytest.mark.parametrize("similarity,norm,detach", VARIANTS)
@pytest.mark.parametrize("scope", ["local", "global"])  # no process group: scopes coincide
def test_matches_reference_value_and_gradient(similarity, norm, detach, scope):
    emb, emb_rec = _batch()
    got = similarity_loss(
        emb, emb_rec, similarity=similarity, norm=norm, scope=scope, detach_stats=detach
    )
    want = reference_loss(emb, emb_rec, similarity, norm, detach_stats=detach)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got_grads = torch.autograd.grad(got, (emb, emb_rec))
    want_grads = torch.autograd.grad(want, (emb, emb_rec))
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# detach_stats deliberately differs from the numerical derivative (the statistics move
# under finite differences), so gradcheck covers the exact variants; the reference test
# above covers the detached ones.
@pytest.mark.parametrize("similarity,norm", list(itertools.product(SIMILARITIES, NORMS)))
def test_gradcheck_float64(similarity, norm):
    emb, emb_rec = _batch(rows=5, dim=4, seed=1)
    assert torch.autograd.gradcheck(
        lambda a, b: similarity_loss(a, b, similarity=similarity, norm=norm), (emb, emb_rec)
    )


def test_statistics_carry_gradient_unless_detached():
    emb, emb_rec = _batch()
    live = torch.autograd.grad(similarity_loss(emb, emb_rec), emb)[0]
    frozen = torch.autograd.grad(similarity_loss(emb, emb_rec, detach_stats=True), emb)[0]
    assert not torch.allclose(live, frozen)


@pytest.mark.parametrize("seed", range(5))
def test_dot_legacy_is_the_seed_function(seed):
    emb, emb_rec = _batch(rows=32, dim=16, seed=seed, dtype=torch.float32)
    got = similarity_loss(emb, emb_rec, similarity="dot-legacy", norm="minmax")
    torch.testing.assert_close(got, seed_get_dot_sim_loss(emb, emb_rec))
    g_got = torch.autograd.grad(got, (emb, emb_rec))
    g_seed = torch.autograd.grad(seed_get_dot_sim_loss(emb, emb_rec), (emb, emb_rec))
    for a, b in zip(g_got, g_seed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dot_scales_both_vectors():
    emb, emb_rec = _batch(rows=16, dim=8, seed=3)
    dot = similarity_loss(emb, emb_rec, similarity="dot")
    legacy = similarity_loss(emb, emb_rec, similarity="dot-legacy")
    cos = similarity_loss(emb, emb_rec, similarity="cosine")
    assert not torch.isclose(dot, legacy)
    # scaling by factors in (0, 1) pulls every similarity towards 0
    emb_d, rec_d = emb.detach(), emb_rec.detach()
    assert (1 - dot).abs() <= (1 - cos).abs() + 1e-12
    assert torch.isclose(similarity_loss(emb_d, rec_d, similarity="cosine"), cos)


def test_known_value_by_hand():
    # norms 1 and 3 on both sides; minmax z = 0 and 1; cos = 1 for both rows
    emb = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    sig0, sig1 = torch.sigmoid(torch.tensor(0.0)), torch.sigmoid(torch.tensor(1.0))
    want = 1 - (sig0 * sig0 + sig1 * sig1) / 2
    torch.testing.assert_close(similarity_loss(emb, emb.clone(), similarity="dot"), want)
    want_legacy = 1 - (sig0 + sig1) / 2
    legacy = similarity_loss(emb, emb.clone(), similarity="dot-legacy")
    torch.testing.assert_close(legacy, want_legacy)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"similarity": "dott"}, "allowed: cosine, dot, dot-legacy"),
        ({"norm": "zscore"}, "allowed: minmax, meanstd"),
        ({"scope": "world"}, "allowed: local, global"),
        ({"eps": 0.0}, "eps must be > 0"),
        ({"similarity": "no_such_module_xyz:fn"}, "cannot load similarity"),
    ],
)
def test_bad_arguments_name_the_allowed_values(kwargs, match):
    emb, emb_rec = _batch()
    with pytest.raises(ValueError, match=match):
        similarity_loss(emb, emb_rec, **kwargs)


@pytest.mark.parametrize(
    "shapes", [((4, 3), (4, 2)), ((4, 3), (5, 3)), ((4,), (4,)), ((2, 4, 3), (2, 4, 3))]
)
def test_mismatched_shapes_are_rejected(shapes):
    with pytest.raises(ValueError, match="same shape"):
        similarity_loss(torch.randn(*shapes[0]), torch.randn(*shapes[1]))


def test_custom_similarity_by_import_path():
    emb, emb_rec = _batch()
    got = similarity_loss(emb, emb_rec, similarity="losses.similarity:dot")
    torch.testing.assert_close(got, similarity_loss(emb, emb_rec, similarity="dot"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_computed_in_float32(dtype):
    emb, emb_rec = _batch(rows=64, dim=32, dtype=torch.float32)
    low = similarity_loss(emb.detach().to(dtype), emb_rec.detach().to(dtype))
    assert low.dtype == torch.float32
    ref = similarity_loss(emb.detach().to(dtype).float(), emb_rec.detach().to(dtype).float())
    assert low.item() == ref.item()


def test_empty_batch_is_zero_and_attached():
    emb = torch.zeros(0, 4, requires_grad=True)
    loss = similarity_loss(emb, torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None and emb.grad.shape == (0, 4)


# --- similarity_losses: several reconstructions against one emb ----------------------


def _recs(rows=7, dim=5, seed=0, k=3):
    """emb and k reconstructions whose norms are spread differently (own statistics)."""
    emb, first = _batch(rows, dim, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    more = [(torch.randn(rows, dim, generator=gen, dtype=torch.float64) * (j + 2) + j)
            .requires_grad_() for j in range(k - 1)]
    return emb, [first, *more]


@pytest.mark.parametrize("similarity,norm,detach", VARIANTS)
@pytest.mark.parametrize("scope", ["local", "global"])  # no process group: scopes coincide
def test_losses_equal_separate_calls_and_reference(similarity, norm, detach, scope):
    emb, recs = _recs()
    kwargs = {"similarity": similarity, "norm": norm, "scope": scope, "detach_stats": detach}
    got = similarity_losses(emb, recs, **kwargs)
    separate = torch.stack([similarity_loss(emb, rec, **kwargs) for rec in recs])
    reference = torch.stack(
        [reference_loss(emb, rec, similarity, norm, detach_stats=detach) for rec in recs]
    )
    assert got.shape == (len(recs),)
    inputs = (emb, *recs)
    for want in (separate, reference):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for j in range(len(recs)):  # each term's gradient on its own
            got_grads = torch.autograd.grad(got[j], inputs, retain_graph=True, allow_unused=True)
            want_grads = torch.autograd.grad(want[j], inputs, retain_graph=True,
                                             allow_unused=True)
            for g, w in zip(got_grads, want_grads, strict=True):
                if w is None:  # a reconstruction that term j does not read
                    assert g is None or not g.any()
                else:
                    torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("similarity,norm", list(itertools.product(SIMILARITIES, NORMS)))
def test_losses_gradcheck_float64(similarity, norm):
    emb, recs = _recs(rows=5, dim=4, seed=1, k=2)
    assert torch.autograd.gradcheck(
        lambda a, b, c: similarity_losses(a, [b, c], similarity=similarity, norm=norm),
        (emb, *recs),
    )


def test_losses_of_one_reconstruction_is_the_loss():
    emb, emb_rec = _batch()
    got = similarity_losses(emb, (emb_rec,))
    assert got.shape == (1,)
    assert got[0].item() == similarity_loss(emb, emb_rec).item()


@pytest.mark.parametrize(
    "recs,match",
    [
        ([], "at least one reconstruction"),
        ([torch.randn(7, 5), torch.randn(6, 5)], r"emb_recs\[1\] must both be .* same shape"),
        ([torch.randn(7, 5), torch.ones(7, 5, dtype=torch.long)], r"emb_recs\[1\] must be floa"),
        (torch.randn(7, 5), "not one tensor"),
    ],
)
def test_losses_bad_reconstructions_are_rejected(recs, match):
    with pytest.raises(ValueError, match=match):
        similarity_losses(torch.randn(7, 5), recs)


def test_losses_low_precision_and_empty_batch():
    emb, recs = _recs(rows=16, dim=8, k=2)
    low = similarity_losses(emb.detach().bfloat16(), [r.detach().bfloat16() for r in recs])
    assert low.dtype == torch.float32 and low.shape == (2,)
    emb = torch.zeros(0, 4, requires_grad=True)
    losses = similarity_losses(emb, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert losses.tolist() == [0.0, 0.0]
    losses.sum().backward()
    assert emb.grad is not None and emb.grad.shape == (0, 4)


# --- properties: odd batches give finite values and gradients, the loss stays in [0, 2] ----

ROUND = 1e-5


def _check_finite_and_bounded(emb, emb_rec, dtype):
    emb = emb.to(dtype).requires_grad_()
    emb_rec = emb_rec.to(dtype).requires_grad_()
    for similarity, norm, detach in VARIANTS:
        loss = similarity_loss(
            emb, emb_rec, similarity=similarity, norm=norm, detach_stats=detach
        )
        assert torch.isfinite(loss), (similarity, norm, detach)
        assert -ROUND <= loss.item() <= 2 + ROUND, (similarity, norm, loss.item())
        grads = torch.autograd.grad(loss, (emb, emb_rec))
        assert all(torch.isfinite(g).all() for g in grads), (similarity, norm, detach)


@st.composite
def odd_batches(draw):
    rows = draw(st.integers(1, 9))
    dim = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["random", "equal_norms", "zeros", "some_zero", "wide"]))
    directions = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rec_dirs = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    rec_dirs = rec_dirs / rec_dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # norms spread over 1e-15 .. 1e15, per row, independently for emb and emb_rec
    exps = st.floats(-15, 15, allow_nan=False)
    n = torch.tensor([10 ** draw(exps) for _ in range(rows)], dtype=torch.float64)
    m = torch.tensor([10 ** draw(exps) for _ in range(rows)], dtype=torch.float64)
    if kind == "equal_norms":
        n[:] = n[0]
        m[:] = m[0]
    elif kind == "zeros":
        n[:] = 0
        m[:] = 0
    elif kind == "some_zero":
        n[0] = 0
        m[-1] = 0
    elif kind == "random":
        n = torch.rand(rows, generator=gen, dtype=torch.float64) * 5
        m = torch.rand(rows, generator=gen, dtype=torch.float64) * 5
    if draw(st.booleans()):
        rec_dirs = directions.clone()  # perfect reconstruction: cos = 1 up to rounding
    return directions * n[:, None], rec_dirs * m[:, None]


@settings(max_examples=300, deadline=None)
@given(odd_batches(), st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_odd_batches_are_finite_and_bounded(batch, dtype):
    emb, emb_rec = batch
    if dtype == torch.bfloat16:
        # bf16 shares float32's exponent range: the same 1e-15..1e15 norms are representable
        emb, emb_rec = emb.float(), emb_rec.float()
    _check_finite_and_bounded(emb, emb_rec, dtype)


def test_batch_of_one_every_variant():
    emb, emb_rec = _batch(rows=1, dim=4)
    for similarity, norm, detach in VARIANTS:
        loss = similarity_loss(emb, emb_rec, similarity=similarity, norm=norm, detach_stats=detach)
        ref = reference_loss(emb, emb_rec, similarity, norm, detach_stats=detach)
        torch.testing.assert_close(loss, ref)
