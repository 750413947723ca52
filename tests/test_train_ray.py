"""Real Ray Train runs (2 DDP workers on CPU/gloo) on a small synthetic corpus: the loss
falls, resume continues without repeating an epoch, a killed worker is survived, NaN in
one rank's batch is handled on every rank. (World-size invariance: test_sweep_ray.py.)"""

import json
import math

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.launch import run_training
from workers.config import RunConfig
from workers.train import FAULT_ENV, NAN_ENV

pytestmark = pytest.mark.ray


def _cfg(small_prepared, tmp_path, **changes):
    base = dict(data=str(small_prepared), storage_path=str(tmp_path / "runs"), preset="tiny",
                batch_size=32, clips_per_class=2, workers=2, cpus_per_worker=1.0, epochs=3,
                lr=3e-3)
    return RunConfig(**(base | changes))


def _epochs(summary):
    return [h["epoch"] for h in summary["history"]]


def test_two_workers_train_and_resume(ray_local, small_prepared, tmp_path):
    first = run_training(_cfg(small_prepared, tmp_path, epochs=2, run_name="r"), progress=False)
    assert _epochs(first) == [1, 2]
    again = run_training(_cfg(small_prepared, tmp_path, epochs=4, run_name="r"), progress=False)
    history = again["history"]
    assert _epochs(again) == [1, 2, 3, 4]  # continued at 3: no epoch twice, none missing
    assert history[:2] == first["history"][:2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    final = again["metrics"]
    for key in ("test_acc", "probe_word_from_formant", "probe_speaker_from_residual",
                "val_cos_rec", "train_cos_shuffled", "samples_per_second", "peak_rss_mb"):
        assert key in final
    assert 0 <= final["test_acc"] <= 1 and final["best_epoch"] in (1, 2, 3, 4)
    record = json.loads((tmp_path / "runs" / "r" / "dotsim_run.json").read_text())
    assert record["config"]["epochs"] == 4 and "torch" in record["packages"]


def test_killed_worker_is_restarted_from_checkpoint(ray_local, small_prepared, tmp_path):
    marker = tmp_path / "killed-once"
    cfg = _cfg(small_prepared, tmp_path, epochs=3, run_name="killed", dropout=0.0)
    summary = run_training(cfg, progress=False, worker_env={FAULT_ENV: f"1:1:{marker}"})
    assert marker.exists()  # rank 1 really died at the start of epoch 2
    assert _epochs(summary) == [1, 2, 3]
    clean = run_training(cfg.replace(run_name="clean"), progress=False)
    # the deterministic sampler and per-epoch seeds make the restarted run repeat the
    # uninterrupted one
    for a, b in zip(summary["history"], clean["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-9)


def test_train_cli_json(ray_local, small_prepared, tmp_path):
    result = CliRunner().invoke(cli, [
        "train", "--data", str(small_prepared), "--storage-path", str(tmp_path),
        "--preset", "tiny", "--epochs", "1", "--batch-size", "32", "--clips-per-class", "2",
        "--similarity", "cosine", "--run-name", "cli", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["variant"] == "cosine" and doc["run_name"] == "cli"
    assert doc["metrics"]["epoch"] == 1 and "test_acc" in doc["metrics"]


def test_nan_in_one_rank_is_skipped_on_every_rank(ray_local, small_prepared, tmp_path):
    cfg = _cfg(small_prepared, tmp_path, epochs=2, run_name="nan-skip")
    summary = run_training(cfg, progress=False, worker_env={NAN_ENV: "1:0:2"})
    first, second = summary["history"]
    assert first["skipped_steps"] == 1 and second["skipped_steps"] == 0
    assert math.isfinite(first["train_loss"]) and math.isfinite(second["train_loss"])


def test_nan_with_stop_fails_clearly_on_every_rank(ray_local, small_prepared, tmp_path):
    import ray.train

    cfg = _cfg(small_prepared, tmp_path, epochs=2, run_name="nan-stop", on_nonfinite="stop",
               max_failures=0)
    with pytest.raises(ray.train.TrainingFailedError) as failed:
        run_training(cfg, progress=False, worker_env={NAN_ENV: "1:0:2"})
    text = str(failed.value)
    assert "non-finite" in text and "(rank 1)" in text and "epoch 1 step 2" in text
    assert "Rank 0,1" in text  # both ranks stopped at the same step, none hung
