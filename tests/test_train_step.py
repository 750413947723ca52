"""A training step on two real gloo ranks (no Ray): a NaN in one rank's batch is seen by
every rank in the same step, which is then skipped on all of them (on_nonfinite=skip)
or stops all of them with the rank and step named (on_nonfinite=stop)."""

import pytest

pytestmark = pytest.mark.distributed


def _step_with_nan_on_rank_1(rank, world_size, on_nonfinite):
    import torch

    from workers.config import RunConfig
    from workers.train import Batch, NonFiniteLossError, RankContext, build_model, train_step

    cfg = RunConfig(preset="tiny", batch_size=8, clips_per_class=2, workers=world_size,
                    dropout=0.0, on_nonfinite=on_nonfinite)
    model = build_model(cfg, {"n_mels": 40, "frames": 101}, classes=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctx = RankContext(rank, world_size, torch.device("cpu"))
    pairs = torch.tensor([1, 0, 3, 2])  # each clip's partner inside its group of 2

    def batch(nan: bool) -> Batch:
        gen = torch.Generator().manual_seed(rank)
        features = [torch.randn(4, 101, 40, generator=gen) for _ in range(3)]
        if nan:
            features[0] = torch.full_like(features[0], float("nan"))
        return Batch(tuple(features), torch.tensor([0, 0, 1, 1]), pairs, pairs)

    before = [p.detach().clone() for p in model.parameters()]
    try:
        skipped = train_step(model, optimizer, batch(nan=rank == 1), cfg, ctx, (0, 2))
    except NonFiniteLossError as err:
        return {"stopped": str(err)}
    unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters(),
                                                      strict=True))
    taken = train_step(model, optimizer, batch(nan=False), cfg, ctx, (0, 3))
    return {"skipped": skipped is None, "unchanged": unchanged,
            "next_step_taken": taken is not None and bool(torch.isfinite(taken).all())}


def test_nan_in_one_rank_is_skipped_on_every_rank(gloo_pool):
    for rank in gloo_pool(2).run(_step_with_nan_on_rank_1, "skip"):
        assert rank == {"skipped": True, "unchanged": True, "next_step_taken": True}


def test_nan_with_stop_stops_every_rank_naming_the_rank_and_step(gloo_pool):
    for rank in gloo_pool(2).run(_step_with_nan_on_rank_1, "stop"):
        text = rank["stopped"]
        assert "non-finite" in text and "(rank 1)" in text and "epoch 1 step 2" in text
