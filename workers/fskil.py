"""Few-shot class-incremental keyword spotting (FSKIL): the pure parts of the protocol.

Session 0 trains on the base words only; the cosine classifier's base weights become
prototypes (class means of the base-training embeddings); each later session adds
``ways`` new words, one prototype each from ``shots`` training clips, with the encoder
frozen; after every session the test split (held-out speakers) is scored on all words
seen so far. ``run_protocol`` does everything after base training for any embedding
function, so the worker's model and the log-mel baseline share it.

The reference is the public FSKIL code for Speech Commands v2 (GitHub moneyflo/FSKIL),
read, not copied:

- ``dataloader/data_utils.py``: 20 base words, 35 in all, 3-way 5-shot, 6 sessions; the
  test of session s holds every word with index < 20 + 3s.
- ``data/dataset_prep.py`` and ``data/index_list/gsc2/session_{1..6}.txt``: the class
  order (``REFERENCE_ORDER``) and one fixed draw of the shots (seed 1997).
- ``models/base/helper.py`` (``replace_base_fc``, ``test``) and ``models/base/Network.py``
  (``update_fc_avg``, ``forward_metric``): prototypes are plain means of the
  *unnormalised* encoder outputs, scored by cosine (mode ``avg_cos``); seen and unseen
  accuracy are means of the diagonal of a row-normalised confusion matrix (mean per-class
  accuracy), the overall accuracy is the mean of per-batch accuracies (batches of 100).
- ``utils.py`` (``harm_mean``): harmonic mean 2ab / (a + b), for sessions 1.. only.

Where dotsim differs (docs/fskil.md lists every difference): prototypes average
L2-normalised embeddings by default (as the issue asks; ``Protocol.prototypes =
"reference"`` takes the reference's plain mean), shots are drawn from the training split
afresh in each of several episodes from (seed, episode, word) instead of one fixed list
from every non-test clip, and the overall accuracy is pooled over clips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from workers.config import PROTOTYPES
from workers.data import Split
from workers.errors import InputError

# Speech Commands v2 in the reference's order. Base words: folders 01-20 of
# data/dataset_prep.py (words sorted by clip count, most first, ties by name), listed in
# data/index_list/gsc2/session_1.txt; they are the 20 core command words. Then three
# words per session from data/index_list/gsc2/session_2.txt ... session_6.txt.
REFERENCE_ORDER: tuple[str, ...] = (
    "five", "zero", "yes", "seven", "no", "nine", "down", "one", "go", "two",
    "stop", "six", "on", "left", "eight", "right", "off", "four", "three", "up",
    "dog", "wow", "house",  # session 1
    "marvin", "bird", "happy",  # session 2
    "cat", "sheila", "bed",  # session 3
    "tree", "backward", "visual",  # session 4
    "follow", "learn", "forward",  # session 5
)  # fmt: skip

T = TypeVar("T")
EmbedFn = Callable[[Split, torch.Tensor], torch.Tensor]
"""(split, rows (N,) on the split's device) -> (N, D) embeddings of those rows."""
Accuracies = dict[str, float | None]


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """The sizes of an FSKIL run (the reference's Speech Commands v2 setup by default) and
    how its prototypes are made."""

    base_classes: int = 20
    """Words trained on in session 0."""
    ways: int = 3
    """New words per incremental session."""
    shots: int = 5
    """Training clips per new word (its prototype is their mean embedding)."""
    sessions: int = 6
    """Sessions in all, the base session included."""
    episodes: int = 10
    """Independent draws of the shots; accuracies are averaged over them."""
    prototypes: str = "normalised"
    """normalised: a prototype is the mean of L2-normalised embeddings; reference: the plain
    mean of the embeddings, as the reference computes it. Scoring is cosine either way."""

    def __post_init__(self):
        for name in ("base_classes", "ways", "shots", "sessions", "episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be an integer >= 1; got {value!r}")
        if self.prototypes not in PROTOTYPES:
            raise InputError(f"unknown prototypes {self.prototypes!r}; allowed: "
                             f"{', '.join(PROTOTYPES)}")

    @property
    def normalize(self) -> bool:
        """Whether prototypes average L2-normalised embeddings (``prototypes(normalize=)``)."""
        return self.prototypes == "normalised"

    @property
    def words(self) -> int:
        """Words the protocol uses: base_classes + ways * (sessions - 1)."""
        return self.base_classes + self.ways * (self.sessions - 1)

    def check_words(self, available: int, what: str = "the class order") -> None:
        """``InputError`` when ``available`` words are too few for the protocol."""
        if available < self.words:
            raise InputError(
                f"{what} has {available} words; the protocol needs base_classes + ways * "
                f"(sessions - 1) = {self.base_classes} + {self.ways} * {self.sessions - 1} = "
                f"{self.words}"
            )

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


# --- the class order -----------------------------------------------------------------


def default_class_order(labels: Sequence[str]) -> list[str]:
    """The reference's order when ``labels`` are the 35 Speech Commands v2 words (a
    Speech Commands v2 folder or the synthetic corpus, which says the same words);
    otherwise the labels in their own order (meta.json's list: sorted folder names)."""
    if sorted(labels) == sorted(REFERENCE_ORDER):
        return list(REFERENCE_ORDER)
    return list(labels)


def read_class_order(path: str | Path, labels: Sequence[str], protocol: Protocol) -> list[str]:
    """A user's class order: one word a line, base words first, then ``ways`` words per
    session; blank lines and ``#`` comments are ignored, words after the protocol's
    ``words`` are unused. ``InputError`` (one line) for an unreadable file, an unknown
    word, a repeated word, or too few words."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read class order file {path}: {err}") from err
    order, line_of = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        if word in line_of:
            raise InputError(f"class order file {path} repeats {word!r} (lines "
                             f"{line_of[word]} and {number})")
        line_of[word] = number
        order.append(word)
    allowed = set(labels)
    unknown = [w for w in order if w not in allowed]
    if unknown:
        raise InputError(f"class order file {path}: unknown word(s) "
                         f"{', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(labels))}")
    protocol.check_words(len(order), what=f"class order file {path}")
    return order


def class_ids(order: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Label indices (positions in meta.json's ``labels``) of the words in ``order``."""
    index = {word: i for i, word in enumerate(labels)}
    unknown = [w for w in order if w not in index]
    if unknown:
        raise InputError(f"class order names unknown word(s) {', '.join(map(repr, unknown))};"
                         f" allowed: {', '.join(sorted(labels))}")
    return [index[w] for w in order]


def session_classes(order: Sequence[T], protocol: Protocol) -> list[list[T]]:
    """[base words, session 1's words, ...]: ``sessions`` lists, the first of
    ``base_classes`` entries, the others of ``ways``."""
    protocol.check_words(len(order))
    b, w = protocol.base_classes, protocol.ways
    return [list(order[:b])] + [list(order[b + w * (s - 1): b + w * s])
                                for s in range(1, protocol.sessions)]


# --- base training -------------------------------------------------------------------


def base_rows(labels: torch.Tensor, order: Sequence[int], protocol: Protocol
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, base_labels), both (N_base,): the rows of a split whose word is a base word
    (the only rows base training, its shuffled pairs and its feature statistics may read),
    and each row's base index 0..base_classes-1 (its position in ``order``), so the base
    model trains a ``base_classes``-way classifier."""
    base = torch.as_tensor(session_classes(order, protocol)[0], device=labels.device)
    rows = torch.isin(labels, base).nonzero().squeeze(1)
    base_labels = (labels[rows, None] == base).int().argmax(1)
    return rows, base_labels


def base_split(split: Split, order: Sequence[int], protocol: Protocol) -> Split:
    """``split`` restricted to the base words, relabelled 0..base_classes-1."""
    rows, base_labels = base_rows(split.labels, order, protocol)
    return split.subset(rows, base_labels.to(split.labels.dtype))


def check_shots(labels: torch.Tensor, order: Sequence[int], protocol: Protocol,
                names: Sequence[str]) -> None:
    """``InputError`` before any training when a novel word has fewer than ``shots``
    training clips to draw from."""
    counts = torch.bincount(labels.cpu(), minlength=len(names))
    novel = [c for session in session_classes(order, protocol)[1:] for c in session]
    short = [f"{names[c]} ({int(counts[c])})" for c in novel if counts[c] < protocol.shots]
    if short:
        raise InputError(f"shots={protocol.shots}, but these novel words have fewer training "
                         f"clips: {', '.join(short)}; lower --shots or choose another order")


# --- prototypes and scoring ----------------------------------------------------------


def draw_shots(labels: torch.Tensor, classes: Sequence[int], shots: int, *, seed: int,
               episode: int, names: Sequence[str] | None = None) -> torch.Tensor:
    """(len(classes) * shots,) rows of the training split: ``shots`` distinct clips of each
    class, grouped by class in ``classes`` order. A class's draw depends only on (seed,
    episode, class), not on the other classes or the session it comes in."""
    out = []
    for c in classes:
        rows = (labels == c).nonzero().squeeze(1).cpu()
        if len(rows) < shots:
            word = names[c] if names is not None else c
            raise InputError(f"word {word!r} has {len(rows)} training clips, fewer than "
                             f"shots={shots}")
        pick = np.random.default_rng([seed, episode, c]).choice(len(rows), shots, replace=False)
        out.append(rows[torch.from_numpy(pick)])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def prototypes(emb: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], *,
               normalize: bool = True) -> torch.Tensor:
    """(C, D): per class in ``classes``, the mean of its rows of ``emb`` (N, D), each row
    L2-normalised first (``normalize=False``: the reference's plain mean of the
    unnormalised rows, ``Protocol(prototypes="reference")``)."""
    if normalize:
        emb = F.normalize(emb, dim=-1)
    means = []
    for c in classes:
        mask = labels == c
        if not mask.any():
            raise InputError(f"class {c} has no embeddings to average")
        means.append(emb[mask].mean(0))
    return torch.stack(means)


def classify(emb: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """(N,) row of ``protos`` (C, D) nearest to each row of ``emb`` (N, D) by cosine: the
    cosine classifier with its weights set to the prototypes (temperature does not change
    the argmax)."""
    return (F.normalize(emb, dim=-1) @ F.normalize(protos, dim=-1).T).argmax(-1)


def session_accuracies(pred: torch.Tensor, target: torch.Tensor, base: Sequence[int],
                       novel: Sequence[int]) -> Accuracies:
    """Accuracies of one session; ``pred`` and ``target`` (N,) are class ids.

    overall: pooled over clips. seen: mean per-class accuracy (recall) over the ``base``
    classes; unseen: the same over the ``novel`` classes seen so far; harmonic:
    2 seen unseen / (seen + unseen), 0 when both are 0. unseen and harmonic are None when
    there is no novel class (session 0). Classes without test clips are left out of the
    means."""
    unseen = _mean_class_accuracy(pred, target, novel)
    seen = _mean_class_accuracy(pred, target, base)
    return {
        "overall": (pred == target).double().mean().item(),
        "seen": seen,
        "unseen": unseen,
        "harmonic": None if unseen is None or seen is None else harmonic_mean(seen, unseen),
    }


def _mean_class_accuracy(pred: torch.Tensor, target: torch.Tensor,
                         classes: Sequence[int]) -> float | None:
    per_class = [(pred[target == c] == c).double().mean().item()
                 for c in classes if (target == c).any()]
    return sum(per_class) / len(per_class) if per_class else None


def harmonic_mean(seen: float, unseen: float) -> float:
    return 0.0 if seen + unseen == 0 else 2 * seen * unseen / (seen + unseen)


def mean_over_episodes(per_episode: Sequence[Sequence[Accuracies]]) -> list[Accuracies]:
    """Per session: overall, seen and unseen averaged over the episodes; harmonic is taken
    of the averaged seen and unseen, so the reported row is self-consistent."""
    out = []
    for rows in zip(*per_episode, strict=True):
        mean = {key: _mean([r[key] for r in rows]) for key in ("overall", "seen", "unseen")}
        seen, unseen = mean["seen"], mean["unseen"]
        mean["harmonic"] = (None if seen is None or unseen is None
                            else harmonic_mean(seen, unseen))
        out.append(mean)
    return out


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)


def headline(per_session: Sequence[Accuracies]) -> dict[str, float | None]:
    """mean_acc: overall accuracy averaged over all sessions (session 0 included);
    last_acc and last_harmonic: the last session's overall accuracy and harmonic mean."""
    return {
        "mean_acc": sum(s["overall"] for s in per_session) / len(per_session),
        "last_acc": per_session[-1]["overall"],
        "last_harmonic": per_session[-1]["harmonic"],
    }


