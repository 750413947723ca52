"""A 3-trial sweep leaks nothing: no placement group, process or file descriptor is left
over beyond Ray's own pooled workers, and the workers' memory stays flat over epochs.
(bench/bench_load.py runs the same check on 20+ trials.)"""

import sys
from pathlib import Path

import pytest
from tiny import tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_three_trial_sweep_leaks_nothing(ray_local, small_prepared, tmp_path):
    from bench_load import run

    base = tiny_config(small_prepared, tmp_path, epochs=3)
    out = run(base, trials=3)
    before, after = out["before"], out["after"]
    assert out["trials"] == 3
    assert after["placement_groups"] == before["placement_groups"] == 0
    assert after["processes"] <= before["processes"] + 2  # Ray may pool a worker or two
    assert after["driver_fds"] <= before["driver_fds"] + 10
    rss = out["rss_by_epoch"]
    assert rss.iloc[-1] <= rss.iloc[0] * 1.2  # flat: no growth per epoch
