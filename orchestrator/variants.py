"""Naming what a sweep runs: loss variants, grids of other config fields, and trials.

Light (no Ray import), so the CLI can parse and check a sweep before starting anything.
"""

from __future__ import annotations

import itertools
import json

from losses import NORMS, SCOPES, SIMILARITIES
from workers.config import RunConfig
from workers.errors import InputError

DEFAULT_VARIANTS = ("cosine", "dot:minmax:global", "dot:minmax:local", "dot:meanstd:global",
                    "dot:meanstd:local")
STUDY_VARIANTS = ("dot:minmax:global", "dot:minmax:local")
VARIANT_FIELDS = ("similarity", "norm", "scope", "detach_stats")


# The cross-entropy ablation: the same encoder and classifier, both similarity terms off.
CE_ONLY = {"similarity": "cosine", "w_lpc": 0.0, "w_shuffled": 0.0}


def parse_variant(name: str) -> dict:
    """``cosine`` | ``ce-only`` | ``SIM:NORM:SCOPE[:detached]`` -> config fields.

    SIM may itself be ``package.module:function``: norm, scope and "detached" are read
    from the right.
    """
    if name.strip() == "ce-only":
        return dict(CE_ONLY)
    parts = name.strip().split(":")
    detached = parts[-1] == "detached"
    if detached:
        parts = parts[:-1]
    if len(parts) >= 3 and parts[-1] in SCOPES and parts[-2] in NORMS:
        fields = {"similarity": ":".join(parts[:-2]), "norm": parts[-2], "scope": parts[-1]}
    elif ":".join(parts) in SIMILARITIES or len(parts) == 2:
        fields = {"similarity": ":".join(parts)}  # cosine, or a custom module:function
    else:
        raise InputError(
            f"bad variant {name!r}; write cosine, ce-only or SIMILARITY:NORM:SCOPE[:detached], "
            f"e.g. dot:meanstd:global (norms: {', '.join(NORMS)}; scopes: {', '.join(SCOPES)})"
        )
    if detached:
        fields["detach_stats"] = True
    RunConfig(**fields)  # validates the names now, not inside a trial
    return fields


def parse_grid(items: list[str]) -> dict[str, list]:
    """``KEY=V1,V2`` -> {key: [typed values]}, typed like RunConfig's field."""
    defaults = RunConfig()
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values:
            raise InputError(f"bad --grid {item!r}; write KEY=V1,V2 (e.g. w_lpc=0.5,1)")
        if not hasattr(defaults, key) or key == "extra":
            raise InputError(f"--grid {key}: not a config field (see dotsim train --help)")
        if key in (*VARIANT_FIELDS, "seed"):
            raise InputError(f"--grid {key}: use --variants / --seeds for the loss variant")
        kind = type(getattr(defaults, key))
        grid[key] = [_typed(kind, v.strip(), key) for v in values.split(",")]
    return grid


def _typed(kind, text: str, key: str):
    try:
        if kind is bool:
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
        return kind(text) if kind is not type(None) else text
    except (KeyError, ValueError) as err:
        raise InputError(f"--grid {key}: {text!r} is not a valid {kind.__name__}") from err


def trial_configs(variants: list[str], seeds: int, grid: dict[str, list],
                  world_sizes: list[int] | None = None,
                  base: RunConfig | None = None) -> list[dict]:
    """The trials: variant fields x seed x grid values (x world size), deduplicated; each
    checked as a config on top of ``base`` (the sweep's; RunConfig's defaults if None)."""
    base = base or RunConfig()
    seen, trials = set(), []
    axes = [grid[k] for k in grid] + ([world_sizes] if world_sizes else [])
    keys = list(grid) + (["workers"] if world_sizes else [])
    for variant, seed, values in itertools.product(variants, range(seeds),
                                                   itertools.product(*axes)):
        fields = parse_variant(variant)
        trial = {**fields, "seed": seed, **dict(zip(keys, values, strict=True))}
        named, made = base.replace(**fields).variant, base.replace(**trial).variant
        if made != named:  # the trial would be named, and compared, as another variant
            raise InputError(f"--grid {_grid_text(keys, values)} turns variant {named} into "
                             f"{made}; ask for {made} with --variants instead")
        key = json.dumps(trial, sort_keys=True)
        if key not in seen:
            seen.add(key)
            trials.append(trial)
    return trials


def _grid_text(keys, values) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))


def grid_point(cfg: RunConfig, trial: dict) -> dict:
    """The trial's fields besides its variant and seed (the --grid values, the world size
    of a study): trials of different variants at one grid point are compared."""
    own = {*VARIANT_FIELDS, *parse_variant(cfg.variant), "seed"}
    return {k: trial[k] for k in sorted(trial) if k not in own}


def trial_name(cfg: RunConfig, trial: dict) -> str:
    """Stable, readable: variant, seed, and the other varied fields."""
    extra = "".join(f"-{k}={v}" for k, v in grid_point(cfg, trial).items())
    return f"{cfg.variant.replace(':', '-')}-seed{cfg.seed}{extra}".replace("/", "_")