# --- the whole protocol after base training ------------------------------------------


@dataclass
class FskilResult:
    """What one evaluation under the protocol records (plain values: JSON and Parquet)."""

    order: list[str]  # the class order used: base words, then ways words per session
    protocol: dict[str, int | str]  # Protocol.to_dict(): the sizes and the prototypes
    seed: int
    per_session: list[Accuracies]  # mean over episodes, one dict per session
    headline: dict[str, float | None]
    per_episode: list[list[Accuracies]] = field(default_factory=list)
    shots: list[list[str]] = field(default_factory=list)  # clip ids drawn, per episode


def run_protocol(embed_fn: EmbedFn, train: Split, test: Split, order: Sequence[str],
                 labels: Sequence[str], protocol: Protocol, *, seed: int) -> FskilResult:
    """Score a frozen embedding under the protocol: base prototypes from every base
    training clip, then per episode novel prototypes from the drawn shots (both made as
    ``protocol.prototypes`` says), then each session's test on all words seen so far.
    ``embed_fn`` sees each needed row once: the base training rows, the union of the
    episodes' shots, the test rows."""
    ids = class_ids(order[:protocol.words], labels)
    sessions = session_classes(ids, protocol)
    base, novel = sessions[0], [c for s in sessions[1:] for c in s]
    device = train.labels.device

    normalize = protocol.normalize
    rows, _ = base_rows(train.labels, ids, protocol)
    base_protos = prototypes(_embed(embed_fn, train, rows), train.labels[rows].cpu(), base,
                             normalize=normalize)
    test_rows = torch.isin(test.labels, torch.as_tensor(ids, device=device)).nonzero().squeeze(1)
    test_emb, test_target = _embed(embed_fn, test, test_rows), test.labels[test_rows].cpu()

    draws = [draw_shots(train.labels, novel, protocol.shots, seed=seed, episode=e, names=labels)
             for e in range(protocol.episodes)]
    pool = torch.unique(torch.cat(draws))  # sorted; every drawn row is embedded once
    pool_emb, pool_labels = _embed(embed_fn, train, pool), train.labels.cpu()[pool]

    per_episode = []
    for shots in draws:
        at = torch.searchsorted(pool, shots)
        novel_protos = prototypes(pool_emb[at], pool_labels[at], novel, normalize=normalize)
        per_episode.append([
            _score_session(test_emb, test_target, base_protos, novel_protos, base,
                           novel[:protocol.ways * s])
            for s in range(protocol.sessions)
        ])
    per_session = mean_over_episodes(per_episode)
    return FskilResult(
        order=list(order[:protocol.words]), protocol=protocol.to_dict(), seed=seed,
        per_session=per_session, headline=headline(per_session), per_episode=per_episode,
        shots=[[train.clips[i] for i in shots.tolist()] for shots in draws],
    )


