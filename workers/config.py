"""The one typed description of a training run.

The CLI builds it, Tune varies its fields by name, and every Ray Train worker rebuilds
it from ``asdict``. Nothing else in dotsim carries a default for these settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from losses import NORMS, SCOPES, validate
from workers.errors import InputError

# Model sizes by name: a small default that trains on 2 CPU cores, larger ones for GPUs.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 32, "layers": 1, "heads": 2, "emb_dim": 32},
    "small": {"d_model": 64, "layers": 2, "heads": 4, "emb_dim": 64},
    "base": {"d_model": 192, "layers": 6, "heads": 6, "emb_dim": 128},
    "large": {"d_model": 384, "layers": 12, "heads": 6, "emb_dim": 256},
}


@dataclass(kw_only=True)
class RunConfig:
    """Everything that defines one training run (one trial of a sweep)."""

    # --- data -------------------------------------------------------------------------
    data: str | None = None
    """Prepared data folder (``dotsim prepare``); None: the synthetic corpus, prepared once
    into the cache folder and reused."""

    # --- model ------------------------------------------------------------------------
    preset: str = "small"
    """Model size: d_model, layers, heads and emb_dim (tiny 32/1/2/32 ... large
    384/12/6/256)."""
    frames_per_token: int = 2
    """Spectrogram frames merged into one Transformer token (101 frames -> 51 tokens)."""
    dropout: float = 0.1
    """Dropout in the encoder; 0 makes runs at different world sizes comparable."""
    temperature: float = 0.1
    """Temperature of the cosine classifier: logits = cos(emb, class weight) / temperature."""

    # --- loss -------------------------------------------------------------------------
    similarity: str = "dot"
    """cosine, dot, dot-legacy, or a custom ``package.module:function`` (Pair -> (B,))."""
    norm: str = "minmax"
    """Batch normalisation of the embedding norms: minmax or meanstd."""
    scope: str = "global"
    """Batch statistics over all ranks (global, exact) or each rank's own batch (local)."""
    detach_stats: bool = False
    """Stop gradients through the batch statistics."""
    eps: float = 1e-6
    """Floor of the min-max range / added to the variance, in units of the norms."""
    w_lpc: float = 1.0
    """Weight of similarity_loss(emb, emb_formant + emb_residual)."""
    w_shuffled: float = 0.5
    """Weight of similarity_loss(emb, shuffled reconstruction from other clips of the class)."""

    # --- evaluation protocol ----------------------------------------------------------
    protocol: str = "standard"
    """standard: train and test on every word. fskil: few-shot class-incremental keyword
    spotting: train on the base words only, then add the others `ways` words per session
    from `shots` clips each (prototypes, encoder frozen), testing after every session."""
    base_classes: int = 20
    """fskil: words of the base session (session 0)."""
    ways: int = 3
    """fskil: new words per incremental session."""
    shots: int = 5
    """fskil: training clips per new word (its prototype is their mean embedding)."""
    sessions: int = 6
    """fskil: sessions in all, the base session included."""
    episodes: int = 10
    """fskil: independent draws of the shots; the accuracies are their mean."""
    class_order: list[str] | None = None
    """fskil: the words in order, base words first, then each session's (--class-order
    FILE, one word a line). None: the FSKIL reference's order for the 35 Speech Commands
    words (the synthetic corpus says the same words), else the prepared labels' order."""
    prototypes: str = "normalised"
    """fskil: how a class prototype averages its clips' embeddings: normalised (the mean of
    the L2-normalised embeddings) or reference (the plain mean, as the FSKIL reference
    code does); either way a clip goes to the prototype of highest cosine similarity."""

    # --- optimisation -----------------------------------------------------------------
    epochs: int = 15
    """Passes over the training split."""
    batch_size: int | None = None
    """Global batch: classes_per_batch x clips_per_class, split into whole groups per worker.
    None: 128, or under fskil as many groups as base words (up to 32) x clips_per_class."""
    clips_per_class: int = 4
    """K: clips of one class per group (>= 2, so the shuffled pairs never pair a clip with
    itself)."""
    lr: float = 4e-3
    """Peak AdamW learning rate (linear warm-up over the first epoch, then cosine decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Seeds the model initialisation, the batches and dropout."""
    on_nonfinite: str = "skip"
    """A NaN/inf loss part or gradient (seen by every rank in the same step): skip the
    step (counted as skipped_steps) or stop the run with an error."""

    # --- runtime ----------------------------------------------------------------------
    workers: int = 2
    """Ray Train workers (DDP ranks)."""
    gpu: bool = False
    """One GPU per worker (nccl, bf16 autocast) instead of CPU (gloo, float32)."""
    bf16: bool = True
    """bf16 autocast on GPU workers; --no-bf16 trains in float32 there (CPU workers always
    run float32, where bf16 is slower)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (fractions allowed, so sweeps fit small machines)."""
    threads_per_worker: int = 0
    """torch intra-op threads per worker; 0: max(1, floor(cpus_per_worker))."""
    storage_path: str | None = None
    """Where run folders (checkpoints, results) go; every node must see it. None:
    $DOTSIM_STORAGE, else ~/dotsim_results."""
    run_name: str | None = None
    """Run folder name; re-using one resumes that run (with the same config only). None:
    the variant, the seed and a short hash of every field that changes results."""
    checkpoints_to_keep: int = 2
    """Checkpoints kept per run (the best-validation weights travel inside each)."""
    max_failures: int = 1
    """Worker-group restarts from the last checkpoint before the run fails."""
    max_preemptions: int = -1
    """Worker-group restarts after a node was preempted (drained for preemption: a spot
    reclaim), counted apart from max_failures; -1: no limit."""
    trackers: list[dict] = field(default_factory=list)
    """Experiment trackers the metrics also go to (--tracker mlflow[:URI] or wandb), as
    orchestrator.trackers resolves them: where each is, never a secret."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form tags (e.g. a sweep's study name); saved, never interpreted by training."""

    def __post_init__(self):
        if self.batch_size is None:
            self.batch_size = self._default_batch_size()
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; allowed: {', '.join(PRESETS)}")
        try:
            validate(self.similarity, self.norm, self.scope)
        except ValueError as err:  # the loss names its allowed values; the user chose them
            raise InputError(str(err)) from err
        _positive(self, "epochs", "batch_size", "workers", "frames_per_token", "eps",
                  "temperature", "lr", "checkpoints_to_keep")
        if self.clips_per_class < 2:
            raise InputError(f"clips_per_class must be >= 2; got {self.clips_per_class}")
        if self.batch_size % self.clips_per_class:
            raise InputError(
                f"batch_size {self.batch_size} is not a multiple of clips_per_class "
                f"{self.clips_per_class}"
            )
        groups = self.batch_size // self.clips_per_class
        if groups % self.workers:
            raise InputError(
                f"batch_size {self.batch_size} holds {groups} class groups of "
                f"{self.clips_per_class}, which do not split evenly over {self.workers} workers;"
                f" use a batch size that is a multiple of {self.clips_per_class * self.workers}"
            )
        if self.protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {self.protocol!r}; allowed: "
                             f"{', '.join(PROTOCOLS)}")
        if self.prototypes not in PROTOTYPES:
            raise InputError(f"unknown prototypes {self.prototypes!r}; allowed: "
                             f"{', '.join(PROTOTYPES)}")
        if self.protocol == "fskil":
            self._check_fskil()
        if self.on_nonfinite not in ON_NONFINITE:
            raise InputError(f"unknown on_nonfinite {self.on_nonfinite!r}; allowed: "
                             f"{', '.join(ON_NONFINITE)}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.max_preemptions < -1:
            raise InputError(f"max_preemptions must be >= 0, or -1 for no limit; got "
                             f"{self.max_preemptions}")
        if self.cpus_per_worker <= 0 or self.max_failures < 0 or self.threads_per_worker < 0:
            raise InputError("cpus_per_worker must be > 0, max_failures and "
                             "threads_per_worker >= 0")
        if not all(isinstance(t, dict) and t.get("kind") in TRACKERS for t in self.trackers):
            raise InputError(f"trackers must be tracker specs of kind {', '.join(TRACKERS)}; "
                             "name them with --tracker")

    def _default_batch_size(self) -> int:
        if self.protocol != "fskil":
            return 128
        # a batch holds distinct words: at most the base words, in whole groups per worker
        groups = min(32, self.base_classes) // self.workers * self.workers
        return max(groups, self.workers) * self.clips_per_class

    def _check_fskil(self) -> None:
        spec = self.fskil  # checks the protocol's sizes
        if self.groups_per_batch > spec.base_classes:
            raise InputError(
                f"batch_size {self.batch_size} holds {self.groups_per_batch} groups of distinct "
                f"words, but fskil trains on {spec.base_classes} base words: use a batch size "
                f"of at most {spec.base_classes * self.clips_per_class}")
        if self.class_order is not None:
            spec.check_words(len(self.class_order), what="class_order")

    @property
    def fskil(self):
        """The FSKIL protocol's sizes and prototypes (``workers.fskil.Protocol``)."""
        from workers.fskil import Protocol

        return Protocol(base_classes=self.base_classes, ways=self.ways, shots=self.shots,
                        sessions=self.sessions, episodes=self.episodes,
                        prototypes=self.prototypes)

    @property
    def groups_per_batch(self) -> int:
        return self.batch_size // self.clips_per_class

    @property
    def sizes(self) -> dict[str, int]:
        return PRESETS[self.preset]

    @property
    def variant(self) -> str:
        """The loss variant's name, e.g. ``dot:meanstd:global`` (``cosine`` has no stats;
        ``ce-only``: both similarity terms weighted 0, the cross-entropy ablation)."""
        if self.w_lpc == 0 and self.w_shuffled == 0:
            return "ce-only"
        if self.similarity == "cosine":
            return "cosine"
        name = f"{self.similarity}:{self.norm}:{self.scope}"
        return name + ":detached" if self.detach_stats else name

    @property
    def world_size_independent(self) -> bool:
        """Whether a run's numbers do not depend on its number of workers: the batches never
        do (workers.sampler), and the loss does not when its statistics are global or when
        it has none (cosine over equal rank batches)."""
        return self.scope == "global" or self.similarity == "cosine"

    def result_fields(self) -> dict[str, Any]:
        """The fields that can change a run's numbers: all but RUNTIME_FIELDS, the FSKIL
        protocol's fields only under that protocol, and the LATER_FIELDS only away from
        their defaults."""
        ignored = RUNTIME_FIELDS + (FSKIL_FIELDS if self.protocol != "fskil" else ())
        defaults = {f.name: f.default for f in fields(self) if f.name in LATER_FIELDS}
        return {k: v for k, v in asdict(self).items()
                if k not in ignored and not (k in defaults and v == defaults[k])}

    def run_key(self) -> str:
        """A short hash of ``result_fields``: equal keys, equal runs."""
        text = json.dumps(self.result_fields(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def default_run_name(self) -> str:
        """``<variant>-seed<seed>-<run_key>``, e.g. ``dot-minmax-global-seed0-1a2b3c4d``."""
        return f"{self.variant.replace(':', '-')}-seed{self.seed}-{self.run_key()}".replace(
            "/", "_")

    def differences(self, other: RunConfig) -> list[str]:
        """Names of the result fields in which ``other`` differs from this config (a field
        that counts for only one of them, such as the FSKIL sizes, counts)."""
        names = dict.fromkeys([*self.result_fields(), *other.result_fields()])
        return [name for name in names if getattr(self, name) != getattr(other, name)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild from ``to_dict`` (or Tune's config); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InputError(
                f"unknown config field(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


PROTOCOLS = ("standard", "fskil")
PROTOTYPES = ("normalised", "reference")
ON_NONFINITE = ("skip", "stop")
FSKIL_FIELDS = ("base_classes", "ways", "shots", "sessions", "episodes", "class_order",
                "prototypes")

# Fields added after runs were keyed: at their default they are left out of the key, so a
# run started before they existed keeps its key and default name, and resumes.
LATER_FIELDS = ("prototypes",)

TRACKERS = ("mlflow", "wandb")

# Fields that say only where a run's files go or how fast it runs: a run may resume with
# other values, and they are not part of its key. Thread counts can move float round-off,
# never what is computed. The trackers are where results go too, kept in the config rather
# than beside it so that a sweep's trials get them through its saved base config, as they
# get the storage path, and `sweep --resume` keeps them.
RUNTIME_FIELDS = ("storage_path", "run_name", "cpus_per_worker", "threads_per_worker",
                  "checkpoints_to_keep", "max_failures", "max_preemptions", "extra",
                  "trackers")


# The fields whose values are names from a fixed list (the CLI lists them in --help).
CHOICES: dict[str, tuple[str, ...]] = {"preset": tuple(PRESETS), "norm": NORMS,
                                       "scope": SCOPES, "protocol": PROTOCOLS,
                                       "prototypes": PROTOTYPES, "on_nonfinite": ON_NONFINITE}


def _positive(cfg: RunConfig, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) > 0:
            raise InputError(f"{name} must be > 0; got {getattr(cfg, name)}")


def field_docs() -> dict[str, str]:
    """Field name -> its docstring, for CLI help (read from this module's source)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(RunConfig))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


__all__ = ["CHOICES", "NORMS", "PRESETS", "PROTOCOLS", "PROTOTYPES", "RUNTIME_FIELDS", "SCOPES",
           "RunConfig", "field_docs"]
