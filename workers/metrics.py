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

# Added to the last epoch under the FSKIL protocol (workers.fskil): the headline numbers,
# each session's four accuracies (means over the episodes), and the headline numbers of the
# plain baseline (time-averaged log-mel prototypes, no training). The per-episode detail
# goes into the history only, under the key FSKIL_DETAIL.
FSKIL_HEADLINE = ("fskil_mean_acc", "fskil_last_acc", "fskil_last_harmonic")
FSKIL_KINDS = ("overall", "seen", "unseen", "harmonic")
LOGMEL_HEADLINE = ("logmel_mean_acc", "logmel_last_acc", "logmel_last_harmonic")
FSKIL_DETAIL = "fskil"


def session_metric(session: int, kind: str, source: str = "fskil") -> str:
    """``fskil_s3_unseen``: a session's accuracy of one kind (FSKIL_KINDS), of the trained
    encoder (``fskil``) or of the plain baseline (``logmel``)."""
    return f"{source}_s{session}_{kind}"


def comparison_metrics(protocol: str) -> tuple[str, ...]:
    """What the report compares variants on under ``protocol``."""
    return FSKIL_HEADLINE if protocol == "fskil" else (COMPARISON_METRIC,)


SELECTION_METRIC = "val_acc"  # picks the best weights of a run, and is Tune's metric
SELECTION_MODE = "max"
COMPARISON_METRIC = "test_acc"  # what the report compares variants on

# The key of the one report a run makes outside its epochs: the checkpoint saved on a
# preemption notice, mid-epoch. Readers of epoch reports (progress, trackers, Tune) skip it.
PREEMPTION_REPORT = "preemption_checkpoint"

HISTORY_FILE = "history.json"  # in every checkpoint: the list of epoch reports so far


def is_finished(history: list[dict], epochs: int) -> bool:
    """A run is finished when its history holds every epoch and the final metrics."""
    return (len(history) == epochs and history[-1].get("epoch") == epochs
            and all(key in history[-1] for key in FINAL_METRICS))
