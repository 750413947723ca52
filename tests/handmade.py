"""Sweep folders made by hand (sweep.json and results.parquet, no Ray): the report and the
CLI read them as they read a real sweep's."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

EPOCH = {"val_acc": 0.5, "train_loss": 1.0, "train_cos_rec": 0.9, "train_cos_shuffled": 0.5,
         "epoch_seconds": 3.0}


def trial_rows(variant: str, seed: int, test_acc: float | None, *, epochs: int = 2,
               status: str = "FINISHED", error: str | None = None, workers: int = 2,
               grid: str = "{}", **final) -> list[dict]:
    """results.parquet rows of one trial: ``epochs`` epochs (none for a trial that failed
    before its first), the last one with ``test_acc`` and the ``final`` metrics."""
    tags = {"trial": f"{variant}-{seed}", "variant": variant, "grid": grid, "seed": seed,
            "workers": workers, "status": status, "error": error}
    if not epochs:
        return [{**tags, "epoch": None, **dict.fromkeys(EPOCH)}]
    rows = [{**tags, "epoch": e, **EPOCH, "test_acc": None} for e in range(1, epochs + 1)]
    rows[-1] |= {"test_acc": test_acc, "probe_word_from_formant": 0.7,
                 "probe_speaker_from_residual": 0.8, **final}
    return rows


def write_sweep(folder: Path, rows: list[dict], *, protocol: str = "standard",
                study: str | None = None, race: dict | None = None,
                base: dict | None = None) -> Path:
    """A sweep folder holding ``rows`` as its results; with ``race`` (sweep.json's
    ``race``: arms, metric, margin, alpha, max_seeds, min_seeds), a race's; ``base``: its
    base config (default: only the protocol)."""
    folder.mkdir(parents=True, exist_ok=True)
    definition = {"base": base or {"protocol": protocol}, "trials": [], "scheduler": "fifo",
                  "study": study}
    if race is not None:
        definition["race"] = race
    (folder / "sweep.json").write_text(json.dumps(definition))
    pd.DataFrame(rows).to_parquet(folder / "results.parquet")
    return folder
