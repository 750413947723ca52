"""The world-size-independent sampler: whole groups, no self-pairs, same global batch."""

import numpy as np
import pytest

from workers.sampler import derangements, epoch_batches, steps_per_epoch


def _labels(classes=10, per_class=9, seed=0):
    labels = np.repeat(np.arange(classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def _batches(labels, seed=0, epoch=0, p=4, k=3):
    return epoch_batches(labels, classes_per_batch=p, clips_per_class=k, seed=seed, epoch=epoch)


def test_groups_hold_distinct_clips_of_one_class_and_distinct_classes():
    labels = _labels()
    batches = _batches(labels)
    assert len(batches) == steps_per_epoch(len(labels), 12)
    for batch in batches:
        assert batch.indices.shape == (4, 3)
        group_classes = labels[batch.indices]
        assert (group_classes == group_classes[:, :1]).all()
        assert len(set(group_classes[:, 0])) == 4
        for row in batch.indices:
            assert len(set(row)) == 3


def test_partners_are_derangements_inside_each_group():
    for batch in _batches(_labels(), seed=3):
        for partner in (batch.formant_partner, batch.residual_partner):
            assert (np.sort(partner, axis=1) == np.arange(3)).all()  # a permutation
            assert (partner != np.arange(3)).all()  # never itself


def test_two_derangements_are_independent():
    batches = _batches(_labels(classes=20, per_class=20), p=8, k=4)
    assert any((b.formant_partner != b.residual_partner).any() for b in batches)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_global_batch_is_the_same_at_every_world_size(world_size):
    """Concatenating the ranks' local batches gives the world-size-1 batch, with the same
    pairs (partners point at the same dataset rows)."""
    for batch in _batches(_labels(), p=4, k=3):
        whole = batch.for_rank(0, 1)
        parts = [batch.for_rank(r, world_size) for r in range(world_size)]
        rows = np.concatenate([p.indices for p in parts])
        assert (rows == whole.indices).all()
        for attr in ("formant_partner", "residual_partner"):
            partner_rows = np.concatenate([p.indices[getattr(p, attr)] for p in parts])
            assert (partner_rows == whole.indices[getattr(whole, attr)]).all()


def test_deterministic_for_seed_and_epoch_only():
    labels = _labels()
    a, b = _batches(labels, seed=1, epoch=2), _batches(labels, seed=1, epoch=2)
    assert all((x.indices == y.indices).all() for x, y in zip(a, b, strict=True))
    c = _batches(labels, seed=1, epoch=3)
    assert any((x.indices != y.indices).any() for x, y in zip(a, c, strict=True))


def test_an_epoch_covers_most_clips():
    labels = _labels(classes=10, per_class=12)
    seen = np.concatenate([b.indices.ravel() for b in _batches(labels, p=5, k=4)])
    assert len(np.unique(seen)) >= 0.8 * len(labels)


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 11 words"):
        _batches(_labels(classes=10), p=11, k=3)


def test_derangement_has_no_fixed_points_for_k_2():
    partner = derangements(50, 2, np.random.default_rng(0))
    assert (partner == np.array([1, 0])).all()
