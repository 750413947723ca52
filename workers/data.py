"""The training view of prepared data: each split's features memory-mapped from the
node's copy (``workers.node_cache``), read a batch of rows at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from workers.constants import FEATURES, SPLITS
from workers.node_cache import node_copy


@dataclass
class Split:
    """One split: features (N, frames, n_mels) float32 for each name in FEATURES, labels
    (N,) int64, and each clip's speaker and id.

    The features may be memory-mapped from the node's copy (shared by every worker of the
    node), and may cover more clips than the split: ``rows`` then says which (a subset's
    view, see ``subset``). ``take(rows)`` gives the features of rows of the split,
    standardised per mel bin with ``scale`` when it is set; reading goes through it.
    """

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    speakers: list[str]
    clips: list[str]
    rows: torch.Tensor | None = None  # (len,) rows of ``features``; None: all, in order
    scale: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # name -> (mean, std)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: torch.Tensor, names=FEATURES) -> tuple[torch.Tensor, ...]:
        """The features ``names`` (all: speech, formant, residual) of ``rows``, each
        (len(rows), frames, n_mels), on the device of the labels."""
        if self.rows is not None:
            rows = self.rows[rows.to(self.rows.device)]
        out = []
        for name in names:
            x = self.features[name][rows.to(self.features[name].device)]  # a copy
            if self.scale is not None:
                mean, std = self.scale[name]
                x = x.sub_(mean).div_(std)
            out.append(x.to(self.labels.device))
        return tuple(out)

    def subset(self, rows: torch.Tensor, labels: torch.Tensor | None = None) -> Split:
        """A view of ``rows`` of this split (no feature is copied), optionally relabelled."""
        keep = rows.tolist()
        return replace(self, labels=self.labels[rows] if labels is None else labels,
                       speakers=[self.speakers[i] for i in keep],
                       clips=[self.clips[i] for i in keep],
                       rows=rows.cpu() if self.rows is None else self.rows[rows.cpu()])


@dataclass
class Prepared:
    meta: dict
    splits: dict[str, Split]

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]


def load_prepared(location: str | os.PathLike, splits=SPLITS) -> Prepared:
    """The prepared data at ``location`` (checked when this node first copies it), as
    splits whose features are memory-mapped from the node's copy: copy-on-write, so the
    pages are shared by every process of the node that reads them and never written."""
    folder = node_copy(location)
    meta = json.loads((folder / "meta.json").read_text())
    return Prepared(meta=meta, splits={s: _mapped_split(folder, s) for s in splits})


def _mapped_split(folder: Path, split: str) -> Split:
    ids = json.loads((folder / f"{split}-ids.json").read_text())
    mapped = "c" if ids["clips"] else None  # a file of no rows cannot be mapped
    features = {name: torch.from_numpy(np.load(folder / f"{split}-{name}.npy", mmap_mode=mapped))
                for name in FEATURES}
    return Split(features=features,
                 labels=torch.from_numpy(np.load(folder / f"{split}-labels.npy")),
                 speakers=ids["speakers"], clips=ids["clips"])