def _embed(embed_fn: EmbedFn, split: Split, rows: torch.Tensor) -> torch.Tensor:
    return embed_fn(split, rows.to(split.labels.device)).float().cpu()


def _score_session(test_emb: torch.Tensor, test_target: torch.Tensor,
                   base_protos: torch.Tensor, novel_protos: torch.Tensor, base: list[int],
                   novel_seen: list[int]) -> Accuracies:
    seen = torch.tensor(base + novel_seen)
    protos = torch.cat([base_protos, novel_protos[:len(novel_seen)]])
    mask = torch.isin(test_target, seen)
    pred = seen[classify(test_emb[mask], protos)]
    return session_accuracies(pred, test_target[mask], base, novel_seen)


# --- the plain baseline --------------------------------------------------------------


BASELINE_CHUNK = 4096  # clips a time (about 65 MB of log-mels), not a split at once


def logmel_baseline(train: Split, test: Split, order: Sequence[str], labels: Sequence[str],
                    protocol: Protocol, *, seed: int,
                    standardised_with: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> FskilResult:
    """The protocol with no training: a clip's embedding is its log-mel spectrogram
    (``speech``) averaged over frames, as prepared, and prototypes (``protocol.prototypes``)
    and classification as for the encoder. ``standardised_with``: the per-bin (mean, std)
    with which the caller standardised the splits' speech features (training does), undone
    here, so the baseline sees the features as prepared. (Standardising the averages with
    base statistics, tried first, halves this baseline on the synthetic corpus: 0.08
    against 0.16 mean accuracy.)"""

    def embed_fn(split: Split, rows: torch.Tensor) -> torch.Tensor:
        averaged = torch.cat([split.take(rows[i:i + BASELINE_CHUNK], ("speech",))[0].mean(1)
                              for i in range(0, len(rows), BASELINE_CHUNK)]
                             or [torch.zeros(0, split.features["speech"].shape[-1])])
        if standardised_with is None:
            return averaged
        mean, std = (t.to(averaged.device) for t in standardised_with)
        return averaged * std + mean  # the frames' affine standardisation, undone

    return run_protocol(embed_fn, train, test, order, labels, protocol, seed=seed)
