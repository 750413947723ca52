"""The names of the loss variants and their check: plain Python, no torch.

A config is checked by the driver before anything trains (``workers.config``); the
driver's light commands (``dotsim report``) must not load torch to do so. The functions
behind the names live in ``losses.similarity``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

SIMILARITIES = ("cosine", "dot", "dot-legacy")
NORMS = ("minmax", "meanstd")
SCOPES = ("local", "global")
CUSTOM = "package.module:function"  # how a custom similarity is named


def choice(kind: str, value: str, allowed) -> None:
    """``ValueError`` naming the allowed values when ``value`` is not one of them."""
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")


def load_custom(name: str) -> Callable:
    """The function a custom similarity ``package.module:function`` names."""
    if ":" not in name:
        choice("similarity", name, [*SIMILARITIES, CUSTOM])
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load similarity {name!r}: {err}") from err
    if not callable(fn):
        raise ValueError(f"similarity {name!r} is not callable")
    return fn


def validate(similarity: str, norm: str, scope: str) -> None:
    """Check the variant's names (a custom similarity is loaded to see that it exists)."""
    choice("norm", norm, NORMS)
    choice("scope", scope, SCOPES)
    if similarity not in SIMILARITIES:
        load_custom(similarity)
