"""Global batches that do not depend on the world size (docs/design.md, same heading).

Each global batch is drawn from (seed, epoch) alone: P classes x K clips, as P groups of
K clips of one class. Ranks get whole groups, and the shuffled reconstruction pairs each
clip with another clip of its own group (two independent derangements: one for the
formant part, one for the residual part). So the pairs, and the global batch statistics,
are the same at any world size that divides P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.errors import InputError


@dataclass(frozen=True)
class GlobalBatch:
    """One step's global batch. All arrays are (P, K)."""

    indices: np.ndarray  # dataset rows, group g holds clips of one class
    formant_partner: np.ndarray  # position in the group whose formant part to borrow
    residual_partner: np.ndarray  # position in the group whose residual part to borrow

    def for_rank(self, rank: int, world_size: int) -> LocalBatch:
        """This rank's whole groups, flattened to (B,) rows and (B,) partner rows."""
        groups = self.indices.shape[0]
        assert groups % world_size == 0, "the config checks that groups split evenly"
        per_rank = groups // world_size
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        k = self.indices.shape[1]
        base = np.arange(per_rank)[:, None] * k  # first flat position of each local group
        return LocalBatch(
            indices=self.indices[sl].reshape(-1),
            formant_partner=(base + self.formant_partner[sl]).reshape(-1),
            residual_partner=(base + self.residual_partner[sl]).reshape(-1),
        )


@dataclass(frozen=True)
class LocalBatch:
    indices: np.ndarray  # (B,) dataset rows
    formant_partner: np.ndarray  # (B,) positions in this local batch
    residual_partner: np.ndarray


def steps_per_epoch(num_clips: int, batch_size: int) -> int:
    return max(1, num_clips // batch_size)


def epoch_batches(
    labels: np.ndarray, *, classes_per_batch: int, clips_per_class: int, seed: int, epoch: int
) -> list[GlobalBatch]:
    """The epoch's global batches, drawn from (seed, epoch) only.

    Every step picks ``classes_per_batch`` distinct classes at random and takes the next
    ``clips_per_class`` clips of each from that class's shuffled queue (reshuffled when it
    runs out), so every clip is seen about once per epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    eligible = check_classes(labels, classes_per_batch, clips_per_class)
    queues = {c: _Queue(np.flatnonzero(labels == c), rng) for c in eligible}
    batches = []
    for _ in range(steps_per_epoch(len(labels), classes_per_batch * clips_per_class)):
        chosen = rng.choice(eligible, size=classes_per_batch, replace=False)
        indices = np.stack([queues[c].take(clips_per_class) for c in chosen])
        batches.append(
            GlobalBatch(
                indices=indices,
                formant_partner=derangements(classes_per_batch, clips_per_class, rng),
                residual_partner=derangements(classes_per_batch, clips_per_class, rng),
            )
        )
    return batches


def check_classes(labels: np.ndarray, classes_per_batch: int, clips_per_class: int) -> list:
    """The classes a batch can draw from (those with >= clips_per_class clips);
    ``InputError`` when they are fewer than a batch needs."""
    classes = np.unique(labels)
    eligible = [c for c in classes if (labels == c).sum() >= clips_per_class]
    if len(eligible) < classes_per_batch:
        raise InputError(
            f"a batch needs {classes_per_batch} words with >= {clips_per_class} training clips "
            f"each, but the data has {len(eligible)}; lower --batch-size or --clips-per-class"
        )
    return eligible


def derangements(groups: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(groups, k): in each row a permutation of range(k) with no fixed point.

    A random order visited cyclically: position order[i] borrows from order[i + 1].
    """
    order = np.argsort(rng.random((groups, k)), axis=1)
    partner = np.empty_like(order)
    np.put_along_axis(partner, order, np.roll(order, -1, axis=1), axis=1)
    return partner


class _Queue:
    """A class's clips in shuffled order, reshuffled whenever fewer than k are left (the
    few left over are skipped, so a group never holds the same clip twice)."""

    def __init__(self, rows: np.ndarray, rng: np.random.Generator):
        self.rows, self.rng, self.pending = rows, rng, np.empty(0, dtype=rows.dtype)

    def take(self, k: int) -> np.ndarray:
        if len(self.pending) < k:
            self.pending = self.rng.permutation(self.rows)
        out, self.pending = self.pending[:k], self.pending[k:]
        return out
