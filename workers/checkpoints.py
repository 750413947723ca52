"""The files of one checkpoint: what rank 0 writes into the folder it hands to
``ray.train.report`` and what a restarted or resumed run reads back.

A checkpoint holds ``state.pt`` (a dict of tensors and plain values, read with
``torch.load(weights_only=True)``) and ``history.json`` (every epoch's metrics so far,
for readers that need no weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from workers.metrics import HISTORY_FILE

CHECKPOINT_FILE = "state.pt"


def write(directory: str | os.PathLike, payload: dict, history: list[dict]) -> None:
    """Write ``payload`` and ``history`` into ``directory``, each under a temporary name
    renamed when complete: never a half-written file under its real name."""
    directory = Path(directory)
    torch.save(payload, directory / (CHECKPOINT_FILE + ".tmp"))
    os.replace(directory / (CHECKPOINT_FILE + ".tmp"), directory / CHECKPOINT_FILE)
    (directory / (HISTORY_FILE + ".tmp")).write_text(json.dumps(history))
    os.replace(directory / (HISTORY_FILE + ".tmp"), directory / HISTORY_FILE)


def read(directory: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(payload, history) of the checkpoint in ``directory``, tensors on the CPU."""
    directory = Path(directory)
    payload = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    history = json.loads((directory / HISTORY_FILE).read_text())
    return payload, history
