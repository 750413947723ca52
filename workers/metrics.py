"""The one definition of dotsim's metrics: their names, which are reported every epoch and
which once at the end of a run, and which of them select and compare runs. The training
loop writes them; the launcher, the sweep and the report read them by these names."""

from __future__ import annotations

# Means over an epoch's steps, in the order the training step returns them.
STEP_METRICS = ("train_loss", "train_ce", "train_lpc", "train_shuffled", "train_cos_rec",
                "train_cos_shuffled")
# Every epoch's report: the step means, bookkeeping, and the validation split.
EPOCH_METRICS = ("epoch", *STEP_METRICS, "skipped_steps", "epoch_seconds",
                 "samples_per_second", "peak_rss_mb", "lr", "world_size", "val_acc",
                 "val_cos_rec")
# Added to the last epoch's report: the test split with the best-validation weights and
# the linear probes.
FINAL_METRICS = ("test_acc", "test_cos_rec", "best_epoch", "probe_word_from_formant",
                 "probe_speaker_from_residual")

SELECTION_METRIC = "val_acc"  # picks the best weights of a run, and is Tune's metric
SELECTION_MODE = "max"
COMPARISON_METRIC = "test_acc"  # what the report compares variants on

HISTORY_FILE = "history.json"  # in every checkpoint: the list of epoch reports so far


def is_finished(history: list[dict], epochs: int) -> bool:
    """A run is finished when its history holds every epoch and the final metrics."""
    return (len(history) == epochs and history[-1].get("epoch") == epochs
            and all(key in history[-1] for key in FINAL_METRICS))
